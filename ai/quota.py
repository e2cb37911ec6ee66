"""Quota: periods, lazy resets, and reserve-then-settle for every reply (contract 3.2).

The life of one reply's quota:

1. :func:`quota_reserve` before the model is called. One conditional ``UPDATE`` takes a
   request and an *estimate* of the tokens the reply may use (prompt plus the most it may
   write) out of what is left, inside ``transaction.atomic``. The database decides, so
   concurrent turns can never together exceed the limit (SQLite serializes writers with
   ``BEGIN IMMEDIATE``; PostgreSQL re-checks the ``WHERE`` on the locked row). Refusal
   raises :class:`QuotaExceeded` (429 ``quota_exceeded``, ``Retry-After``).
2. :func:`quota_settle` when the reply completed: the reservation leaves ``*_reserved``
   and what was really used (one request, the provider's token count) goes to ``*_used``.
   Actual tokens may exceed the estimate; ``*_used`` may then pass the limit and
   ``*_remaining`` floors at 0 until the next reset.
3. :func:`quota_release` when the reply failed before any output: nothing is charged.

Settle and release close the reservation with a conditional update on its status, so each
reservation is counted exactly once whoever calls them, however often.

Periods reset by themselves on next use (the *lazy reset*: ``resets_at`` has passed, so
``*_used`` go to 0 and the period moves on); ``manage.py reset_quotas --expired`` does the
same from cron. A reset never touches ``*_reserved``: those belong to replies in flight. A
reservation taken in an earlier period is removed from ``*_reserved`` when it closes but
charges nothing to the new period: the new period should not pay for a reply that was
admitted (and counted) against the old one, and the old counters are gone.

Every function here is sync; async callers wrap them in ``sync_to_async`` (one function is
one transactional unit).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from ai.models import Quota, Reservation
from chatproject import sql
from chatproject.errors import ServiceError

# Retry-After when the period never resets (``none``) and used counters fill the quota.
RETRY_AFTER_NO_RESET_SECONDS = 86_400
# Retry-After when only replies in flight fill the quota: one of them will settle soon.
RETRY_AFTER_IN_FLIGHT_SECONDS = 30


class QuotaExceeded(ServiceError):
    """429 ``quota_exceeded``: the body carries the quota, the header ``Retry-After``."""

    code = "quota_exceeded"
    status_code = 429
    default_detail = "You have used your quota for this period."
    retryable = True


# --- Period maths (pure) -------------------------------------------------------------------


def period_start(period: str, *, now: datetime) -> datetime:
    """The start of the calendar period containing ``now`` (UTC).

    ``day``: midnight; ``week``: Monday 00:00; ``month``: the 1st 00:00. ``none`` has no
    calendar: its period starts at ``now`` itself.
    """
    now = now.astimezone(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == Quota.Period.DAY:
        return midnight
    if period == Quota.Period.WEEK:
        return midnight - timedelta(days=midnight.weekday())
    if period == Quota.Period.MONTH:
        return midnight.replace(day=1)
    if period == Quota.Period.NONE:
        return now
    raise ValueError(f"Unknown quota period {period!r}.")


def period_next_reset(period: str, *, now: datetime) -> datetime | None:
    """When the period containing ``now`` ends (UTC), or ``None`` for period ``none``.

    ``day``: next midnight; ``week``: next Monday 00:00; ``month``: the 1st of next month
    00:00. At exactly a boundary the *next* boundary is returned (the period just began).
    """
    if period == Quota.Period.NONE:
        return None
    start = period_start(period, now=now)
    if period == Quota.Period.DAY:
        return start + timedelta(days=1)
    if period == Quota.Period.WEEK:
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


# --- Reads -------------------------------------------------------------------------------


def _remaining(limit: int, used: int, reserved: int) -> int:
    return max(0, limit - used - reserved)


def quota_as_dict(quota: Quota) -> dict[str, Any]:
    """The contract's Quota resource for a loaded row (no database access, no reset)."""
    return {
        "period": quota.period,
        "requests_limit": quota.requests_limit,
        "requests_used": quota.requests_used,
        "requests_remaining": _remaining(
            quota.requests_limit, quota.requests_used, quota.requests_reserved
        ),
        "tokens_limit": quota.tokens_limit,
        "tokens_used": quota.tokens_used,
        "tokens_remaining": _remaining(
            quota.tokens_limit, quota.tokens_used, quota.tokens_reserved
        ),
        "resets_at": quota.resets_at.astimezone(UTC).isoformat() if quota.resets_at else None,
    }


def quota_get_or_create(*, user: AbstractBaseUser, now: datetime | None = None) -> Quota:
    """The user's quota, created on first use from ``QUOTA_*`` settings (race-safe)."""
    quota = Quota.objects.filter(user=user).first()
    if quota is not None:
        return quota
    now = now or timezone.now()
    period = settings.QUOTA_PERIOD
    try:
        with transaction.atomic():
            return Quota.objects.create(
                user=user,
                period=period,
                requests_limit=settings.QUOTA_REQUESTS_LIMIT,
                tokens_limit=settings.QUOTA_TOKENS_LIMIT,
                period_started_at=period_start(period, now=now),
                resets_at=period_next_reset(period, now=now),
            )
    except IntegrityError:
        # Another request created it between our read and our insert.
        return Quota.objects.get(user=user)


def _new_period(period: str, *, now: datetime) -> dict[str, Any]:
    """The fields of a quota whose period starts over at ``now`` (``*_reserved`` stay)."""
    return {
        "requests_used": 0,
        "tokens_used": 0,
        "period_started_at": period_start(period, now=now),
        "resets_at": period_next_reset(period, now=now),
    }


def _lazy_reset(*, quota_id: int, now: datetime) -> bool:
    """Start the current period if ``resets_at`` has passed: a conditional update.

    Only the row whose ``resets_at`` is still in the past is touched, so two concurrent
    callers reset once. ``*_reserved`` are left alone. Returns True if it reset.
    """
    quota = Quota.objects.filter(pk=quota_id).values("period", "resets_at").first()
    if quota is None or quota["resets_at"] is None or quota["resets_at"] > now:
        return False
    period = quota["period"]
    return bool(
        Quota.objects.filter(
            pk=quota_id, period=period, resets_at__isnull=False, resets_at__lte=now
        ).update(**_new_period(period, now=now), updated_at=now)
    )


def quota_snapshot(*, user: AbstractBaseUser, now: datetime | None = None) -> dict[str, Any]:
    """The caller's quota as the contract's resource (applies the lazy reset).

    Keys: period, requests_limit, requests_used, requests_remaining, tokens_limit,
    tokens_used, tokens_remaining, resets_at (ISO 8601 or None). ``*_remaining`` is
    limit - used - reserved (replies in flight), floored at 0.
    """
    now = now or timezone.now()
    quota = quota_get_or_create(user=user, now=now)
    if quota.resets_at is not None and quota.resets_at <= now:
        with transaction.atomic():
            _lazy_reset(quota_id=quota.pk, now=now)
        quota.refresh_from_db()
    return quota_as_dict(quota)


# --- Reserve, settle, release ----------------------------------------------------------------


def _retry_after(quota: Quota, *, tokens: int, now: datetime) -> int:
    """Seconds a refused client should wait: until the reset, or less if only replies in
    flight are in the way (they settle or release soon)."""
    until_reset = (
        max(1, math.ceil((quota.resets_at - now).total_seconds()))
        if quota.resets_at is not None
        else RETRY_AFTER_NO_RESET_SECONDS
    )
    fits_without_in_flight = (
        quota.requests_used < quota.requests_limit
        and quota.tokens_used + tokens <= quota.tokens_limit
    )
    if fits_without_in_flight and (quota.requests_reserved or quota.tokens_reserved):
        return min(until_reset, RETRY_AFTER_IN_FLIGHT_SECONDS)
    return until_reset


def _refusal(quota: Quota, *, tokens: int, now: datetime) -> QuotaExceeded | None:
    """Why ``tokens`` and one request do not fit beside what is used and reserved, or None."""
    if tokens < 0:
        raise ValueError("tokens must not be negative")
    if (
        quota.requests_used + quota.requests_reserved < quota.requests_limit
        and quota.tokens_used + quota.tokens_reserved + tokens <= quota.tokens_limit
    ):
        return None
    return QuotaExceeded(
        data={"quota": quota_as_dict(quota)},
        headers={"Retry-After": str(_retry_after(quota, tokens=tokens, now=now))},
    )


def quota_reserve(
    *,
    user: AbstractBaseUser,
    tokens: int,
    message_id: uuid.UUID | str | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Hold one request and ``tokens`` of the user's quota for a reply, atomically.

    ``tokens`` is the estimate of what the reply may use (the prompt's tokens plus the most
    the model may write, e.g. ``AI_MAX_OUTPUT_TOKENS``); it must fit in what is left, and
    the real count replaces it at :func:`quota_settle`. Room is checked and taken on the
    locked row (requests_used + requests_reserved < requests_limit and
    tokens_used + tokens_reserved + tokens <= tokens_limit), after the lazy reset.

    ``message_id`` optionally links the reply's message now (see also
    :func:`reservation_attach_message`).

    Raises :class:`QuotaExceeded` (429, data ``{"quota": ...}``, header ``Retry-After``).
    """
    now = now or timezone.now()
    with transaction.atomic():
        quota = quota_lock(user=user, now=now)
        refused = _refusal(quota, tokens=tokens, now=now)
        if refused is None:
            return quota_reserve_locked(quota=quota, tokens=tokens, message_id=message_id, now=now)
    raise refused  # after the commit: a lazy reset done on the way is kept


def quota_lock(*, user: AbstractBaseUser, now: datetime | None = None) -> Quota:
    """The user's quota row, locked until the caller's transaction ends (call it inside
    ``transaction.atomic``), created on first use, with the lazy reset applied.

    Holding the lock, a turn can check the room left, count its open streams and reserve
    without another turn of the same user interleaving: the row lock on PostgreSQL, the
    write lock of the IMMEDIATE transaction on SQLite.
    """
    now = now or timezone.now()
    found = sql.select(Quota, {"user": user.pk}, for_update=True)  # every turn: plain SQL
    if found:
        quota = found[0]
    else:
        quota_get_or_create(user=user, now=now)
        quota = Quota.objects.select_for_update().get(user=user)
    if quota.resets_at is not None and quota.resets_at <= now:
        fields = _new_period(quota.period, now=now)
        for name, value in fields.items():
            setattr(quota, name, value)
        quota.save(update_fields=[*fields, "updated_at"])
    return quota


def quota_reserve_locked(
    *,
    quota: Quota,
    tokens: int,
    message_id: uuid.UUID | str | None = None,
    now: datetime | None = None,
) -> Reservation:
    """:func:`quota_reserve` for a row the caller holds with :func:`quota_lock`.

    Same rule (one request and ``tokens`` must fit beside what is used and reserved), no
    extra reads; ``quota`` is updated in memory too. Raises :class:`QuotaExceeded`.
    """
    now = now or timezone.now()
    refused = _refusal(quota, tokens=tokens, now=now)
    if refused is not None:
        raise refused
    # Every turn runs this: plain SQL (chatproject.sql), one UPDATE and one INSERT.
    sql.update(
        Quota,
        {
            "requests_reserved": sql.Add(1),
            "tokens_reserved": sql.Add(tokens),
            "updated_at": now,
        },
        {"id": quota.pk},
    )
    quota.requests_reserved += 1
    quota.tokens_reserved += tokens
    quota.updated_at = now
    reservation = Reservation(
        user_id=quota.user_id,
        message_id=message_id,
        tokens=tokens,
        period_started_at=quota.period_started_at,
    )
    sql.insert([reservation])
    return reservation


@dataclass(frozen=True, slots=True)
class Settlement:
    """A reservation just closed: what it charged, and the quota afterwards."""

    requests_charged: int
    tokens_charged: int
    quota: dict[str, Any]


def reservation_close_locked(
    *,
    user: AbstractBaseUser,
    reservation_id: uuid.UUID | str,
    requests: int,
    tokens: int,
    now: datetime | None = None,
    reserved: tuple[int, datetime] | None = None,
    status: str | None = None,
) -> Settlement | None:
    """:func:`quota_settle_locked`, saying what was charged (nothing across a reset).

    Returns None, changing nothing, when the reservation was closed already (released by
    the sweeper, say): the caller must then not record a charge either.
    """
    if requests < 0 or tokens < 0:
        raise ValueError("requests and tokens must not be negative")
    now = now or timezone.now()
    quota = quota_lock(user=user, now=now)
    if reserved is None:
        row = (
            Reservation.objects.filter(pk=reservation_id, status=Reservation.Status.HELD)
            .values("tokens", "period_started_at")
            .first()
        )
        if row is None:
            return None
        reserved = (row["tokens"], row["period_started_at"])
    reserved_tokens, reserved_period = reserved
    same_period = reserved_period == quota.period_started_at
    charged_requests = requests if same_period else 0
    charged_tokens = tokens if same_period else 0
    if status is None:
        status = Reservation.Status.SETTLED if requests or tokens else Reservation.Status.RELEASED
    # Every turn runs these two: plain SQL (chatproject.sql).
    closed = sql.update(
        Reservation,
        {
            "status": status,
            "requests_charged": charged_requests,
            "tokens_charged": charged_tokens,
            "closed_at": now,
        },
        {"id": reservation_id, "status": Reservation.Status.HELD},
    )
    if not closed:
        return None
    quota.requests_reserved = max(0, quota.requests_reserved - 1)
    quota.tokens_reserved = max(0, quota.tokens_reserved - reserved_tokens)
    quota.requests_used += charged_requests
    quota.tokens_used += charged_tokens
    quota.updated_at = now
    sql.update(
        Quota,
        {
            "requests_reserved": quota.requests_reserved,
            "tokens_reserved": quota.tokens_reserved,
            "requests_used": quota.requests_used,
            "tokens_used": quota.tokens_used,
            "updated_at": now,
        },
        {"id": quota.pk},
    )
    return Settlement(
        requests_charged=charged_requests, tokens_charged=charged_tokens, quota=quota_as_dict(quota)
    )


def quota_settle_locked(
    *,
    user: AbstractBaseUser,
    reservation_id: uuid.UUID | str,
    requests: int,
    tokens: int,
    now: datetime | None = None,
    reserved: tuple[int, datetime] | None = None,
    status: str | None = None,
) -> dict[str, Any] | None:
    """:func:`quota_settle` inside the caller's transaction, returning the quota after it.

    Lock the quota row, close the reservation if it is still held (a conditional update:
    idempotent), write the counters computed on the locked row. The same rules as
    :func:`quota_settle` (nothing charged across a reset; reserved counters never below
    0). Returns None, changing nothing, when the reservation was closed already; with
    ``requests=0`` and ``tokens=0`` it releases (unless ``status`` says otherwise).
    ``reserved``, the reservation's tokens and period as the caller made it, saves
    reading it back. :func:`reservation_close_locked` also says what was charged.
    """
    settled = reservation_close_locked(
        user=user,
        reservation_id=reservation_id,
        requests=requests,
        tokens=tokens,
        now=now,
        reserved=reserved,
        status=status,
    )
    return settled.quota if settled is not None else None


def _close(
    *,
    reservation_id: uuid.UUID | str,
    status: str,
    requests: int,
    tokens: int,
    now: datetime | None,
) -> bool:
    """Close a held reservation once: leave reserved, charge used if the period is the same."""
    reservation = (
        Reservation.objects.select_related("user")
        .filter(pk=reservation_id, status=Reservation.Status.HELD)
        .first()
    )
    if reservation is None:
        return False
    with transaction.atomic():
        return (
            quota_settle_locked(
                user=reservation.user,
                reservation_id=reservation_id,
                requests=requests,
                tokens=tokens,
                now=now,
                status=status,
            )
            is not None
        )


def quota_settle(
    *,
    reservation_id: uuid.UUID | str,
    requests: int,
    tokens: int,
    now: datetime | None = None,
) -> bool:
    """Close a reservation and charge what the reply used.

    ``requests`` is 1 for a completed reply and 0 otherwise; ``tokens`` is what the
    provider really used (reply and extraction, estimated where it reports nothing).
    The reservation's hold leaves ``*_reserved`` (never below 0) and the charge goes to
    ``*_used`` -- unless the quota was reset since the reservation was taken, in which case
    nothing is charged (the old period's counters are gone; the new one must not pay).

    Returns False, changing nothing, if the reservation is unknown or already closed, so
    calling it twice (or after :func:`quota_release`) is harmless.
    """
    return _close(
        reservation_id=reservation_id,
        status=Reservation.Status.SETTLED,
        requests=requests,
        tokens=tokens,
        now=now,
    )


def quota_release(*, reservation_id: uuid.UUID | str, now: datetime | None = None) -> bool:
    """Close a reservation charging nothing (a reply that failed before any output).

    Returns False, changing nothing, if it is unknown or already closed (idempotent).
    """
    return _close(
        reservation_id=reservation_id,
        status=Reservation.Status.RELEASED,
        requests=0,
        tokens=0,
        now=now,
    )


def reservation_attach_message(
    *, reservation_id: uuid.UUID | str, message_id: uuid.UUID | str
) -> None:
    """Link a reservation to the assistant message it pays for (for start-up recovery)."""
    Reservation.objects.filter(pk=reservation_id).update(message_id=message_id)


def reservations_release_stale(
    *,
    message_ids: Iterable[uuid.UUID | str] | None = None,
    older_than: timedelta | None = None,
    now: datetime | None = None,
) -> int:
    """Release held reservations of replies that will never finish; returns how many.

    ``message_ids``: reservations of these messages (e.g. the ones just marked
    ``interrupted``). ``older_than``: reservations held longer than this whose reply is not
    ``streaming`` (gone, or ended without settling them: a leak), the sweeper's safety net;
    a streaming reply's reservation is left to the heartbeat check, however old. Both
    given: either matches. At least one is required, so a live process's replies are
    never released by accident. Quota rows are locked in user order (two sweepers in one
    transaction each cannot deadlock on them).
    """
    if message_ids is None and older_than is None:
        raise ValueError("Give message_ids or older_than.")
    now = now or timezone.now()
    held = Reservation.objects.filter(status=Reservation.Status.HELD)
    found: set[tuple[int, uuid.UUID]] = set()
    if message_ids is not None:
        found.update(held.filter(message_id__in=list(message_ids)).values_list("user_id", "pk"))
    if older_than is not None:
        leaked = held.filter(created_at__lt=now - older_than).exclude(message__status="streaming")
        found.update(leaked.values_list("user_id", "pk"))
    return sum(quota_release(reservation_id=pk, now=now) for _user, pk in sorted(found))


# --- Resets and limits ----------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaResetResult:
    """One quota that was (or, in a dry run, would be) reset: counters before, next reset."""

    user_id: int
    username: str
    period: str
    requests_used: int
    tokens_used: int
    requests_reserved: int
    tokens_reserved: int
    resets_at: datetime | None


def quota_reset(
    *,
    users: QuerySet | Iterable[AbstractBaseUser] | None = None,
    only_expired: bool = False,
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[QuotaResetResult]:
    """Reset used counters and start a new period for existing quotas.

    ``users``: a queryset or iterable of users, or None for everyone with a quota (users
    without one are skipped: they start fresh on first use). ``only_expired``: only quotas
    whose ``resets_at`` has passed (what the lazy reset would do; safe from cron), and the
    new period is the calendar one. Otherwise the new period starts ``now`` and ends at the
    usual calendar boundary; reservations held from before the reset then charge nothing
    when they close. ``*_reserved`` are never touched. ``dry_run`` reports, changes nothing.
    Each quota is reset by its own conditional update (race-safe with the lazy reset).
    """
    now = now or timezone.now()
    quotas = Quota.objects.select_related("user").order_by("user__username")
    if users is not None:
        if isinstance(users, QuerySet):
            quotas = quotas.filter(user__in=users)
        else:
            quotas = quotas.filter(user_id__in=[u.pk for u in users])
    if only_expired:
        quotas = quotas.filter(resets_at__isnull=False, resets_at__lte=now)
    username_field = get_user_model().USERNAME_FIELD
    results: list[QuotaResetResult] = []
    for quota in quotas:
        started = period_start(quota.period, now=now) if only_expired else now
        resets_at = period_next_reset(quota.period, now=now)
        if not dry_run:
            target = Quota.objects.filter(pk=quota.pk)
            if only_expired:
                target = target.filter(resets_at__isnull=False, resets_at__lte=now)
            with transaction.atomic():
                done = target.update(
                    requests_used=0,
                    tokens_used=0,
                    period_started_at=started,
                    resets_at=resets_at,
                    updated_at=now,
                )
            if not done:
                continue  # reset lazily by a request meanwhile
        results.append(
            QuotaResetResult(
                user_id=quota.user_id,
                username=str(getattr(quota.user, username_field)),
                period=quota.period,
                requests_used=quota.requests_used,
                tokens_used=quota.tokens_used,
                requests_reserved=quota.requests_reserved,
                tokens_reserved=quota.tokens_reserved,
                resets_at=resets_at,
            )
        )
    return results


def quota_set_limits(
    *,
    quota: Quota,
    period: str,
    requests_limit: int,
    tokens_limit: int,
    now: datetime | None = None,
) -> Quota:
    """Change a quota's period and limits without touching its counters (admin override).

    Writes only these fields (plus ``resets_at`` when the period changes, to the end of the
    new calendar period from ``now``), so a concurrent reservation is never overwritten.
    """
    now = now or timezone.now()
    fields: dict[str, Any] = {
        "period": period,
        "requests_limit": requests_limit,
        "tokens_limit": tokens_limit,
        "updated_at": now,
    }
    current = Quota.objects.filter(pk=quota.pk).values_list("period", flat=True).get()
    if current != period:
        fields["resets_at"] = period_next_reset(period, now=now)
    with transaction.atomic():
        Quota.objects.filter(pk=quota.pk).update(**fields)
    quota.refresh_from_db()
    return quota
