"""Budgets in money (docs/api.md#quota): a quota's ``cost_limit`` is held against the
worst case of each turn, the real cost is charged when it settles, and resets, limits and
the Quota resource know about cost."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.test import Client, override_settings
from django.urls import reverse

from ai.errors import QuotaExceeded
from ai.models import ModelPrice, Quota, Reservation
from ai.pricing import clear_cache
from ai.prompts import model_prompt_tokens, system_prompt_for
from ai.providers.base import ChatMessage
from ai.quota.resets import quota_reset, quota_set_limits
from ai.quota.selectors import quota_snapshot
from ai.quota.services import quota_get_or_create, quota_release
from conversations.turn_start import TurnRequest, turn_prepare, turn_reservation
from tests import factories
from tests.ai.quota_turns import reserve, settle

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)


@pytest.fixture
def user():
    return factories.make_user("spender")


@pytest.fixture
def price():
    clear_cache()
    made = ModelPrice.objects.create(
        provider="openai",
        model="gpt-priced",
        valid_from=date(2026, 1, 1),
        input_per_mtok=Decimal("2"),
        output_per_mtok=Decimal("10"),
        cache_read_per_mtok=Decimal("0.5"),
        cache_write_per_mtok=Decimal("3"),
    )
    yield made
    clear_cache()


def make_quota(user, **fields) -> Quota:
    quota = quota_get_or_create(user=user, now=NOW)
    Quota.objects.filter(pk=quota.pk).update(**fields)
    quota.refresh_from_db()
    return quota


def test_a_reservation_that_would_pass_the_cost_limit_is_refused_naming_cost(user) -> None:
    make_quota(user, cost_limit=Decimal("1"), cost_used=Decimal("0.6"))
    first = reserve(user, 10, cost=Decimal("0.3"), now=NOW)
    with pytest.raises(QuotaExceeded) as caught:
        reserve(user, 10, cost=Decimal("0.10000001"), now=NOW)
    body = caught.value.as_body()
    assert (body["code"], body["limit"]) == ("quota_exceeded", "cost")
    assert body["quota"]["cost_limit"] == "1.00000000"
    assert body["quota"]["cost_remaining"] == "0.10000000"
    # Only a reply in flight is in the way: it settles soon.
    assert caught.value.headers["Retry-After"] == "30"
    exactly = reserve(user, 10, cost=Decimal("0.1"), now=NOW)  # fits exactly
    quota = Quota.objects.get(user=user)
    assert quota.cost_reserved == Decimal("0.4")
    assert {first.pk, exactly.pk} == set(Reservation.objects.values_list("pk", flat=True))


def test_the_refusal_names_requests_or_tokens_when_those_are_hit(user) -> None:
    make_quota(user, requests_limit=1, requests_used=1)
    with pytest.raises(QuotaExceeded) as caught:
        reserve(user, 1, now=NOW)
    assert caught.value.as_body()["limit"] == "requests"
    make_quota(user, requests_limit=5, tokens_limit=100, tokens_used=100)
    with pytest.raises(QuotaExceeded) as caught:
        reserve(user, 1, now=NOW)
    assert caught.value.as_body()["limit"] == "tokens"


def test_no_cost_limit_means_any_cost_fits(user) -> None:
    make_quota(user, cost_limit=None, cost_used=Decimal("999"))
    reservation = reserve(user, 1, cost=Decimal("1000"), now=NOW)
    assert reservation.cost == Decimal("1000")
    snapshot = quota_snapshot(user=user, now=NOW)
    assert (snapshot["cost_limit"], snapshot["cost_remaining"]) == (None, None)
    assert snapshot["cost_used"] == "999.00000000"


def test_settle_charges_the_real_cost_and_release_charges_none(user) -> None:
    make_quota(user, cost_limit=Decimal("5"))
    held = reserve(user, 100, cost=Decimal("2"), now=NOW)
    other = reserve(user, 100, cost=Decimal("1.5"), now=NOW)
    settled = settle(held, requests=1, tokens=40, cost=Decimal("0.25"), now=NOW)
    assert settled is not None and settled.cost_charged == Decimal("0.25")
    assert settled.quota["cost_used"] == "0.25000000"
    assert settled.quota["cost_remaining"] == "3.25000000"  # 5 - 0.25 - 1.5 held
    assert quota_release(reservation_id=other.pk, now=NOW)
    quota = Quota.objects.get(user=user)
    assert (quota.cost_used, quota.cost_reserved) == (Decimal("0.25"), Decimal(0))
    held.refresh_from_db()
    assert (held.status, held.cost, held.cost_charged) == ("settled", Decimal(2), Decimal("0.25"))
    # Settled again: nothing more is charged.
    assert settle(held, requests=1, tokens=40, cost=Decimal("0.25"), now=NOW) is None
    assert Quota.objects.get(user=user).cost_used == Decimal("0.25")


def test_a_reply_that_only_cost_money_is_settled_not_released(user) -> None:
    make_quota(user)
    held = reserve(user, 100, cost=Decimal("1"), now=NOW)
    settle(held, requests=0, tokens=0, cost=Decimal("0.01"), now=NOW)
    held.refresh_from_db()
    assert held.status == "settled"
    assert Quota.objects.get(user=user).cost_used == Decimal("0.01")


def test_cost_reserved_never_goes_negative(user) -> None:
    quota = make_quota(user)
    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.filter(pk=quota.pk).update(cost_reserved=Decimal("-0.00000001"))


def test_the_lazy_reset_zeroes_cost_used_and_keeps_cost_reserved(user) -> None:
    make_quota(user, cost_limit=Decimal("1"), cost_used=Decimal("1"))
    held = reserve(user, 1, cost=Decimal(0), now=NOW)  # a free call still fits
    tomorrow = NOW + timedelta(days=1)
    Quota.objects.filter(user=user).update(cost_reserved=Decimal("0.5"))
    assert quota_snapshot(user=user, now=tomorrow)["cost_used"] == "0.00000000"
    reserve(user, 1, cost=Decimal("0.5"), now=tomorrow)
    quota = Quota.objects.get(user=user)
    assert (quota.cost_used, quota.cost_reserved) == (Decimal(0), Decimal(1))
    assert held.pk


def test_reset_by_hand_and_reset_quotas_zero_cost_used(user) -> None:
    make_quota(user, cost_used=Decimal("3"), cost_reserved=Decimal("1"))
    results = quota_reset(users=[user], now=NOW)
    assert results[0].cost_used == Decimal(3)
    quota = Quota.objects.get(user=user)
    assert (quota.cost_used, quota.cost_reserved) == (Decimal(0), Decimal(1))
    Quota.objects.filter(pk=quota.pk).update(cost_used=Decimal("2"))
    call_command("reset_quotas", "--all")
    assert Quota.objects.get(pk=quota.pk).cost_used == Decimal(0)


def test_set_limits_sets_or_keeps_the_cost_limit(user) -> None:
    quota = make_quota(user)
    quota_set_limits(
        quota=quota, period="day", requests_limit=5, tokens_limit=50, cost_limit=Decimal("2.5")
    )
    assert quota.cost_limit == Decimal("2.5")
    quota_set_limits(quota=quota, period="day", requests_limit=6, tokens_limit=50)
    assert (quota.requests_limit, quota.cost_limit) == (6, Decimal("2.5"))
    quota_set_limits(quota=quota, period="day", requests_limit=6, tokens_limit=50, cost_limit=None)
    assert quota.cost_limit is None
    with pytest.raises(ValueError):
        quota_set_limits(
            quota=quota, period="day", requests_limit=6, tokens_limit=50, cost_limit=Decimal(-1)
        )


def test_the_admin_sets_the_cost_limit_and_its_reset_zeroes_cost_used(user) -> None:
    quota = make_quota(user, cost_used=Decimal("0.5"))
    reserve(user, 10, cost=Decimal("0.25"), now=NOW)
    admin = Client()
    admin.force_login(factories.make_user("root", is_staff=True, is_superuser=True))
    response = admin.post(
        reverse("admin:ai_quota_change", args=[quota.pk]),
        # A stale form: its counters are ignored, only period and limits are written.
        {
            "period": "day",
            "requests_limit": 7,
            "tokens_limit": 700,
            "cost_limit": "2.5",
            "cost_used": "0",
        },
    )
    assert response.status_code == 302, response.content
    quota.refresh_from_db()
    assert (quota.cost_limit, quota.cost_used, quota.cost_reserved) == (
        Decimal("2.5"),
        Decimal("0.5"),
        Decimal("0.25"),
    )
    changelist = admin.get(reverse("admin:ai_quota_changelist"))
    assert b"0.50000000 / 2.50000000" in changelist.content
    response = admin.post(
        reverse("admin:ai_quota_changelist"),
        {"action": "reset_selected", "_selected_action": [quota.pk]},
    )
    assert response.status_code == 302
    quota.refresh_from_db()
    assert (quota.cost_used, quota.cost_reserved) == (Decimal(0), Decimal("0.25"))


@override_settings(QUOTA_COST_LIMIT=Decimal("7.5"))
def test_new_quotas_take_quota_cost_limit(user) -> None:
    assert quota_snapshot(user=user, now=NOW)["cost_limit"] == "7.50000000"
    assert quota_get_or_create(user=user, now=NOW).cost_limit == Decimal("7.5")


def test_the_default_cost_limit_is_none(user, settings) -> None:
    assert settings.QUOTA_COST_LIMIT is None
    assert quota_get_or_create(user=user, now=NOW).cost_limit is None


@override_settings(AI_MAX_OUTPUT_TOKENS=1000, FLOWS_EXTRACTION_ENABLED=False)
def test_the_worst_case_is_the_prompt_at_the_dearer_input_rate_and_the_rest_at_output(
    price,
) -> None:
    system = system_prompt_for(context_name="Work", instructions="")
    history = [ChatMessage("user", "Hello there")]
    prompt = model_prompt_tokens(system, history)
    tokens, cost = turn_reservation(
        system, history, context_name="Work", provider="openai", model="gpt-priced", at=NOW
    )
    assert tokens == prompt + 1000
    # Cache writes (3/MTok) are dearer than plain input (2/MTok): the worst case.
    assert cost == (Decimal(prompt * 3 + 1000 * 10) / 1_000_000).quantize(Decimal("1e-8"))
    _tokens, free = turn_reservation(
        system, history, context_name="Work", provider="openai", model="unpriced", at=NOW
    )
    assert free == 0


@override_settings(AI_MAX_OUTPUT_TOKENS=1000, FLOWS_EXTRACTION_ENABLED=True)
def test_the_worst_case_holds_the_extraction_at_the_output_rate(price) -> None:
    system = system_prompt_for(context_name="Work", instructions="")
    history = [ChatMessage("user", "Hello there")]
    prompt = model_prompt_tokens(system, history)
    tokens, cost = turn_reservation(
        system, history, context_name="Work", provider="openai", model="gpt-priced", at=NOW
    )
    assert tokens > prompt + 1000
    expected = Decimal(prompt * 3 + (tokens - prompt) * 10) / 1_000_000
    assert cost == expected.quantize(Decimal("1e-8"))


def _race(fn, count: int) -> list[str]:
    """Run ``fn`` in ``count`` threads released together; each uses its own connection."""
    barrier = threading.Barrier(count)

    def run(_: int) -> str:
        try:
            barrier.wait(timeout=30)
            return fn()
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


@pytest.mark.django_db(transaction=True)
@override_settings(CHAT_MAX_CONCURRENT_STREAMS=100, FLOWS_EXTRACTION_ENABLED=True)
def test_concurrent_turns_against_a_cost_limit_for_five_worst_cases_admit_five() -> None:
    clear_cache()
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-priced",
        valid_from=date(2026, 1, 1),
        input_per_mtok=Decimal("2"),
        output_per_mtok=Decimal("10"),
        cache_read_per_mtok=Decimal("0.5"),
        cache_write_per_mtok=Decimal("3"),
    )
    threads = 50 if connection.vendor == "postgresql" else 8

    def request(context) -> TurnRequest:
        return TurnRequest(
            context_id=context.id,
            conversation_id=None,
            content="How much is this?",
            client_history=None,
            provider="openai",
            model="gpt-priced",
            worker="test",
        )

    # One turn of a user without a cost limit says what a worst case holds.
    probe = factories.make_user("probe")
    probe_turn = turn_prepare(user=probe, request=request(factories.make_context(probe, "Work")))
    worst = Reservation.objects.get(pk=probe_turn.reservation_id).cost
    assert worst > 0

    racer = factories.make_user("costracer")
    context = factories.make_context(racer, "Work")
    quota = quota_get_or_create(user=racer)
    Quota.objects.filter(pk=quota.pk).update(
        requests_limit=1000, tokens_limit=10**12, cost_limit=worst * 5
    )

    def turn() -> str:
        try:
            turn_prepare(user=racer, request=request(context))
        except QuotaExceeded as refused:
            return f"refused:{refused.as_body()['limit']}"
        return "admitted"

    try:
        outcomes = _race(turn, threads)
    finally:
        clear_cache()
    assert outcomes.count("admitted") == 5
    assert outcomes.count("refused:cost") == threads - 5
    quota.refresh_from_db()
    assert (quota.requests_reserved, quota.cost_reserved) == (5, worst * 5)
    assert Reservation.objects.filter(user=racer, status="held").count() == 5
