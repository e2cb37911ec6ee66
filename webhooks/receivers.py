"""The flows signal, turned into outbox rows in the same transaction."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from flows.models import FlowEvent
from flows.signals import flow_events_recorded
from webhooks.services import deliveries_for_flow_events


@receiver(flow_events_recorded, dispatch_uid="webhooks.flow_events_to_outbox")
def flow_events_to_outbox(sender: Any, events: list[FlowEvent], **kwargs: Any) -> None:
    """Write the deliveries of the stored flow history entries (docs/api.md#webhooks)."""
    deliveries_for_flow_events(events=events)
