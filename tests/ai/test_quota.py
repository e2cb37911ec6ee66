"""Quota: creation, reserve and settle as a turn runs them (locked, in its transactions),
release, the lazy reset, resets by hand, limits, and the snapshot (a read)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from ai.errors import QuotaExceeded
from ai.models import Quota, Reservation, UsageRecord
from ai.quota.resets import quota_reset, quota_set_limits
from ai.quota.selectors import quota_snapshot
from ai.quota.services import (
    RETRY_AFTER_IN_FLIGHT_SECONDS,
    RETRY_AFTER_NO_RESET_SECONDS,
    quota_get_or_create,
    quota_lock,
    quota_release,
    quota_reserve_locked,
    reservation_close_locked,
    reservations_release_stale,
)
from ai.services import usage_record_create
from core.errors import ServiceError
from tests import factories
from tests.ai.quota_turns import reserve, settle

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)  # a Wednesday


def make_quota(user, *, now: datetime = NOW, **fields) -> Quota:
    """The user's quota (created at ``now``) with ``fields`` written over it."""
    quota = quota_get_or_create(user=user, now=now)
    if fields:
        Quota.objects.filter(pk=quota.pk).update(**fields)
        quota.refresh_from_db()
    return quota


def test_created_on_first_use_from_settings(user, settings) -> None:
    settings.QUOTA_PERIOD = "week"
    settings.QUOTA_REQUESTS_LIMIT = 7
    settings.QUOTA_TOKENS_LIMIT = 1234
    quota = quota_get_or_create(user=user, now=NOW)
    assert (quota.period, quota.requests_limit, quota.tokens_limit) == ("week", 7, 1234)
    assert quota.requests_used == quota.tokens_used == 0
    assert quota.period_started_at == datetime(2026, 3, 2, tzinfo=UTC)
    assert quota.resets_at == datetime(2026, 3, 9, tzinfo=UTC)
    assert quota_get_or_create(user=user).pk == quota.pk
    assert Quota.objects.count() == 1


def test_period_none_has_no_reset(user, settings) -> None:
    settings.QUOTA_PERIOD = "none"
    quota = quota_get_or_create(user=user, now=NOW)
    assert quota.resets_at is None
    assert quota_snapshot(user=user, now=NOW + timedelta(days=400))["resets_at"] is None


def test_reserve_holds_a_request_and_the_estimate(user) -> None:
    make_quota(user)
    reservation = reserve(user, 300, now=NOW)
    assert reservation.status == Reservation.Status.HELD
    assert reservation.tokens == 300
    quota = Quota.objects.get(user=user)
    assert (quota.requests_reserved, quota.tokens_reserved) == (1, 300)
    assert (quota.requests_used, quota.tokens_used) == (0, 0)
    assert reservation.period_started_at == quota.period_started_at


def test_reserve_links_the_message(user) -> None:
    context = factories.make_context(user)
    message = factories.make_message(factories.make_conversation(context), role="assistant")
    reservation = reserve(user, 1, message_id=message.pk, now=NOW)
    assert Reservation.objects.get(pk=reservation.pk).message_id == message.pk


def test_refusal_when_requests_are_used_up(user) -> None:
    make_quota(user, requests_limit=3, requests_used=3)
    with pytest.raises(QuotaExceeded) as caught:
        reserve(user, 10, now=NOW)
    exc = caught.value
    assert isinstance(exc, ServiceError)
    assert (exc.status_code, exc.code) == (429, "quota_exceeded")
    body = exc.as_body()
    assert body["code"] == "quota_exceeded"
    assert body["quota"]["requests_remaining"] == 0
    assert body["quota"]["resets_at"] == "2026-03-05T00:00:00+00:00"
    # 08:30 until midnight UTC.
    assert exc.headers["Retry-After"] == str(8 * 3600 + 30 * 60)
    assert not Reservation.objects.exists()


def test_refusal_counts_reservations_in_flight(user) -> None:
    make_quota(user, requests_limit=2)
    reserve(user, 0, now=NOW)
    reserve(user, 0, now=NOW)
    with pytest.raises(QuotaExceeded) as caught:
        reserve(user, 0, now=NOW)
    # Only replies in flight are in the way: try again soon, not at midnight.
    assert caught.value.headers["Retry-After"] == str(RETRY_AFTER_IN_FLIGHT_SECONDS)


def test_refusal_when_the_token_estimate_does_not_fit(user) -> None:
    make_quota(user, tokens_limit=1000, tokens_used=600)
    reserve(user, 300, now=NOW)
    with pytest.raises(QuotaExceeded):
        reserve(user, 101, now=NOW)
    reservation = reserve(user, 100, now=NOW)  # exactly fills it
    assert reservation.tokens == 100
    assert quota_snapshot(user=user, now=NOW)["tokens_remaining"] == 0


def test_retry_after_at_least_one_second_and_large_for_period_none(user) -> None:
    make_quota(user, requests_limit=1, requests_used=1)
    almost_midnight = datetime(2026, 3, 4, 23, 59, 59, 999_000, tzinfo=UTC)
    with pytest.raises(QuotaExceeded) as caught:
        reserve(user, 0, now=almost_midnight)
    assert caught.value.headers["Retry-After"] == "1"
    Quota.objects.filter(user=user).update(period="none", resets_at=None)
    with pytest.raises(QuotaExceeded) as caught:
        reserve(user, 0, now=NOW)
    assert caught.value.headers["Retry-After"] == str(RETRY_AFTER_NO_RESET_SECONDS)
    assert caught.value.data["quota"]["resets_at"] is None


def test_negative_estimate_is_rejected(user) -> None:
    with pytest.raises(ValueError):
        reserve(user, -1, now=NOW)


def test_settle_moves_reserved_into_used(user) -> None:
    make_quota(user, requests_used=2, tokens_used=50)
    reservation = reserve(user, 500, now=NOW)
    assert settle(reservation, requests=1, tokens=321, now=NOW) is not None
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.tokens_used) == (3, 371)
    assert (quota.requests_reserved, quota.tokens_reserved) == (0, 0)
    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.SETTLED
    assert (reservation.requests_charged, reservation.tokens_charged) == (1, 321)
    assert reservation.closed_at == NOW


def test_settle_may_charge_more_than_the_estimate(user) -> None:
    make_quota(user, tokens_limit=1000)
    reservation = reserve(user, 900, now=NOW)
    settle(reservation, requests=1, tokens=1200, now=NOW)
    snapshot = quota_snapshot(user=user, now=NOW)
    assert snapshot["tokens_used"] == 1200
    assert snapshot["tokens_remaining"] == 0


def test_settle_is_idempotent(user) -> None:
    make_quota(user)
    reservation = reserve(user, 100, now=NOW)
    assert settle(reservation, requests=1, tokens=80, now=NOW) is not None
    assert settle(reservation, requests=1, tokens=80, now=NOW) is None
    assert not quota_release(reservation_id=reservation.pk, now=NOW)
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.tokens_used) == (1, 80)
    assert (quota.requests_reserved, quota.tokens_reserved) == (0, 0)
    assert Reservation.objects.get(pk=reservation.pk).status == Reservation.Status.SETTLED


def test_release_charges_nothing_and_is_idempotent(user) -> None:
    make_quota(user, requests_used=1, tokens_used=10)
    reservation = reserve(user, 100, now=NOW)
    assert quota_release(reservation_id=reservation.pk, now=NOW) is True
    assert quota_release(reservation_id=reservation.pk, now=NOW) is False
    assert settle(reservation, requests=1, tokens=5, now=NOW) is None
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.tokens_used) == (1, 10)
    assert (quota.requests_reserved, quota.tokens_reserved) == (0, 0)
    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.RELEASED
    assert (reservation.requests_charged, reservation.tokens_charged) == (0, 0)


def test_unknown_reservation_is_not_an_error(user) -> None:
    assert quota_release(reservation_id=uuid.uuid4()) is False
    with transaction.atomic():
        closed = reservation_close_locked(
            user=user, reservation_id=uuid.uuid4(), requests=1, tokens=1
        )
    assert closed is None


def test_reserved_counters_never_go_negative(user) -> None:
    make_quota(user)
    reservation = reserve(user, 100, now=NOW)
    # Someone zeroed the reserved counters by hand: closing must not go below 0.
    Quota.objects.filter(user=user).update(requests_reserved=0, tokens_reserved=10)
    assert settle(reservation, requests=1, tokens=50, now=NOW) is not None
    quota = Quota.objects.get(user=user)
    assert (quota.requests_reserved, quota.tokens_reserved) == (0, 0)


def test_lazy_reset_at_the_period_boundary(user) -> None:
    make_quota(user, requests_limit=2, requests_used=2, tokens_used=900)
    before_midnight = datetime(2026, 3, 4, 23, 59, 59, tzinfo=UTC)
    with pytest.raises(QuotaExceeded):
        reserve(user, 1, now=before_midnight)
    midnight = datetime(2026, 3, 5, tzinfo=UTC)
    reservation = reserve(user, 1, now=midnight)
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.tokens_used) == (0, 0)
    assert quota.period_started_at == midnight
    assert quota.resets_at == datetime(2026, 3, 6, tzinfo=UTC)
    assert reservation.period_started_at == midnight
    assert quota.requests_reserved == 1


def test_lazy_reset_skips_missed_periods(user) -> None:
    make_quota(user, requests_used=5)
    much_later = datetime(2026, 3, 20, 10, tzinfo=UTC)
    snapshot = quota_snapshot(user=user, now=much_later)
    assert snapshot["requests_used"] == 0
    assert snapshot["resets_at"] == "2026-03-21T00:00:00+00:00"


def test_snapshot_shows_a_due_period_started_over_and_writes_nothing(user) -> None:
    make_quota(user, requests_limit=10, requests_used=4, tokens_limit=1000, tokens_used=100)
    reserve(user, 200, now=NOW)
    snapshot = quota_snapshot(user=user, now=NOW)
    assert snapshot == {
        "period": "day",
        "requests_limit": 10,
        "requests_used": 4,
        "requests_remaining": 5,
        "tokens_limit": 1000,
        "tokens_used": 100,
        "tokens_remaining": 700,
        "cost_limit": None,
        "cost_used": "0.00000000",
        "cost_remaining": None,
        "resets_at": "2026-03-05T00:00:00+00:00",
    }
    tomorrow = datetime(2026, 3, 5, 9, tzinfo=UTC)
    with CaptureQueriesContext(connection) as queries:
        snapshot = quota_snapshot(user=user, now=tomorrow)
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["SELECT"]
    assert (snapshot["requests_used"], snapshot["tokens_used"]) == (0, 0)
    assert (snapshot["requests_remaining"], snapshot["tokens_remaining"]) == (9, 800)
    assert snapshot["resets_at"] == "2026-03-06T00:00:00+00:00"
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.requests_reserved, quota.tokens_reserved) == (4, 1, 200)
    # The next write (a turn's lock) starts the period over, as the snapshot showed it.
    with transaction.atomic():
        locked = quota_lock(user=user, now=tomorrow)
    quota.refresh_from_db()
    assert (quota.requests_used, quota.tokens_used, quota.tokens_reserved) == (0, 0, 200)
    assert quota.period_started_at == locked.period_started_at == datetime(2026, 3, 5, tzinfo=UTC)
    assert quota_snapshot(user=user, now=tomorrow) == snapshot


def test_snapshot_of_a_user_without_a_quota_shows_the_defaults_and_creates_nothing(
    user, settings
) -> None:
    settings.QUOTA_PERIOD, settings.QUOTA_REQUESTS_LIMIT, settings.QUOTA_TOKENS_LIMIT = (
        "week",
        7,
        700,
    )
    snapshot = quota_snapshot(user=user, now=NOW)
    assert not Quota.objects.exists()
    assert snapshot == {
        "period": "week",
        "requests_limit": 7,
        "requests_used": 0,
        "requests_remaining": 7,
        "tokens_limit": 700,
        "tokens_used": 0,
        "tokens_remaining": 700,
        "cost_limit": None,
        "cost_used": "0.00000000",
        "cost_remaining": None,
        "resets_at": "2026-03-09T00:00:00+00:00",
    }
    with transaction.atomic():
        quota_lock(user=user, now=NOW)
    assert quota_snapshot(user=user, now=NOW) == snapshot


def test_settle_after_a_reset_charges_the_new_period(user) -> None:
    """A reply that settles after its period rolled over is charged, not dropped: the
    lazy reset runs first, then the reply's real use goes to the new period's counters."""
    make_quota(user, requests_used=3, tokens_used=30)
    reservation = reserve(user, 100, now=NOW)
    tomorrow = datetime(2026, 3, 5, 0, 0, 1, tzinfo=UTC)
    assert settle(reservation, requests=1, tokens=90, now=tomorrow) is not None
    quota = Quota.objects.get(user=user)
    assert quota.period_started_at == datetime(2026, 3, 5, tzinfo=UTC)
    assert (quota.requests_used, quota.tokens_used) == (1, 90)
    assert (quota.requests_reserved, quota.tokens_reserved) == (0, 0)
    reservation.refresh_from_db()
    assert reservation.status == Reservation.Status.SETTLED
    assert (reservation.requests_charged, reservation.tokens_charged) == (1, 90)


def test_reset_never_touches_reserved_counters(user, other_user) -> None:
    make_quota(user, requests_used=4, tokens_used=400)
    make_quota(other_user, requests_used=1)
    reservation = reserve(user, 100, now=NOW)
    later = NOW + timedelta(hours=1)
    results = quota_reset(users=[user], now=later)
    assert [(r.username, r.requests_used, r.tokens_used) for r in results] == [("alice", 4, 400)]
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.tokens_used) == (0, 0)
    assert (quota.requests_reserved, quota.tokens_reserved) == (1, 100)
    assert quota.period_started_at == later
    assert quota.resets_at == datetime(2026, 3, 5, tzinfo=UTC)
    assert Quota.objects.get(user=other_user).requests_used == 1
    assert Reservation.objects.get(pk=reservation.pk).status == Reservation.Status.HELD
    # The reply in flight settles after the reset: the new period pays for what it used.
    settle(reservation, requests=1, tokens=50, now=later)
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.tokens_used, quota.requests_reserved) == (1, 50, 0)


def test_reset_only_expired_and_dry_run(user, other_user) -> None:
    make_quota(user, requests_used=4)
    make_quota(other_user, requests_used=2, resets_at=NOW - timedelta(seconds=1))
    dry = quota_reset(only_expired=True, dry_run=True, now=NOW)
    assert [r.username for r in dry] == ["mallory"]
    assert Quota.objects.get(user=other_user).requests_used == 2
    done = quota_reset(only_expired=True, now=NOW)
    assert [r.username for r in done] == ["mallory"]
    quota = Quota.objects.get(user=other_user)
    assert quota.requests_used == 0
    assert quota.period_started_at == datetime(2026, 3, 4, tzinfo=UTC)
    assert quota.resets_at == datetime(2026, 3, 5, tzinfo=UTC)
    assert Quota.objects.get(user=user).requests_used == 4
    assert quota_reset(only_expired=True, now=NOW) == []


def test_reset_all_with_a_queryset(user, other_user) -> None:
    make_quota(user, requests_used=4)
    make_quota(other_user, requests_used=2)
    results = quota_reset(users=get_user_model().objects.all(), now=NOW)
    assert sorted(r.username for r in results) == ["alice", "mallory"]
    assert set(Quota.objects.values_list("requests_used", flat=True)) == {0}


def test_set_limits_keeps_counters_and_moves_the_reset(user) -> None:
    quota = make_quota(user, requests_used=3, requests_reserved=1)
    quota_set_limits(quota=quota, period="month", requests_limit=5, tokens_limit=99, now=NOW)
    quota.refresh_from_db()
    assert (quota.period, quota.requests_limit, quota.tokens_limit) == ("month", 5, 99)
    assert (quota.requests_used, quota.requests_reserved) == (3, 1)
    assert quota.resets_at == datetime(2026, 4, 1, tzinfo=UTC)
    quota_set_limits(quota=quota, period="none", requests_limit=5, tokens_limit=99, now=NOW)
    quota.refresh_from_db()
    assert quota.resets_at is None


def test_release_stale_reservations(user) -> None:
    context = factories.make_context(user)
    message = factories.make_message(factories.make_conversation(context), role="assistant")
    by_message = reserve(user, 10, message_id=message.pk, now=NOW)
    live = reserve(user, 10, now=NOW)
    old = reserve(user, 10, now=NOW)
    Reservation.objects.filter(pk=old.pk).update(created_at=NOW - timedelta(hours=2))
    Reservation.objects.filter(pk__in=[by_message.pk, live.pk]).update(created_at=NOW)
    with pytest.raises(ValueError):
        reservations_release_stale()
    assert reservations_release_stale(message_ids=[message.pk], now=NOW) == 1
    assert reservations_release_stale(older_than=timedelta(hours=1), now=NOW) == 1
    assert reservations_release_stale(message_ids=[message.pk], now=NOW) == 0
    statuses = dict(Reservation.objects.values_list("pk", "status"))
    assert statuses == {by_message.pk: "released", live.pk: "held", old.pk: "released"}
    quota = Quota.objects.get(user=user)
    assert (quota.requests_reserved, quota.tokens_reserved, quota.requests_used) == (1, 10, 0)


def test_usage_record_create(user) -> None:
    context = factories.make_context(user)
    conversation = factories.make_conversation(context)
    message = factories.make_message(conversation, role="assistant")
    record = usage_record_create(
        user=user,
        provider="mock",
        model="mock-1",
        purpose=UsageRecord.Purpose.REPLY,
        input_tokens=12,
        output_tokens=34,
        estimated=True,
        tokens_charged=46,
        outcome=UsageRecord.Outcome.COMPLETE,
        duration_ms=120,
        context=context,
        conversation=conversation,
        message=message,
    )
    record.refresh_from_db()
    assert (record.input_tokens, record.output_tokens, record.tokens_charged) == (12, 34, 46)
    assert record.estimated and record.message_id == message.pk
    with pytest.raises(ValueError):
        usage_record_create(
            user=user,
            provider="mock",
            model="",
            purpose="chitchat",
            input_tokens=0,
            output_tokens=0,
            estimated=False,
            tokens_charged=0,
            outcome="complete",
        )


# --- the chat turn's locked path -----------------------------------------------------------


def test_reserve_and_close_in_one_transaction_as_a_turn_does(db) -> None:
    user = factories.make_user("locked")
    with transaction.atomic():
        quota = quota_lock(user=user)
        quota.requests_limit, quota.tokens_limit = 2, 1000
        quota.save()
        first = quota_reserve_locked(quota=quota, tokens=400)
        second = quota_reserve_locked(quota=quota, tokens=400)
        with pytest.raises(QuotaExceeded):
            quota_reserve_locked(quota=quota, tokens=1)
    quota.refresh_from_db()
    assert (quota.requests_reserved, quota.tokens_reserved) == (2, 800)
    with transaction.atomic():
        after = reservation_close_locked(user=user, reservation_id=first.pk, requests=1, tokens=123)
        again = reservation_close_locked(user=user, reservation_id=first.pk, requests=1, tokens=123)
        released = reservation_close_locked(
            user=user, reservation_id=second.pk, requests=0, tokens=0
        )
    assert after is not None and (after.requests_charged, after.tokens_charged) == (1, 123)
    assert after.quota["requests_used"] == 1 and after.quota["tokens_used"] == 123
    assert again is None
    assert released is not None and released.tokens_charged == 0
    assert released.quota["tokens_remaining"] == 1000 - 123
    quota.refresh_from_db()
    assert (quota.requests_reserved, quota.tokens_reserved) == (0, 0)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.status, second.status) == ("settled", "released")


def test_a_refused_turn_rolls_back_its_whole_start(user) -> None:
    """Refused inside the turn's transaction: nothing of the start stays, the lazy reset
    included (the next turn redoes it)."""
    make_quota(user, requests_limit=1, requests_used=0, resets_at=NOW - timedelta(hours=1))
    Quota.objects.filter(user=user).update(requests_reserved=1)
    with pytest.raises(QuotaExceeded) as caught, transaction.atomic():
        quota = quota_lock(user=user, now=NOW)
        quota_reserve_locked(quota=quota, tokens=5, now=NOW)
    assert caught.value.headers["Retry-After"] == str(RETRY_AFTER_IN_FLIGHT_SECONDS)
    stored = Quota.objects.get(user=user)
    assert stored.resets_at == NOW - timedelta(hours=1)
    assert not Reservation.objects.exists()
