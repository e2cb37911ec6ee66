"""Reads for flows, scoped to one user."""

from __future__ import annotations

import uuid

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from core.errors import NotFound
from core.http import parse_uuid
from flows.models import Flow


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
