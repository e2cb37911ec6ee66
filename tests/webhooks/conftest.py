"""Webhook test helpers: subscriptions and flow changes announced as the flows app does."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from flows.models import Flow, FlowEvent
from flows.signals import flow_events_recorded
from webhooks.models import Subscription
from webhooks.services import new_secret

ALL_EVENTS = ["flow.created", "flow.updated", "flow.done", "flow.due"]


def make_subscription(user: Any, url: str = "http://127.0.0.1:9/hook", **fields: Any):
    fields.setdefault("events", ALL_EVENTS)
    return Subscription.objects.create(user=user, url=url, secret=new_secret(), **fields)


def record(flow: Flow, kind: str = "created", changes: dict | None = None, **fields: Any):
    """Store one flow history entry and send ``flow_events_recorded`` inside the same
    transaction, as the flows services do."""
    with transaction.atomic():
        event = FlowEvent.objects.create(
            flow=flow,
            user_id=flow.user_id,
            kind=kind,
            actor=fields.pop("actor", "user"),
            changes=changes or {},
            **fields,
        )
        flow_events_recorded.send(sender=FlowEvent, events=[event])
    return event
