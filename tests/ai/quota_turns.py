"""A turn's quota writes without the rest of the turn: the same locked functions, in the
same transactions, as ``conversations.turn_start.turn_prepare`` and ``turn_finish`` run."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from ai.models import Reservation
from ai.quota.services import Settlement, quota_lock, quota_reserve_locked, reservation_close_locked


def reserve(
    user: AbstractBaseUser,
    tokens: int,
    *,
    message_id: uuid.UUID | None = None,
    now: datetime | None = None,
    cost: Decimal = Decimal(0),
) -> Reservation:
    """A turn's start: lock the user's quota row and reserve on it, in one transaction."""
    with transaction.atomic():
        quota = quota_lock(user=user, now=now)
        return quota_reserve_locked(
            quota=quota, tokens=tokens, cost=cost, message_id=message_id, now=now
        )


def settle(
    reservation: Reservation,
    *,
    requests: int,
    tokens: int,
    now: datetime | None = None,
    cost: Decimal = Decimal(0),
) -> Settlement | None:
    """A turn's finish: close the reservation charging what was used, in one transaction."""
    with transaction.atomic():
        return reservation_close_locked(
            user=reservation.user,
            reservation_id=reservation.pk,
            requests=requests,
            tokens=tokens,
            cost=cost,
            now=now,
        )
