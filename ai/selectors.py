"""Reads of the ai app: usage totals for the admin and reports."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDate

from ai.models import UsageRecord


def usage_totals_by_user_and_day(
    *, queryset: QuerySet[UsageRecord] | None = None, limit: int | None = 200
) -> list[dict[str, Any]]:
    """Totals of usage records per user and UTC day, newest day first.

    ``queryset`` narrows the records (e.g. the admin's filtered changelist); None means
    all. Each row: user_id, username, day (a date), calls, input_tokens, output_tokens,
    tokens_charged, estimated_calls. ``limit`` caps the rows (None: no cap).
    """
    records = UsageRecord.objects.all() if queryset is None else queryset
    rows = (
        records.order_by()
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("user_id", "user__username", "day")
        .annotate(
            calls=Count("id"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            tokens_charged=Sum("tokens_charged"),
            estimated_calls=Count("id", filter=Q(estimated=True)),
        )
        .order_by("-day", "user__username")
    )
    if limit is not None:
        rows = rows[:limit]
    return [
        {
            "user_id": row["user_id"],
            "username": row["user__username"],
            "day": row["day"],
            "calls": row["calls"],
            "input_tokens": row["input_tokens"] or 0,
            "output_tokens": row["output_tokens"] or 0,
            "tokens_charged": row["tokens_charged"] or 0,
            "estimated_calls": row["estimated_calls"],
        }
        for row in rows
    ]


#: The most groups ``GET /api/v1/usage/`` answers (``truncated`` says when there were more).
USAGE_MAX_GROUPS = 1000

#: The ledger lines that consumed a request: replies that delivered output to the user (a
#: complete one, or one cancelled after output). Failed, interrupted and extraction lines
#: consumed none (docs/api.md#usage-report).
REQUEST_CONSUMED = Q(purpose=UsageRecord.Purpose.REPLY) & (
    Q(outcome=UsageRecord.Outcome.COMPLETE)
    | Q(outcome=UsageRecord.Outcome.CANCELLED, output_tokens__gt=0)
)

_SUMS = {
    "requests": Count("id", filter=REQUEST_CONSUMED),
    "calls": Count("id"),
    "input_tokens": Sum("input_tokens"),
    "output_tokens": Sum("output_tokens"),
    "cache_read_tokens": Sum("cache_read_tokens"),
    "cache_write_tokens": Sum("cache_write_tokens"),
    "cost": Sum("cost"),
}


def _filled(row: dict[str, Any]) -> dict[str, Any]:
    """An aggregate row with zeros where the database summed nothing."""
    return {
        "requests": row["requests"] or 0,
        "calls": row["calls"] or 0,
        "input_tokens": row["input_tokens"] or 0,
        "output_tokens": row["output_tokens"] or 0,
        "cache_read_tokens": row["cache_read_tokens"] or 0,
        "cache_write_tokens": row["cache_write_tokens"] or 0,
        "cost": row["cost"] or Decimal(0),
    }


def usage_totals(queryset: QuerySet[UsageRecord]) -> dict[str, Any]:
    """Requests, calls, tokens by kind and cost of ``queryset``, summed by the database."""
    return _filled(queryset.order_by().aggregate(**_SUMS))


def usage_cost_by_day(queryset: QuerySet[UsageRecord]) -> list[tuple[date, Decimal]]:
    """``(UTC day, cost)`` of ``queryset`` for each day with lines, oldest first."""
    rows = (
        queryset.order_by()
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(cost=Sum("cost"))
        .order_by("day")
    )
    return [(row["day"], row["cost"] or Decimal(0)) for row in rows]


def usage_summary(
    *,
    user: Any,
    date_from: date,
    date_to: date,
    group_by: str,
    max_groups: int | None = None,
) -> dict[str, Any]:
    """The caller's usage from ``date_from`` to ``date_to`` (UTC days, both included): the
    totals and the groups by ``day`` (oldest first), ``model`` or ``conversation`` (costliest
    first), all aggregated by the database. At most ``max_groups`` (default
    :data:`USAGE_MAX_GROUPS`) groups; ``truncated``
    says there were more (the totals always count everything). ``date_from`` after
    ``date_to`` is an empty range.
    """
    start = datetime.combine(date_from, time.min, tzinfo=UTC)
    records = UsageRecord.objects.filter(user=user, created_at__gte=start)
    if date_to < date.max:  # the day after the last one, unless there is none
        end = datetime.combine(date_to + timedelta(days=1), time.min, tzinfo=UTC)
        records = records.filter(created_at__lt=end)
    if max_groups is None:
        max_groups = USAGE_MAX_GROUPS
    if group_by == "day":
        rows = (
            records.order_by()
            .annotate(day=TruncDate("created_at", tzinfo=UTC))
            .values("day")
            .annotate(**_SUMS)
            .order_by("day")
        )
    elif group_by == "model":
        rows = (
            records.order_by()
            .values("provider", "model")
            .annotate(**_SUMS)
            .order_by("-cost", "provider", "model")
        )
    elif group_by == "conversation":
        rows = (
            records.order_by()
            .values("conversation_id")
            .annotate(**_SUMS)
            .order_by("-cost", "conversation_id")
        )
    else:
        raise ValueError(f"Unknown group_by {group_by!r}.")
    found = list(rows[: max_groups + 1])
    groups = []
    for row in found[:max_groups]:
        group: dict[str, Any] = {
            "day": None,
            "provider": None,
            "model": None,
            "conversation_id": None,
        }
        if group_by == "day":
            group["day"] = row["day"]
        elif group_by == "model":
            group["provider"], group["model"] = row["provider"], row["model"]
        else:
            group["conversation_id"] = row["conversation_id"]
        groups.append({**group, **_filled(row)})
    return {
        "from": date_from,
        "to": date_to,
        "group_by": group_by,
        "totals": usage_totals(records),
        "groups": groups,
        "truncated": len(found) > max_groups,
    }
