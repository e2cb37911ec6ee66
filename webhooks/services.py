"""Writes for webhooks: subscriptions, the outbox, claims under a lease, attempts.

The outbox rows of a flow change are written by :func:`deliveries_for_flow_events`,
called inside the transaction that stored the change (``flows.signals``); the delivery
loop (:mod:`webhooks.delivery`) claims due rows with :func:`deliveries_claim` in a short
transaction, sends them outside any transaction and stores the outcome with
:func:`delivery_record` (docs/api.md#webhooks, docs/operations.md#webhooks).
"""

from __future__ import annotations

import base64
import secrets
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from flows.models import Flow, FlowEvent
from flows.serializers import flow_to_dict
from webhooks.models import Delivery, DeliveryAttempt, EventType, Subscription

#: Which webhook event a flow history entry is.
EVENT_OF_KIND: dict[str, str] = {
    FlowEvent.Kind.CREATED: EventType.FLOW_CREATED,
    FlowEvent.Kind.UPDATED: EventType.FLOW_UPDATED,
    FlowEvent.Kind.REOPENED: EventType.FLOW_UPDATED,
    FlowEvent.Kind.DONE: EventType.FLOW_DONE,
}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# --- subscriptions -----------------------------------------------------------------------


def subscription_create(
    *, user: AbstractBaseUser, url: str, events: Sequence[str], active: bool = True
) -> Subscription:
    """Store a subscription with a new secret (the caller shows it once)."""
    return Subscription.objects.create(
        user=user, url=url, events=list(dict.fromkeys(events)), active=active, secret=new_secret()
    )


def subscription_update(*, subscription: Subscription, data: dict[str, Any]) -> Subscription:
    """Change a subscription's ``url``, ``events`` or ``active``."""
    if "events" in data:
        data = {**data, "events": list(dict.fromkeys(data["events"]))}
    for field in ("url", "events", "active"):
        if field in data:
            setattr(subscription, field, data[field])
    subscription.save()
    return subscription


def subscription_delete(*, subscription: Subscription) -> None:
    """Delete a subscription and its deliveries."""
    subscription.delete()


# --- the outbox --------------------------------------------------------------------------


def event_payload(
    *, event_type: str, flow: Flow, at: datetime, event: FlowEvent | None = None
) -> dict[str, Any]:
    """The JSON body of a delivery (docs/api.md#webhook-payloads)."""
    data: dict[str, Any] = {"flow": flow_to_dict(flow)}
    if event is not None:
        data["change"] = {
            "id": str(event.id),
            "kind": event.kind,
            "actor": event.actor,
            "source_message_id": str(event.source_message_id) if event.source_message_id else None,
            "changes": event.changes,
            "created_at": _iso(event.created_at),
        }
    return {"type": event_type, "timestamp": _iso(at), "data": data}


def _subscriptions_of(user_ids: Iterable[int]) -> dict[int, list[Subscription]]:
    found: dict[int, list[Subscription]] = {}
    for subscription in Subscription.objects.filter(user_id__in=set(user_ids), active=True).only(
        "id", "user_id", "events"
    ):
        found.setdefault(subscription.user_id, []).append(subscription)
    return found


def deliveries_for_flow_events(*, events: Sequence[FlowEvent]) -> list[Delivery]:
    """Write the outbox rows of stored flow history entries (call inside their transaction).

    One query when the users have no active subscription, one bulk insert otherwise. A
    changed ``due_date`` lets ``flow.due`` fire again, for the new date; a flow whose
    change leaves it open, reminded and due today or earlier gets its ``flow.due`` here
    at once (when its user subscribed to it), instead of at the next scan.
    """
    if not events:
        return []
    rearm = [
        e.flow_id for e in events if e.kind != FlowEvent.Kind.CREATED and "due_date" in e.changes
    ]
    if rearm:
        Flow.objects.filter(pk__in=rearm).update(due_notified_at=None)
        for event in events:
            if event.flow_id in rearm:
                event.flow.due_notified_at = None
    subscriptions = _subscriptions_of(e.user_id for e in events)
    if not subscriptions:
        return []
    now = timezone.now()
    rows = []
    for event in events:
        event_type = EVENT_OF_KIND.get(event.kind)
        for subscription in subscriptions.get(event.user_id, []):
            if event_type in subscription.events:
                payload = event_payload(
                    event_type=event_type, flow=event.flow, at=event.created_at, event=event
                )
                rows.append(
                    Delivery(
                        subscription_id=subscription.id,
                        event_type=event_type,
                        flow_id=event.flow_id,
                        payload=payload,
                        next_attempt_at=now,
                    )
                )
    rows += _due_now(events=events, subscriptions=subscriptions, now=now)
    return Delivery.objects.bulk_create(rows) if rows else []


def _due_now(
    *, events: Sequence[FlowEvent], subscriptions: dict[int, list[Subscription]], now: datetime
) -> list[Delivery]:
    """The ``flow.due`` deliveries of changed flows that are due already, each flow marked
    notified by a conditional UPDATE (so the scan, or another writer, cannot send it too)."""
    today = timezone.localdate(now)
    rows: list[Delivery] = []
    seen: set[Any] = set()
    for event in events:
        flow = event.flow
        wanted = [
            sub for sub in subscriptions.get(flow.user_id, []) if EventType.FLOW_DUE in sub.events
        ]
        if (
            not wanted
            or flow.pk in seen
            or flow.status != Flow.Status.OPEN
            or not flow.reminder_enabled
            or flow.due_date is None
            or flow.due_date > today
            or flow.due_notified_at is not None
        ):
            continue
        seen.add(flow.pk)
        if not Flow.objects.filter(pk=flow.pk, due_notified_at__isnull=True).update(
            due_notified_at=now
        ):
            continue
        flow.due_notified_at = now
        payload = event_payload(event_type=EventType.FLOW_DUE, flow=flow, at=now)
        rows += [
            Delivery(
                subscription_id=sub.id,
                event_type=EventType.FLOW_DUE,
                flow_id=flow.pk,
                payload=payload,
                next_attempt_at=now,
            )
            for sub in wanted
        ]
    return rows


def flows_due_notify(*, now: datetime | None = None, limit: int = 200) -> int:
    """Mark open flows with a reminder that reached their due date (UTC) as notified and
    write their ``flow.due`` deliveries, in one transaction; returns how many flows.

    Exactly once across processes: on PostgreSQL the rows are locked with ``FOR UPDATE
    SKIP LOCKED`` (another process skips them, then sees them notified); on SQLite the
    transaction takes the write lock at its start (``transaction_mode`` IMMEDIATE), so
    two processes' scans run one after the other.
    """
    now = now or timezone.now()
    today = timezone.localdate(now)
    due = Flow.objects.filter(
        status=Flow.Status.OPEN,
        reminder_enabled=True,
        due_date__lte=today,
        due_notified_at__isnull=True,
    ).order_by("due_date", "id")
    if not due.exists():  # a plain read first, as in deliveries_claim
        return 0
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        flows = list(due[:limit])
        if not flows:
            return 0
        Flow.objects.filter(pk__in=[f.pk for f in flows], due_notified_at__isnull=True).update(
            due_notified_at=now
        )
        subscriptions = _subscriptions_of(f.user_id for f in flows)
        rows = [
            Delivery(
                subscription_id=subscription.id,
                event_type=EventType.FLOW_DUE,
                flow_id=flow.id,
                payload=event_payload(event_type=EventType.FLOW_DUE, flow=flow, at=now),
                next_attempt_at=now,
            )
            for flow in flows
            for subscription in subscriptions.get(flow.user_id, [])
            if EventType.FLOW_DUE in subscription.events
        ]
        if rows:
            Delivery.objects.bulk_create(rows)
    return len(flows)


# --- claims and outcomes -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """A delivery one process holds until ``locked_until``: what it needs to send it."""

    delivery_id: uuid.UUID
    webhook_id: str
    subscription_id: uuid.UUID
    url: str
    secret: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime
    lease_token: uuid.UUID


def deliveries_claim(*, limit: int, now: datetime | None = None) -> list[Claim]:
    """Claim up to ``limit`` due deliveries for ``WEBHOOK_LEASE_SECONDS``, in one short
    transaction (PostgreSQL: ``FOR UPDATE SKIP LOCKED``; SQLite: the write lock taken at
    ``BEGIN``). Due deliveries of a paused subscription are given up instead."""
    now = now or timezone.now()
    due = (
        Delivery.objects.filter(status=Delivery.Status.PENDING, next_attempt_at__lte=now)
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lte=now))
        .order_by("next_attempt_at")
    )
    # A plain read first: most rounds find nothing, and then take no lock (on SQLite the
    # transaction below takes the database's write lock at BEGIN).
    if not due.exists():
        return []
    with transaction.atomic():
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True)
        ids = list(due.values_list("id", flat=True)[:limit])
        if not ids:
            return []
        token = uuid.uuid4()
        Delivery.objects.filter(pk__in=ids).update(
            locked_until=now + timedelta(seconds=settings.WEBHOOK_LEASE_SECONDS),
            lease_token=token,
        )
        claims, paused = [], []
        for delivery in Delivery.objects.filter(pk__in=ids).select_related("subscription"):
            subscription = delivery.subscription
            if not subscription.active:
                paused.append(delivery.pk)
                continue
            claims.append(
                Claim(
                    delivery_id=delivery.pk,
                    webhook_id=delivery.webhook_id,
                    subscription_id=subscription.pk,
                    url=subscription.url,
                    secret=subscription.secret,
                    payload=delivery.payload,
                    attempts=delivery.attempts,
                    created_at=delivery.created_at,
                    lease_token=token,
                )
            )
        if paused:
            Delivery.objects.filter(pk__in=paused).update(
                status=Delivery.Status.FAILED,
                locked_until=None,
                lease_token=None,
                last_error="subscription paused",
            )
    return claims


def retry_delay(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (``WEBHOOK_RETRY_SCHEDULE``,
    its last step repeating)."""
    schedule = settings.WEBHOOK_RETRY_SCHEDULE or [60.0]
    return schedule[min(attempts, len(schedule)) - 1]


def delivery_record(
    *,
    claim: Claim,
    started_at: datetime,
    duration_ms: int,
    status_code: int | None,
    error: str,
    now: datetime | None = None,
) -> str:
    """Store one attempt's outcome; returns ``delivered``, ``retry``, ``failed`` (given
    up after ``WEBHOOK_MAX_AGE_SECONDS``) or ``lease_lost`` (another process claimed it
    meanwhile: the attempt is kept, the delivery left to that process)."""
    now = now or timezone.now()
    succeeded = status_code is not None and 200 <= status_code < 300
    attempts = claim.attempts + 1
    changes: dict[str, Any] = {
        "attempts": attempts,
        "last_status_code": status_code,
        "last_error": error[:300],
        "locked_until": None,
        "lease_token": None,
    }
    if succeeded:
        outcome = "delivered"
        changes.update(status=Delivery.Status.DELIVERED, delivered_at=now)
    else:
        retry_at = now + timedelta(seconds=retry_delay(attempts))
        give_up_at = claim.created_at + timedelta(seconds=settings.WEBHOOK_MAX_AGE_SECONDS)
        if retry_at > give_up_at:
            outcome = "failed"
            changes.update(status=Delivery.Status.FAILED)
        else:
            outcome = "retry"
            changes.update(next_attempt_at=retry_at)
    with transaction.atomic():
        held = Delivery.objects.filter(
            pk=claim.delivery_id, lease_token=claim.lease_token, status=Delivery.Status.PENDING
        ).update(**changes)
        DeliveryAttempt.objects.create(
            delivery_id=claim.delivery_id,
            number=attempts,
            started_at=started_at,
            duration_ms=duration_ms,
            status_code=status_code,
            error=error[:300],
            succeeded=succeeded,
        )
    return outcome if held else "lease_lost"


def deliveries_retry_now(*, delivery_ids: Iterable[uuid.UUID]) -> int:
    """Make pending or given-up deliveries due now (the admin's "retry now"); returns how
    many. One being sent right now is left alone. A given-up delivery older than
    ``WEBHOOK_MAX_AGE_SECONDS`` gets one more attempt."""
    now = timezone.now()
    return (
        Delivery.objects.filter(
            pk__in=list(delivery_ids),
            status__in=[Delivery.Status.PENDING, Delivery.Status.FAILED],
        )
        .filter(Q(locked_until__isnull=True) | Q(locked_until__lte=now))
        .update(status=Delivery.Status.PENDING, next_attempt_at=now, lease_token=None)
    )


def deliveries_prune(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Delete up to ``limit`` delivered or given-up deliveries (with their attempts) older
    than ``WEBHOOK_RETENTION_DAYS``; returns how many deliveries. Pending ones are kept."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.WEBHOOK_RETENTION_DAYS)
    ids = list(
        Delivery.objects.filter(
            status__in=[Delivery.Status.DELIVERED, Delivery.Status.FAILED], created_at__lt=cutoff
        ).values_list("pk", flat=True)[:limit]
    )
    if not ids:
        return 0
    with transaction.atomic():
        DeliveryAttempt.objects.filter(delivery_id__in=ids).delete()
        return Delivery.objects.filter(pk__in=ids).delete()[0]
