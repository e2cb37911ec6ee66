"""Writes for flows: store extracted drafts (each on its own, no duplicates), update, delete."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction

from core.errors import InvalidRequest
from flows.extraction import FlowDraft, title_key
from flows.models import Flow

logger = logging.getLogger(__name__)


def flows_store(
    *,
    user_id: int,
    context_id: Any,
    conversation_id: Any,
    source_message_id: Any,
    drafts: Iterable[FlowDraft],
) -> list[Flow]:
    """Store the drafts extracted after the assistant reply ``source_message_id``.

    Each draft is stored in its own savepoint, so one failure does not stop the others; a
    draft whose title matches an open flow of the same context is skipped (the database's
    partial unique index decides, so concurrent turns cannot store it twice either).
    """
    stored: list[Flow] = []
    for draft in drafts:
        key = title_key(draft.title)
        if Flow.objects.filter(
            context_id=context_id, title_key=key, status=Flow.Status.OPEN
        ).exists():
            continue
        try:
            with transaction.atomic():
                flow = Flow.objects.create(
                    user_id=user_id,
                    context_id=context_id,
                    conversation_id=conversation_id,
                    source_message_id=source_message_id,
                    title=draft.title,
                    title_key=key,
                    description=draft.description,
                    priority=draft.priority,
                    due_date=draft.due_date,
                )
        except IntegrityError:
            continue
        except Exception:
            logger.warning(
                "flows.store_failed", extra={"message_id": str(source_message_id)}, exc_info=True
            )
            continue
        stored.append(flow)
    return stored


_DUPLICATE = "An open flow with this title already exists in this context."


def flow_update(*, flow: Flow, data: dict[str, Any]) -> Flow:
    """Update a flow's fields (e.g. ``{"status": "done"}``)."""
    for field in ("title", "description", "priority", "due_date", "reminder_enabled", "status"):
        if field in data:
            setattr(flow, field, data[field])
    flow.title_key = title_key(flow.title)
    try:
        with transaction.atomic():
            flow.save()
    except IntegrityError as exc:
        raise InvalidRequest({"title": [_DUPLICATE]}) from exc
    return flow


def flow_delete(*, flow: Flow) -> None:
    flow.delete()
