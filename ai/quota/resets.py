"""Quota resets and limits set by hand: ``manage.py reset_quotas`` and the admin.

A reset starts a period over (used counters, cost included, to 0) and never touches
``*_reserved``: those belong to replies in flight, which then charge nothing when they close (see
:mod:`ai.quota.services`). Limits change without touching any counter.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from ai.models import Quota
from ai.quota.periods import new_period, period_next_reset


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
    cost_used: Decimal = Decimal(0)
    cost_reserved: Decimal = Decimal(0)


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
    whose period is due, started over as the lazy reset would (safe from cron). Otherwise
    the new period starts ``now`` and ends at the usual calendar boundary; reservations
    held from before the reset then charge nothing when they close. ``*_reserved`` are
    never touched. ``dry_run`` reports, changes nothing. Each quota is reset by its own
    conditional update (race-safe with the lazy reset).
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
        fields = new_period(quota.period, now=now)
        if not only_expired:
            fields["period_started_at"] = now  # a reset by hand starts the period now
        if not dry_run:
            target = Quota.objects.filter(pk=quota.pk)
            if only_expired:
                target = target.filter(resets_at__isnull=False, resets_at__lte=now)
            with transaction.atomic():
                done = target.update(**fields, updated_at=now)
            if not done:
                continue  # reset lazily by a turn meanwhile
        results.append(
            QuotaResetResult(
                user_id=quota.user_id,
                username=str(getattr(quota.user, username_field)),
                period=quota.period,
                requests_used=quota.requests_used,
                tokens_used=quota.tokens_used,
                requests_reserved=quota.requests_reserved,
                tokens_reserved=quota.tokens_reserved,
                resets_at=fields["resets_at"],
                cost_used=quota.cost_used,
                cost_reserved=quota.cost_reserved,
            )
        )
    return results


#: ``quota_set_limits(cost_limit=KEEP)``: leave the cost limit as it is.
KEEP: Final = object()


def quota_set_limits(
    *,
    quota: Quota,
    period: str,
    requests_limit: int,
    tokens_limit: int,
    cost_limit: Decimal | object | None = KEEP,
    now: datetime | None = None,
) -> Quota:
    """Change a quota's period and limits without touching its counters (admin override).

    ``cost_limit``: money per period (a Decimal >= 0), None for no limit, or :data:`KEEP`
    (the default) to leave it unchanged.

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
    if cost_limit is not KEEP:
        if cost_limit is not None and Decimal(cost_limit) < 0:  # type: ignore[arg-type]
            raise ValueError("cost_limit must not be negative")
        fields["cost_limit"] = cost_limit
    current = Quota.objects.filter(pk=quota.pk).values_list("period", flat=True).get()
    if current != period:
        fields["resets_at"] = period_next_reset(period, now=now)
    with transaction.atomic():
        Quota.objects.filter(pk=quota.pk).update(**fields)
    quota.refresh_from_db()
    return quota
