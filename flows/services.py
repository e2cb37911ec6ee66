"""Writes for flows: store extracted drafts (each on its own, no duplicates), apply the
changes an extraction found, update, delete; each change recorded as a
:class:`~flows.models.FlowEvent` (docs/api.md#flow-history) and announced with
:data:`flows.signals.flow_events_recorded` inside the writing transaction."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import IntegrityError, transaction

from core.errors import InvalidRequest
from flows.extraction import FlowDraft, FlowUpdate, title_key
from flows.models import Flow, FlowEvent
from flows.signals import flow_events_recorded

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
    if stored:
        flow_events_record(
            [
                _event(flow, FlowEvent.Kind.CREATED, _created_changes(flow), source_message_id)
                for flow in stored
            ]
        )
    return stored


#: The fields a ``created`` event records.
_CREATED_FIELDS = ("title", "description", "priority", "due_date", "reminder_enabled", "status")


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


def _created_changes(flow: Flow) -> dict[str, Any]:
    return {name: _json_value(getattr(flow, name)) for name in _CREATED_FIELDS}


def _kind(changes: dict[str, Any]) -> str:
    """An event's kind by what changed: the status decides, else ``updated``."""
    status = changes.get("status")
    if status == Flow.Status.DONE:
        return FlowEvent.Kind.DONE
    if status == Flow.Status.OPEN:
        return FlowEvent.Kind.REOPENED
    return FlowEvent.Kind.UPDATED


def _event(
    flow: Flow, kind: str, changes: dict[str, Any], source_message_id: Any = None
) -> FlowEvent:
    actor = FlowEvent.Actor.EXTRACTION if source_message_id else FlowEvent.Actor.USER
    return FlowEvent(
        flow=flow,
        user_id=flow.user_id,
        kind=kind,
        actor=actor,
        source_message_id=source_message_id,
        changes=changes,
    )


def flow_events_record(events: Sequence[FlowEvent]) -> list[FlowEvent]:
    """Store ``events`` (one INSERT) and send :data:`flow_events_recorded` with them, in the
    caller's transaction (the webhooks outbox is written by its receiver)."""
    events = list(events)
    if not events:
        return events
    with transaction.atomic():
        FlowEvent.objects.bulk_create(events)
        flow_events_recorded.send(sender=FlowEvent, events=events)
    return events


def _apply(flow: Flow, changes: dict[str, Any]) -> dict[str, Any]:
    """Set ``changes`` on ``flow`` where they differ; the changed fields' new values (JSON)."""
    changed: dict[str, Any] = {}
    for name, value in changes.items():
        if getattr(flow, name) != value:
            setattr(flow, name, value)
            changed[name] = _json_value(value)
    if "title" in changed:
        flow.title_key = title_key(flow.title)
    if "due_date" in changed:
        flow.due_notified_at = None  # a new due date is reminded of again
    return changed


def flows_apply_updates(
    *,
    user_id: int,
    context_id: Any,
    source_message_id: Any,
    updates: Sequence[FlowUpdate],
) -> list[tuple[Flow, dict[str, Any]]]:
    """Apply the changes the extraction after the reply ``source_message_id`` found, each
    to a flow of ``user_id`` in ``context_id`` only (any other id changes nothing), and
    record an event per changed flow (actor ``extraction``). Call it inside the turn's
    transaction.

    Each flow is changed in its own savepoint: a retitle that collides with another open
    flow's title (the partial unique index) is skipped, the other changes stay. Returns
    the changed flows with their changes (field: new value, JSON-ready).
    """
    if not updates:
        return []
    by_id: dict[uuid.UUID, dict[str, Any]] = {}
    for update in updates:
        by_id.setdefault(update.flow_id, dict(update.changes))
    flows = Flow.objects.select_for_update().filter(
        user_id=user_id, context_id=context_id, pk__in=list(by_id)
    )
    order = {pk: index for index, pk in enumerate(by_id)}
    applied: list[tuple[Flow, dict[str, Any]]] = []
    for flow in sorted(flows, key=lambda f: order[f.pk]):
        allowed = {k: v for k, v in by_id[flow.pk].items() if k in _UPDATABLE}
        changed = _apply(flow, allowed)
        if not changed:
            continue
        try:
            with transaction.atomic():
                flow.save(update_fields=[*_saved_fields(changed), "updated_at"])
        except IntegrityError:
            continue
        applied.append((flow, changed))
    flow_events_record(
        [_event(flow, _kind(changed), changed, source_message_id) for flow, changed in applied]
    )
    return applied


#: The fields the extraction may change.
_UPDATABLE = ("status", "title", "priority", "due_date")


def _saved_fields(changed: dict[str, Any]) -> list[str]:
    fields = list(changed)
    if "title" in changed:
        fields.append("title_key")
    if "due_date" in changed:
        fields.append("due_notified_at")
    return fields


@dataclass(slots=True)
class AppliedFlows:
    """What a turn's extraction changed: the flows it created, and the flows it changed
    with their changes (field: new value, JSON-ready)."""

    created: list[Flow] = field(default_factory=list)
    updated: list[tuple[Flow, dict[str, Any]]] = field(default_factory=list)


def flows_apply_extraction(
    *,
    user_id: int,
    context_id: Any,
    conversation_id: Any,
    source_message_id: Any,
    drafts: Iterable[FlowDraft],
    updates: Sequence[FlowUpdate],
) -> AppliedFlows:
    """Store the new flows, then apply the changes (so a task re-extracted from an earlier
    message is not stored again just because this turn marked it done). In the caller's
    transaction; see :func:`flows_store` and :func:`flows_apply_updates`."""
    created = flows_store(
        user_id=user_id,
        context_id=context_id,
        conversation_id=conversation_id,
        source_message_id=source_message_id,
        drafts=drafts,
    )
    updated = flows_apply_updates(
        user_id=user_id,
        context_id=context_id,
        source_message_id=source_message_id,
        updates=updates,
    )
    return AppliedFlows(created=created, updated=updated)


_DUPLICATE = "An open flow with this title already exists in this context."


def flow_update(*, flow: Flow, data: dict[str, Any]) -> Flow:
    """Update a flow's fields (e.g. ``{"status": "done"}``) for its user, and record what
    changed as an event (actor ``user``: ``done``, ``reopened`` or ``updated``)."""
    changes = {
        name: data[name]
        for name in ("title", "description", "priority", "due_date", "reminder_enabled", "status")
        if name in data
    }
    changed = _apply(flow, changes)
    fields = [*changed, "updated_at"]
    if "title" in changed:
        fields.append("title_key")
    if "due_date" in changed:
        fields.append("due_notified_at")
    try:
        with transaction.atomic():
            # Only what changed: a full save would write back a due_notified_at read before
            # the due scan set it, and flow.due would fire twice.
            flow.save(update_fields=fields)
            if changed:
                flow_events_record([_event(flow, _kind(changed), changed)])
    except IntegrityError as exc:
        raise InvalidRequest({"title": [_DUPLICATE]}) from exc
    return flow


def flow_delete(*, flow: Flow) -> None:
    flow.delete()
