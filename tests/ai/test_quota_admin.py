"""Admin pages for quota, reservations and the usage ledger, and the reset action."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse

from ai.models import Quota, Reservation, UsageRecord
from ai.quota.services import quota_get_or_create
from ai.services import usage_record_create
from tests import factories
from tests.ai.quota_turns import reserve

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_(db) -> Client:
    admin = factories.make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    return client


@pytest.fixture
def usage(user, other_user) -> None:
    for who, tokens in ((user, 10), (user, 20), (other_user, 5)):
        usage_record_create(
            user=who,
            provider="mock",
            model="mock-1",
            purpose="reply",
            input_tokens=tokens,
            output_tokens=tokens,
            estimated=False,
            tokens_charged=2 * tokens,
            outcome="complete",
        )


def test_quota_changelist_and_change_page(admin_client_, user) -> None:
    quota = quota_get_or_create(user=user)
    response = admin_client_.get(reverse("admin:ai_quota_changelist"))
    assert response.status_code == 200
    assert b"alice" in response.content
    response = admin_client_.get(reverse("admin:ai_quota_changelist"), {"q": "alice"})
    assert response.status_code == 200
    response = admin_client_.get(reverse("admin:ai_quota_changelist"), {"period__exact": "day"})
    assert response.status_code == 200
    response = admin_client_.get(reverse("admin:ai_quota_change", args=[quota.pk]))
    assert response.status_code == 200


def test_saving_limits_keeps_counters(admin_client_, user) -> None:
    quota = quota_get_or_create(user=user)
    reservation = reserve(user, 40)
    Quota.objects.filter(pk=quota.pk).update(requests_used=2)
    response = admin_client_.post(
        reverse("admin:ai_quota_change", args=[quota.pk]),
        # A stale form: whatever else it carried, only period and limits are written.
        {"period": "week", "requests_limit": 7, "tokens_limit": 700, "requests_reserved": 0},
    )
    assert response.status_code == 302, response.content
    quota.refresh_from_db()
    assert (quota.period, quota.requests_limit, quota.tokens_limit) == ("week", 7, 700)
    assert (quota.requests_used, quota.requests_reserved, quota.tokens_reserved) == (2, 1, 40)
    assert quota.resets_at is not None and quota.resets_at.weekday() == 0
    assert Reservation.objects.get(pk=reservation.pk).status == "held"


def test_adding_a_quota_for_a_user_without_one(admin_client_, user) -> None:
    response = admin_client_.get(reverse("admin:ai_quota_add"))
    assert response.status_code == 200
    response = admin_client_.post(
        reverse("admin:ai_quota_add"),
        {"user": user.pk, "period": "month", "requests_limit": 3, "tokens_limit": 300},
    )
    assert response.status_code == 302, response.content
    quota = Quota.objects.get(user=user)
    assert (quota.period, quota.requests_limit, quota.tokens_limit) == ("month", 3, 300)
    assert quota.resets_at is not None and quota.resets_at.day == 1


def test_reset_action(admin_client_, user, other_user) -> None:
    quota = quota_get_or_create(user=user)
    other = quota_get_or_create(user=other_user)
    Quota.objects.filter(pk__in=[quota.pk, other.pk]).update(requests_used=4, tokens_used=44)
    reserve(user, 10)
    response = admin_client_.post(
        reverse("admin:ai_quota_changelist"),
        {"action": "reset_selected", "_selected_action": [quota.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert b"Reset the quota of 1 user" in response.content
    quota.refresh_from_db()
    other.refresh_from_db()
    assert (quota.requests_used, quota.tokens_used) == (0, 0)
    assert (quota.requests_reserved, quota.tokens_reserved) == (1, 10)
    assert (other.requests_used, other.tokens_used) == (4, 44)


def test_reservation_changelist_is_read_only(admin_client_, user) -> None:
    reservation = reserve(user, 10)
    url = reverse("admin:ai_reservation_changelist")
    response = admin_client_.get(url)
    assert response.status_code == 200
    assert str(reservation.pk).encode() in response.content
    assert admin_client_.get(url, {"status__exact": "held"}).status_code == 200
    detail = admin_client_.get(reverse("admin:ai_reservation_change", args=[reservation.pk]))
    assert detail.status_code == 200
    assert admin_client_.get(reverse("admin:ai_reservation_add")).status_code == 403


def test_release_action(admin_client_, user) -> None:
    reservation = reserve(user, 10)
    response = admin_client_.post(
        reverse("admin:ai_reservation_changelist"),
        {"action": "release_selected", "_selected_action": [str(reservation.pk)]},
        follow=True,
    )
    assert response.status_code == 200
    assert Reservation.objects.get(pk=reservation.pk).status == "released"
    assert Quota.objects.get(user=user).requests_reserved == 0


def test_usage_changelist_shows_totals_per_user_and_day(admin_client_, usage) -> None:
    url = reverse("admin:ai_usagerecord_changelist")
    response = admin_client_.get(url)
    assert response.status_code == 200
    totals = response.context["usage_totals"]
    by_user = {row["username"]: row for row in totals}
    assert by_user["alice"]["calls"] == 2
    assert by_user["alice"]["tokens_charged"] == 60
    assert by_user["mallory"]["input_tokens"] == 5
    assert b"usage-totals-table" in response.content
    # Totals follow the changelist's search.
    response = admin_client_.get(url, {"q": "mallory"})
    assert [row["username"] for row in response.context["usage_totals"]] == ["mallory"]
    for params in (
        {"purpose__exact": "reply"},
        {"outcome__exact": "complete"},
        {"provider__exact": "mock"},
    ):
        assert admin_client_.get(url, params).status_code == 200
    record = UsageRecord.objects.first()
    day = record.created_at
    response = admin_client_.get(
        url, {"created_at__year": day.year, "created_at__month": day.month}
    )
    assert response.status_code == 200
    detail = admin_client_.get(reverse("admin:ai_usagerecord_change", args=[record.pk]))
    assert detail.status_code == 200


def test_usage_totals_selector_groups_by_utc_day(user) -> None:
    from ai.selectors import usage_totals_by_user_and_day

    for _ in range(2):
        usage_record_create(
            user=user,
            provider="mock",
            model="m",
            purpose="reply",
            input_tokens=1,
            output_tokens=2,
            estimated=True,
            tokens_charged=3,
            outcome="complete",
        )
    first = UsageRecord.objects.order_by("id").first()
    UsageRecord.objects.filter(pk=first.pk).update(created_at=first.created_at - timedelta(days=1))
    rows = usage_totals_by_user_and_day()
    assert [row["calls"] for row in rows] == [1, 1]
    assert rows[0]["day"] > rows[1]["day"]
    assert rows[0]["estimated_calls"] == 1
