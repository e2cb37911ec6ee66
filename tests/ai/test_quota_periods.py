"""Period maths (ai.quota.periods): pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ai.models import Quota
from ai.quota import periods
from ai.quota.periods import is_due, new_period, period_next_reset, period_start, remaining


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("period", "now", "start", "reset"),
    [
        ("day", utc(2026, 3, 4, 15, 30), utc(2026, 3, 4), utc(2026, 3, 5)),
        ("day", utc(2026, 3, 4), utc(2026, 3, 4), utc(2026, 3, 5)),
        ("day", utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 31), utc(2027, 1, 1)),
        # 2026-03-04 is a Wednesday; the week starts on Monday 2026-03-02.
        ("week", utc(2026, 3, 4, 8), utc(2026, 3, 2), utc(2026, 3, 9)),
        ("week", utc(2026, 3, 2), utc(2026, 3, 2), utc(2026, 3, 9)),
        ("week", utc(2026, 3, 8, 23, 59), utc(2026, 3, 2), utc(2026, 3, 9)),
        ("month", utc(2026, 2, 28, 12), utc(2026, 2, 1), utc(2026, 3, 1)),
        ("month", utc(2026, 12, 15), utc(2026, 12, 1), utc(2027, 1, 1)),
        ("month", utc(2026, 1, 1), utc(2026, 1, 1), utc(2026, 2, 1)),
    ],
)
def test_calendar_periods(period: str, now: datetime, start: datetime, reset: datetime) -> None:
    assert period_start(period, now=now) == start
    assert period_next_reset(period, now=now) == reset


def test_period_none_never_resets() -> None:
    now = utc(2026, 3, 4, 15, 30)
    assert period_next_reset("none", now=now) is None
    assert period_start("none", now=now) == now


def test_periods_are_computed_in_utc() -> None:
    # 01:00 on the 5th in UTC+2 is still the 4th in UTC.
    now = datetime(2026, 3, 5, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert period_start("day", now=now) == utc(2026, 3, 4)
    assert period_next_reset("day", now=now) == utc(2026, 3, 5)


def test_unknown_period_is_an_error() -> None:
    with pytest.raises(ValueError, match="fortnight"):
        period_start("fortnight", now=utc(2026, 1, 1))


def test_the_period_names_are_the_models() -> None:
    names = (periods.DAY, periods.WEEK, periods.MONTH, periods.NONE)
    assert set(names) == set(Quota.Period.values)


def test_is_due_at_and_after_resets_at_never_without_one() -> None:
    boundary = utc(2026, 3, 5)
    assert not is_due(boundary, now=boundary - timedelta(microseconds=1))
    assert is_due(boundary, now=boundary)
    assert is_due(boundary, now=boundary + timedelta(days=40))
    assert not is_due(None, now=boundary)


def test_a_new_period_zeroes_the_used_counters_only_and_skips_missed_periods() -> None:
    # Due since 2026-03-05, first used again on the 20th: the period is the 20th's.
    assert new_period("day", now=utc(2026, 3, 20, 10)) == {
        "requests_used": 0,
        "tokens_used": 0,
        "cost_used": 0,
        "period_started_at": utc(2026, 3, 20),
        "resets_at": utc(2026, 3, 21),
    }
    assert new_period("none", now=utc(2026, 3, 20, 10))["resets_at"] is None


def test_remaining_counts_what_is_held_and_floors_at_zero() -> None:
    assert remaining(10, 3, 2) == 5
    assert remaining(1000, 1200, 0) == 0
    assert remaining(5, 0, 9) == 0
