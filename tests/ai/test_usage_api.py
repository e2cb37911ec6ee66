"""GET /api/v1/usage/: the caller's usage, aggregated by the database."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from ai.models import UsageRecord
from ai.services import usage_record_create
from tests import factories

pytestmark = pytest.mark.django_db


def line(user, *, day: date, conversation=None, **fields) -> UsageRecord:
    """A ledger line dated ``day`` (created_at is auto_now_add: set it afterwards)."""
    values = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "purpose": "reply",
        "input_tokens": 100,
        "output_tokens": 10,
        "cache_read_tokens": 40,
        "cache_write_tokens": 0,
        "estimated": False,
        "tokens_charged": 110,
        "outcome": "complete",
        "cost": Decimal("0.00012345"),
    } | fields
    record = usage_record_create(user=user, conversation=conversation, **values)
    when = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    UsageRecord.objects.filter(pk=record.pk).update(created_at=when)
    return record


@pytest.fixture
def ledger(user, other_user):
    context = factories.make_context(user)
    first = factories.make_conversation(context)
    second = factories.make_conversation(context)
    line(user, day=date(2026, 11, 1), conversation=first)
    line(
        user,
        day=date(2026, 11, 1),
        conversation=first,
        purpose="extraction",
        input_tokens=50,
        output_tokens=5,
        cache_read_tokens=0,
        cost=Decimal("0.00000100"),
    )
    line(
        user,
        day=date(2026, 11, 2),
        conversation=second,
        provider="anthropic",
        model="claude-sonnet-4",
        cache_read_tokens=0,
        cache_write_tokens=60,
        cost=Decimal("0.01000000"),
    )
    # Consumed no request: failed, and cancelled before any output.
    line(
        user,
        day=date(2026, 11, 2),
        conversation=second,
        outcome="failed",
        output_tokens=0,
        cost=Decimal("0.00000001"),
    )
    line(
        user,
        day=date(2026, 11, 3),
        conversation=None,
        outcome="cancelled",
        output_tokens=0,
        cost=Decimal(0),
    )
    # A cancelled reply that delivered output consumed one.
    line(
        user,
        day=date(2026, 11, 3),
        conversation=second,
        outcome="cancelled",
        output_tokens=3,
        cost=Decimal("0.00000002"),
    )
    # Outside the range, and another user's.
    line(user, day=date(2026, 10, 31), cost=Decimal("5"))
    line(other_user, day=date(2026, 11, 2), cost=Decimal("7"))
    return first, second


RANGE = {"from": "2026-11-01", "to": "2026-11-03"}


def test_url_is_the_contracts() -> None:
    assert reverse("usage") == "/api/v1/usage/"


def test_totals_equal_the_ledger(api, user, ledger) -> None:
    response = api.get("/api/v1/usage/", RANGE)
    assert response.status_code == 200
    body = response.json()
    assert body["from"] == "2026-11-01" and body["to"] == "2026-11-03"
    assert body["group_by"] == "day" and body["truncated"] is False
    in_range = UsageRecord.objects.filter(
        user=user,
        created_at__gte=datetime(2026, 11, 1, tzinfo=UTC),
        created_at__lt=datetime(2026, 11, 4, tzinfo=UTC),
    )
    assert body["totals"] == {
        "requests": 3,
        "calls": 6,
        "input_tokens": sum(r.input_tokens for r in in_range),
        "output_tokens": 10 + 5 + 10 + 0 + 0 + 3,
        "cache_read_tokens": 40 + 40 + 40 + 40,
        "cache_write_tokens": 60,
        "cost": "0.01012448",
    }
    assert [(g["day"], g["requests"], g["calls"], g["cost"]) for g in body["groups"]] == [
        ("2026-11-01", 1, 2, "0.00012445"),
        ("2026-11-02", 1, 2, "0.01000001"),
        ("2026-11-03", 1, 2, "0.00000002"),
    ]
    assert all(g["model"] is None and g["conversation_id"] is None for g in body["groups"])


def test_group_by_model_and_conversation(api, ledger) -> None:
    first, second = ledger
    body = api.get("/api/v1/usage/", RANGE | {"group_by": "model"}).json()
    assert [(g["provider"], g["model"], g["calls"], g["cost"]) for g in body["groups"]] == [
        ("anthropic", "claude-sonnet-4", 1, "0.01000000"),
        ("openai", "gpt-4o-mini", 5, "0.00012448"),
    ]
    body = api.get("/api/v1/usage/", RANGE | {"group_by": "conversation"}).json()
    assert [(g["conversation_id"], g["calls"]) for g in body["groups"]] == [
        (str(second.pk), 3),
        (str(first.pk), 2),
        (None, 1),
    ]


def test_only_the_callers_lines(other_api, ledger) -> None:
    body = other_api.get("/api/v1/usage/", RANGE).json()
    assert body["totals"]["calls"] == 1
    assert body["totals"]["cost"] == "7.00000000"


def test_aggregated_in_a_fixed_number_of_queries(api, user, ledger) -> None:
    api.get("/api/v1/usage/", RANGE)  # authentication caches warm
    with CaptureQueriesContext(connection) as few:
        api.get("/api/v1/usage/", RANGE)
    for day in range(4, 20):
        line(user, day=date(2026, 11, day))
    with CaptureQueriesContext(connection) as many:
        body = api.get("/api/v1/usage/", {"from": "2026-11-01", "to": "2026-11-30"}).json()
    assert len(body["groups"]) == 19
    assert len(many) == len(few)


def test_default_range_is_the_last_30_days(api, ledger) -> None:
    body = api.get("/api/v1/usage/").json()
    today = datetime.now(UTC).date()
    assert body["to"] == today.isoformat()
    assert (today - date.fromisoformat(body["from"])).days == 29


def test_groups_are_bounded(api, user, ledger, monkeypatch) -> None:
    monkeypatch.setattr("ai.selectors.USAGE_MAX_GROUPS", 2)
    body = api.get("/api/v1/usage/", RANGE).json()
    assert len(body["groups"]) == 2 and body["truncated"] is True
    assert body["totals"]["calls"] == 6


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2026-13-01"}, "to"),
        ({"from": "20261101"}, "from"),
        ({"group_by": "user"}, "group_by"),
    ],
)
def test_bad_parameters_answer_400_naming_them(api, params, field) -> None:
    response = api.get("/api/v1/usage/", params)
    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_any_range_of_valid_dates_is_answered(api, ledger) -> None:
    empty = api.get("/api/v1/usage/", {"from": "2026-11-05", "to": "2026-11-01"}).json()
    assert empty["totals"]["calls"] == 0
    assert empty["totals"]["cost"] == "0.00000000"
    assert empty["groups"] == []
    everything = api.get("/api/v1/usage/", {"from": "0001-01-01", "to": "9999-12-31"})
    assert everything.status_code == 200
    assert everything.json()["totals"]["calls"] == 7


def test_anonymous_is_refused(client) -> None:
    assert client.get("/api/v1/usage/").status_code == 401
