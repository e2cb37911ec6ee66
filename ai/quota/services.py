"""Quota writes: a reply's reservation from the turn's start to its end, releases, resets.

The path every reply takes (the turn's two transactions are ``conversations.turn_start``
and ``conversations.turn_finish``):

1. **Reserve**, in the turn's first transaction (``turn_prepare``). :func:`quota_lock`
   comes first: the user's quota row, created on first use, locked until the transaction
   ends (the row lock on PostgreSQL, the IMMEDIATE transaction's write lock on SQLite), with
   the lazy reset applied. Holding it, the turn counts its open streams, stores its
   messages and calls :func:`quota_reserve_locked`: one request and an *estimate* of the
   tokens (the prompt plus the most the model may write, plus the most the flow extraction
   after the reply may spend), and, when the quota has a ``cost_limit``, the worst case of
   their cost at the model's price, must fit beside what is used and what replies in
   flight hold; they move into ``*_reserved`` and a held :class:`~ai.models.Reservation` names
   the reply's message. One user's turns are serialized on the lock, so concurrent turns
   never together pass a limit. A refusal raises :class:`~ai.errors.QuotaExceeded` (429,
   ``Retry-After``) and rolls the turn's start back.
2. **Settle**, in the turn's finish transaction (``turn_finish``):
   :func:`reservation_close_locked` locks the row again and closes the reservation by a
   conditional update on its status, so it is counted once whoever closes it. Its hold
   leaves ``*_reserved``; what was used (one request for a reply that delivered output,
   the tokens the provider counted, what those calls cost) goes to ``*_used``. Real tokens
   may pass the estimate: ``*_used`` may then pass the limit and ``*_remaining`` floors at
   0 until the reset.
3. **Release** when the turn fails before its outcome is stored: :func:`quota_release`,
   the same close charging nothing (also the admin's release action).
4. **Safety net**: the stale-reply sweeper (``conversations.streaming.recovery``) calls
   :func:`reservations_release_stale` for the replies it marks ``interrupted`` and for
   reservations held past a bound whose reply is not streaming (a turn that died).

The lazy reset: when ``resets_at`` has passed, :func:`quota_lock` starts the period over
(:func:`ai.quota.periods.new_period`: used counters to 0) before anything else reads the
row; ``manage.py reset_quotas --expired`` does the same from cron (:mod:`ai.quota.resets`,
with the admin's resets and limits). A reset never touches ``*_reserved``: those belong to
replies in flight. A reservation taken in an earlier period leaves ``*_reserved`` when it
closes and charges the *current* period's counters: the reply was really made and is paid
for once, when it settles (a reply must not become free because a reset fell between its
start and its end). Reads (the Quota resource) are in :mod:`ai.quota.selectors`.

The statements every turn runs are plain SQL (:mod:`core.sql`, for the CPU the ORM
spends building them); the rest is the ORM. Every function is sync and runs in the
caller's transaction when it says "locked"; async callers go through ``db_run``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from ai.errors import QuotaExceeded
from ai.models import Quota, Reservation
from ai.quota.periods import is_due, new_period
from ai.quota.selectors import quota_as_dict, quota_default
from core import sql

# Retry-After when the period never resets (``none``) and used counters fill the quota.
RETRY_AFTER_NO_RESET_SECONDS = 86_400
# Retry-After when only replies in flight fill the quota: one of them will settle soon.
RETRY_AFTER_IN_FLIGHT_SECONDS = 30


def quota_get_or_create(*, user: AbstractBaseUser, now: datetime | None = None) -> Quota:
    """The user's quota, created on first use from ``QUOTA_*`` settings (race-safe)."""
    quota = Quota.objects.filter(user=user).first()
    if quota is not None:
        return quota
    try:
        with transaction.atomic():
            quota = quota_default(user=user, now=now or timezone.now())
            quota.save(force_insert=True)
            return quota
    except IntegrityError:
        # Another request created it between our read and our insert.
        return Quota.objects.get(user=user)


def quota_lock(*, user: AbstractBaseUser, now: datetime | None = None) -> Quota:
    """The user's quota row, locked until the caller's transaction ends (call it inside
    ``transaction.atomic``), created on first use, its period started over if due (the
    lazy reset: the one place a period resets by itself).

    Holding the lock, a turn can check the room left, count its open streams and reserve
    without another turn of the same user interleaving.
    """
    now = now or timezone.now()
    found = sql.select(Quota, {"user": user.pk}, for_update=True)  # every turn: plain SQL
    if found:
        quota = found[0]
    else:
        quota_get_or_create(user=user, now=now)
        quota = Quota.objects.select_for_update().get(user=user)
    if is_due(quota.resets_at, now=now):
        fields = new_period(quota.period, now=now)
        for name, value in fields.items():
            setattr(quota, name, value)
        quota.save(update_fields=[*fields, "updated_at"])
    return quota


def _limit_hit(quota: Quota, *, tokens: int, cost: Decimal) -> str | None:
    """Which limit a new reservation of one request, ``tokens`` and ``cost`` would pass
    beside what is used and held (``requests``, ``tokens`` or ``cost``), or None if it fits."""
    if quota.requests_used + quota.requests_reserved >= quota.requests_limit:
        return "requests"
    if quota.tokens_used + quota.tokens_reserved + tokens > quota.tokens_limit:
        return "tokens"
    if quota.cost_limit is not None and (
        quota.cost_used + quota.cost_reserved + cost > quota.cost_limit
    ):
        return "cost"
    return None


def _retry_after(quota: Quota, *, tokens: int, cost: Decimal, now: datetime) -> int:
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
        and (quota.cost_limit is None or quota.cost_used + cost <= quota.cost_limit)
    )
    in_flight = quota.requests_reserved or quota.tokens_reserved or quota.cost_reserved
    if fits_without_in_flight and in_flight:
        return min(until_reset, RETRY_AFTER_IN_FLIGHT_SECONDS)
    return until_reset


def quota_reserve_locked(
    *,
    quota: Quota,
    tokens: int,
    cost: Decimal = Decimal(0),
    message_id: uuid.UUID | str | None = None,
    now: datetime | None = None,
) -> Reservation:
    """Hold one request, ``tokens`` and ``cost`` of a quota the caller holds with
    :func:`quota_lock`.

    ``tokens`` is the estimate of what the reply may use and ``cost`` the most it may cost
    (its worst case at the model's price); the real ones replace them when the reservation
    closes. The rule: requests_used + requests_reserved < requests_limit, tokens_used +
    tokens_reserved + tokens <= tokens_limit and, when there is a cost limit, cost_used +
    cost_reserved + cost <= cost_limit. ``message_id`` is the reply the reservation pays
    for (the sweeper finds it by that). ``quota`` is updated in memory too. Raises
    :class:`~ai.errors.QuotaExceeded` (429, data ``{"quota": ..., "limit": "requests" |
    "tokens" | "cost"}``, header ``Retry-After``).
    """
    if tokens < 0 or cost < 0:
        raise ValueError("tokens and cost must not be negative")
    now = now or timezone.now()
    limit = _limit_hit(quota, tokens=tokens, cost=cost)
    if limit is not None:
        raise QuotaExceeded(
            data={"quota": quota_as_dict(quota), "limit": limit},
            headers={"Retry-After": str(_retry_after(quota, tokens=tokens, cost=cost, now=now))},
        )
    # Every turn runs this: plain SQL (core.sql), one UPDATE and one INSERT.
    sql.update(
        Quota,
        {
            "requests_reserved": sql.Add(1),
            "tokens_reserved": sql.Add(tokens),
            "cost_reserved": sql.Add(cost),
            "updated_at": now,
        },
        {"id": quota.pk},
    )
    quota.requests_reserved += 1
    quota.tokens_reserved += tokens
    quota.cost_reserved += cost
    quota.updated_at = now
    reservation = Reservation(
        user_id=quota.user_id,
        message_id=message_id,
        tokens=tokens,
        cost=cost,
        period_started_at=quota.period_started_at,
    )
    sql.insert([reservation])
    return reservation


@dataclass(frozen=True, slots=True)
class Settlement:
    """A reservation just closed: what it charged, and the quota afterwards."""

    requests_charged: int
    tokens_charged: int
    cost_charged: Decimal
    quota: dict[str, Any]


def reservation_close_locked(
    *,
    user: AbstractBaseUser,
    reservation_id: uuid.UUID | str,
    requests: int,
    tokens: int,
    cost: Decimal = Decimal(0),
    now: datetime | None = None,
    reserved: tuple[int, datetime, Decimal] | None = None,
) -> Settlement | None:
    """Close a held reservation in the caller's transaction, charging ``requests`` (1 for
    a reply that delivered output, else 0), ``tokens`` (what the provider used) and
    ``cost`` (what those calls cost at the model's price); 0, 0 and 0 release it.

    Locks the quota row (:func:`quota_lock`), closes the reservation if it is still held
    (a conditional update: idempotent), moves its hold out of ``*_reserved`` (never below
    0) and the charge into ``*_used``, of the current period even if the reservation was
    taken in an earlier one (the lazy reset has run first; the reply is charged once, when
    it settles, not dropped). ``reserved``, the reservation's tokens, period and cost as
    the turn made it, saves reading it back. Returns None, changing nothing, when the
    reservation was closed already (released by the sweeper, say): the caller must then
    not record a charge either.
    """
    if requests < 0 or tokens < 0 or cost < 0:
        raise ValueError("requests, tokens and cost must not be negative")
    now = now or timezone.now()
    quota = quota_lock(user=user, now=now)
    if reserved is None:
        row = (
            Reservation.objects.filter(pk=reservation_id, status=Reservation.Status.HELD)
            .values("tokens", "period_started_at", "cost")
            .first()
        )
        if row is None:
            return None
        reserved = (row["tokens"], row["period_started_at"], row["cost"])
    reserved_tokens, _reserved_period, reserved_cost = reserved
    charged_requests, charged_tokens, charged_cost = requests, tokens, cost
    charges = requests or tokens or cost
    status = Reservation.Status.SETTLED if charges else Reservation.Status.RELEASED
    # Every turn runs these two: plain SQL (core.sql).
    closed = sql.update(
        Reservation,
        {
            "status": status,
            "requests_charged": charged_requests,
            "tokens_charged": charged_tokens,
            "cost_charged": charged_cost,
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
    quota.cost_reserved = max(Decimal(0), quota.cost_reserved - reserved_cost)
    quota.cost_used += charged_cost
    quota.updated_at = now
    sql.update(
        Quota,
        {
            "requests_reserved": quota.requests_reserved,
            "tokens_reserved": quota.tokens_reserved,
            "requests_used": quota.requests_used,
            "tokens_used": quota.tokens_used,
            "cost_reserved": quota.cost_reserved,
            "cost_used": quota.cost_used,
            "updated_at": now,
        },
        {"id": quota.pk},
    )
    return Settlement(
        requests_charged=charged_requests,
        tokens_charged=charged_tokens,
        cost_charged=charged_cost,
        quota=quota_as_dict(quota),
    )


def quota_release(*, reservation_id: uuid.UUID | str, now: datetime | None = None) -> bool:
    """Close a reservation charging nothing, in a transaction of its own (a turn that
    failed before storing its outcome; the admin's release action; the sweeper).

    Returns False, changing nothing, if it is unknown or already closed (idempotent).
    """
    reservation = (
        Reservation.objects.select_related("user")
        .filter(pk=reservation_id, status=Reservation.Status.HELD)
        .first()
    )
    if reservation is None:
        return False
    with transaction.atomic():
        closed = reservation_close_locked(
            user=reservation.user, reservation_id=reservation_id, requests=0, tokens=0, now=now
        )
    return closed is not None


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
