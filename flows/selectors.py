"""Reads for flows, scoped to one user."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import DEFAULT_DB_ALIAS, connections
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


_LISTED_FIELDS = ("id", "title", "priority", "due_date", "status")


def flows_listed_query(*, context_id: uuid.UUID, now: datetime) -> QuerySet[Flow]:
    """The ORM form of :func:`flows_listed_for_extraction`'s statement (its reference:
    ``tests/flows/test_updates.py`` checks that both read the same rows)."""
    return (
        Flow.objects.filter(
            Q(status=Flow.Status.OPEN)
            | Q(status=Flow.Status.DONE, updated_at__gte=now - LISTED_DONE_FOR),
            context_id=context_id,
        )
        .order_by("-status", "-created_at", "-id")  # "open" sorts after "done"
        .values_list(*_LISTED_FIELDS)[:MAX_LISTED_FLOWS]
    )


#: The listing's statement per database vendor (:func:`_listed_sql`).
_LISTED_SQL: dict[str, str] = {}


def _listed_sql(quote: Any) -> str:
    """The listing's statement, from the model's own table and column names quoted by
    ``quote`` (values travel as parameters)."""
    meta = Flow._meta
    column = {
        name: quote(meta.get_field(name).column)
        for name in (*_LISTED_FIELDS, "context", "updated_at", "created_at")
    }
    return (
        f"SELECT {', '.join(column[name] for name in _LISTED_FIELDS)} "  # noqa: S608
        f"FROM {quote(meta.db_table)} WHERE {column['context']} = %s AND "
        f"({column['status']} = %s OR ({column['status']} = %s AND {column['updated_at']} >= %s)) "
        f"ORDER BY {column['status']} DESC, {column['created_at']} DESC, {column['id']} DESC "
        f"LIMIT {int(MAX_LISTED_FLOWS)}"
    )


def flows_listed_for_extraction(*, context_id: uuid.UUID, now: datetime) -> list[ListedFlow]:
    """The flows a context's extraction is shown (docs/api.md#flow-extraction): its open
    flows, then those done in the last :data:`LISTED_DONE_FOR`, newest first, at most
    :data:`~flows.extraction.MAX_LISTED_FLOWS`. One statement, on every turn's start.

    Plain SQL, like the turn's other hot statements (:mod:`core.sql`, which has no ``OR``
    nor ``ORDER BY``): the ORM built this query in about 800 µs of CPU, this runs in
    about 100 (SQLite, 2026-12). Built from the model's names (:func:`_listed_sql`);
    values prepared by the fields' public ``get_db_prep_value``; read back as the two
    backends return them (a UUID or its hex, a date or its ISO text).
    """
    connection = connections[DEFAULT_DB_ALIAS]
    meta = Flow._meta
    params = [
        meta.get_field("context").target_field.get_db_prep_value(context_id, connection),
        Flow.Status.OPEN.value,
        Flow.Status.DONE.value,
        meta.get_field("updated_at").get_db_prep_value(now - LISTED_DONE_FOR, connection),
    ]
    statement = _LISTED_SQL.get(connection.vendor)
    if statement is None:
        statement = _LISTED_SQL[connection.vendor] = _listed_sql(connection.ops.quote_name)
    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        rows = cursor.fetchall()
    return [
        ListedFlow(
            id=flow_id if isinstance(flow_id, uuid.UUID) else uuid.UUID(str(flow_id)),
            title=title,
            priority=priority,
            due_date=due if due is None or isinstance(due, date) else date.fromisoformat(due),
            status=status,
        )
        for flow_id, title, priority, due, status in rows
    ]


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
