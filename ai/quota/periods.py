"""Quota periods: pure date maths and the values a new period starts with (no database).

A period is a calendar period in UTC (``day``: from midnight; ``week``: from Monday
00:00; ``month``: from the 1st 00:00) or ``none`` (it never resets). When a quota's
``resets_at`` has passed, its period is *due*: it starts over with :func:`new_period` (the
used counters go to 0; the reserved ones belong to replies in flight and stay).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

DAY, WEEK, MONTH, NONE = "day", "week", "month", "none"


def period_start(period: str, *, now: datetime) -> datetime:
    """The start of the calendar period containing ``now`` (UTC).

    ``day``: midnight; ``week``: Monday 00:00; ``month``: the 1st 00:00. ``none`` has no
    calendar: its period starts at ``now`` itself.
    """
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == DAY:
        return midnight
    if period == WEEK:
        return midnight - timedelta(days=midnight.weekday())
    if period == MONTH:
        return midnight.replace(day=1)
    if period == NONE:
        return now
    raise ValueError(f"Unknown quota period {period!r}.")


def period_next_reset(period: str, *, now: datetime) -> datetime | None:
    """When the period containing ``now`` ends (UTC), or ``None`` for period ``none``.

    ``day``: next midnight; ``week``: next Monday 00:00; ``month``: the 1st of next month
    00:00. At exactly a boundary the *next* boundary is returned (the period just began).
    """
    if period == NONE:
        return None
    start = period_start(period, now=now)
    if period == DAY:
        return start + timedelta(days=1)
    if period == WEEK:
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def is_due(resets_at: datetime | None, *, now: datetime) -> bool:
    """Whether a period ending at ``resets_at`` is over at ``now`` (``None``: never)."""
    return resets_at is not None and resets_at <= now


def new_period(period: str, *, now: datetime) -> dict[str, Any]:
    """The fields of a quota whose period starts over at ``now``: the used counters at 0,
    the calendar period containing ``now`` (missed periods are skipped, not replayed).
    The reserved counters are not among them: they belong to replies in flight."""
    return {
        "requests_used": 0,
        "tokens_used": 0,
        "cost_used": Decimal(0),
        "period_started_at": period_start(period, now=now),
        "resets_at": period_next_reset(period, now=now),
    }


def remaining(limit: int, used: int, reserved: int) -> int:
    """What is left of ``limit`` beside what is used and held by replies in flight (>= 0)."""
    return max(0, limit - used - reserved)


def cost_remaining(limit: Decimal | None, used: Decimal, reserved: Decimal) -> Decimal | None:
    """What is left of a cost ``limit`` beside what is used and held (>= 0); None: no limit."""
    if limit is None:
        return None
    return max(Decimal(0), limit - used - reserved)
