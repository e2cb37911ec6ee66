"""Reads for flows, scoped to one user."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from core.errors import NotFound
from core.http import parse_uuid
from flows.extraction import MAX_LISTED_FLOWS, ListedFlow
from flows.models import Flow, FlowEvent
from flows.serializers import flow_update_to_dict

#: How long a done flow stays listed for extraction (so it can be reopened, and is not
#: extracted again from the messages that made it).
LISTED_DONE_FOR = timedelta(days=14)


def flow_list(
    *,
    user: AbstractBaseUser,
    context_id: uuid.UUID | None = None,
    status: str | None = None,
    priority: str | None = None,
) -> QuerySet[Flow]:
    qs = Flow.objects.filter(user=user)
    if context_id is not None:
        qs = qs.filter(context_id=context_id)
    if status:
        qs = qs.filter(status=status)
    if priority:
        qs = qs.filter(priority=priority)
    return qs.order_by("-created_at", "id")


def flow_get(*, user: AbstractBaseUser, flow_id: object) -> Flow:
    pk = parse_uuid(flow_id)
    flow = pk and Flow.objects.filter(user=user, pk=pk).first()
    if not flow:
        raise NotFound("Flow not found.")
    return flow


def flows_of_message(*, message_id: uuid.UUID) -> list[Flow]:
    """The flows a reply's extraction stored (for ``flows_extracted`` on resume)."""
    return list(Flow.objects.filter(source_message_id=message_id).order_by("created_at", "id"))


def flows_listed_for_extraction(*, context_id: uuid.UUID, now: datetime) -> list[ListedFlow]:
    """The flows a context's extraction is shown (docs/api.md#flow-extraction): its open
    flows, then those done in the last :data:`LISTED_DONE_FOR`, newest first, at most
    :data:`~flows.extraction.MAX_LISTED_FLOWS`. One statement."""
    rows = (
        Flow.objects.filter(
            Q(status=Flow.Status.OPEN)
            | Q(status=Flow.Status.DONE, updated_at__gte=now - LISTED_DONE_FOR),
            context_id=context_id,
        )
        .order_by("-status", "-created_at", "id")  # "open" sorts after "done"
        .values_list("id", "title", "priority", "due_date", "status")[:MAX_LISTED_FLOWS]
    )
    return [ListedFlow(*row) for row in rows]


def flow_events(*, user: AbstractBaseUser, flow_id: object) -> QuerySet[FlowEvent]:
    """A flow's history, oldest first (404 unless the flow is the user's)."""
    flow = flow_get(user=user, flow_id=flow_id)
    return FlowEvent.objects.filter(flow=flow, user=user).order_by("created_at", "id")


def flow_updates_of_message(*, message_id: uuid.UUID) -> list[dict[str, Any]]:
    """The changes a reply's extraction made to existing flows, as ``flows_extracted``'s
    ``updated`` items (for the event on resume): ``{"id", "changes", "flow"}``."""
    events = (
        FlowEvent.objects.filter(source_message_id=message_id)
        .exclude(kind=FlowEvent.Kind.CREATED)
        .select_related("flow")
        .order_by("created_at", "id")
    )
    return [flow_update_to_dict(event.flow, event.changes) for event in events]
