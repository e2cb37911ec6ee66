"""Quota reads: the Quota resource as a client sees it (``GET /api/v1/quota/``, the turn's
``metadata`` and ``done`` events; see ``docs/api.md``).

Nothing here writes. A period that is due is shown as it will be once the next write
(:func:`ai.quota.services.quota_lock`) starts it over; a user without a quota row is
shown the defaults the row will be created with.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from ai.models import Quota
from ai.pricing import COST_QUANTUM
from ai.quota.periods import (
    cost_remaining,
    is_due,
    new_period,
    period_next_reset,
    period_start,
    remaining,
)


def quota_as_dict(quota: Quota) -> dict[str, Any]:
    """The Quota resource of a loaded row, as stored (no database access, no reset).

    Keys: period, requests_limit, requests_used, requests_remaining, tokens_limit,
    tokens_used, tokens_remaining, cost_limit, cost_used, cost_remaining (decimal strings;
    the limit and what remains None when there is no cost limit), resets_at (ISO 8601 or
    None). ``*_remaining`` is limit - used - reserved (replies in flight), floored at 0.
    """
    cost_left = cost_remaining(quota.cost_limit, quota.cost_used, quota.cost_reserved)
    return {
        "period": quota.period,
        "requests_limit": quota.requests_limit,
        "requests_used": quota.requests_used,
        "requests_remaining": remaining(
            quota.requests_limit, quota.requests_used, quota.requests_reserved
        ),
        "tokens_limit": quota.tokens_limit,
        "tokens_used": quota.tokens_used,
        "tokens_remaining": remaining(quota.tokens_limit, quota.tokens_used, quota.tokens_reserved),
        "cost_limit": _money(quota.cost_limit),
        "cost_used": _money(quota.cost_used),
        "cost_remaining": _money(cost_left),
        "resets_at": quota.resets_at.astimezone(UTC).isoformat() if quota.resets_at else None,
    }


def _money(value: Decimal | int | None) -> str | None:
    """A cost as a decimal string at the ledger's precision (None stays None)."""
    if value is None:
        return None
    return format(Decimal(value).quantize(COST_QUANTUM), "f")


def quota_default(*, user: AbstractBaseUser, now: datetime) -> Quota:
    """The quota ``user`` starts with (``QUOTA_*`` settings, the period containing
    ``now``), unsaved."""
    period = settings.QUOTA_PERIOD
    return Quota(
        user=user,
        period=period,
        requests_limit=settings.QUOTA_REQUESTS_LIMIT,
        tokens_limit=settings.QUOTA_TOKENS_LIMIT,
        cost_limit=settings.QUOTA_COST_LIMIT,
        period_started_at=period_start(period, now=now),
        resets_at=period_next_reset(period, now=now),
    )


def quota_as_of(quota: Quota, *, now: datetime) -> Quota:
    """``quota`` as it stands at ``now``: itself, or, when its period is due, a copy whose
    period has started over (in memory only)."""
    if not is_due(quota.resets_at, now=now):
        return quota
    current = copy.copy(quota)
    for name, value in new_period(quota.period, now=now).items():
        setattr(current, name, value)
    return current


def quota_snapshot(*, user: AbstractBaseUser, now: datetime | None = None) -> dict[str, Any]:
    """The user's quota as the Quota resource at ``now`` (see :func:`quota_as_dict`),
    with a due period shown started over. One read; nothing is written."""
    now = now or timezone.now()
    quota = Quota.objects.filter(user=user).first() or quota_default(user=user, now=now)
    return quota_as_dict(quota_as_of(quota, now=now))
