"""Period maths: pure functions, no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from ai.quota import period_next_reset, period_start


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
