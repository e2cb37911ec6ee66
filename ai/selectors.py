"""Reads of the ai app: usage totals for the admin and reports."""

from __future__ import annotations

from datetime import UTC
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
