"""A conversation as a download (docs/api.md#export): Markdown or JSON, streamed.

The messages are read in pages by keyset (``created_at, id`` after the last one sent,
:data:`EXPORT_PAGE_SIZE` at a time) and each page is rendered and sent before the next
is read, so a long conversation is never held in memory whole. Under ASGI (daphne) the
response iterates :func:`export_chunks_async`, whose pages are read on the database pool
(core/db.py); a synchronous server iterates :func:`export_chunks`. Both run the same
:class:`Exporter`.

- ``json``: one JSON document, ``{"conversation": {...}, "context": {...},
  "exported_at": ..., "messages": [...]}``; every message, superseded ones included and
  marked (``"superseded": true``), with ``reply_to_id``.
- ``md``: the conversation as it reads now: a heading, then each message under a
  ``### User``/``### Assistant``/``### System`` heading with its time; superseded
  messages are left out (the JSON export has them). Message text is copied as it is.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from conversations.models import Conversation, Message
from conversations.serializers import message_to_dict
from core.db import db_run

EXPORT_FORMATS = ["md", "json"]
EXPORT_PAGE_SIZE = 100
CONTENT_TYPES = {"md": "text/markdown; charset=utf-8", "json": "application/json"}

Cursor = tuple[datetime, uuid.UUID]


def export_page(
    *, conversation_id: uuid.UUID, after: Cursor | None, limit: int, include_superseded: bool
) -> list[Message]:
    """Up to ``limit`` messages of a conversation after ``after``, oldest first."""
    qs = Message.objects.filter(conversation_id=conversation_id)
    if not include_superseded:
        qs = qs.filter(superseded=False)
    if after is not None:
        created_at, pk = after
        qs = qs.filter(Q(created_at__gt=created_at) | Q(created_at=created_at, id__gt=pk))
    return list(qs.order_by("created_at", "id")[:limit])


def export_filename(conversation: Conversation, fmt: str) -> str:
    """``<title-slug>-<date>.<fmt>``, or ``conversation-<id>-<date>.<fmt>`` untitled."""
    name = slugify(conversation.title)[:60].strip("-") or f"conversation-{conversation.id}"
    return f"{name}-{timezone.now():%Y-%m-%d}.{fmt}"


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class Exporter:
    """Renders one export: :meth:`head`, :meth:`page` for each page, :meth:`tail`."""

    def __init__(self, conversation: Conversation, fmt: str) -> None:
        self.conversation = conversation
        self.fmt = fmt
        self.include_superseded = fmt == "json"
        self.after: Cursor | None = None
        self.first = True
        self.pages = 0
        self.count = 0

    def head(self) -> bytes:
        c = self.conversation
        if self.fmt == "json":
            head = {
                "conversation": {
                    "id": str(c.id),
                    "context_id": str(c.context_id),
                    "title": c.title,
                    "created_at": _iso(c.created_at),
                    "updated_at": _iso(c.updated_at),
                },
                "context": {"id": str(c.context_id), "name": c.context.name},
                "exported_at": _iso(timezone.now()),
            }
            return (json.dumps(head, ensure_ascii=False)[:-1] + ', "messages": [').encode()
        lines = [
            f"# {c.title or 'Conversation'}",
            "",
            f"- Context: {c.context.name}",
            f"- Started: {_iso(c.created_at)}",
            f"- Exported: {_iso(timezone.now())}",
            "",
        ]
        return "\n".join(lines).encode()

    def page(self, messages: list[Message]) -> bytes:
        """One page rendered; remembers where the next one starts."""
        self.pages += 1
        self.count += len(messages)
        self.after = (messages[-1].created_at, messages[-1].id)
        if self.fmt == "json":
            parts = []
            for m in messages:
                item = message_to_dict(m)
                item["superseded"] = m.superseded
                item["reply_to_id"] = str(m.reply_to_id) if m.reply_to_id else None
                parts.append(("" if self.first else ",") + json.dumps(item, ensure_ascii=False))
                self.first = False
            return "".join(parts).encode()
        parts = []
        for m in messages:
            heading = f"### {m.role.capitalize()} · {m.created_at:%Y-%m-%d %H:%M:%S} UTC"
            if m.model:
                heading += f" · {m.model}"
            if m.status != Message.Status.COMPLETE:
                heading += f" · {m.status}"
            parts.append(f"\n{heading}\n\n{m.content}\n")
        return "".join(parts).encode()

    def tail(self) -> bytes:
        return b"]}\n" if self.fmt == "json" else b""

    def page_kwargs(self) -> dict:
        return {
            "conversation_id": self.conversation.id,
            "after": self.after,
            "limit": EXPORT_PAGE_SIZE,
            "include_superseded": self.include_superseded,
        }


def export_chunks(exporter: Exporter) -> Iterator[bytes]:
    """The export, a page at a time, reading in this thread."""
    yield exporter.head()
    while True:
        messages = export_page(**exporter.page_kwargs())
        last = len(messages) < EXPORT_PAGE_SIZE
        chunk = exporter.page(messages) if messages else b""
        del messages  # this page's rows go before the next page is read
        if chunk:
            yield chunk
        del chunk
        if last:
            break
    yield exporter.tail()


async def export_chunks_async(exporter: Exporter) -> AsyncIterator[bytes]:
    """The export, a page at a time, each page read on the database pool."""
    yield exporter.head()
    while True:
        messages = await db_run(export_page, **exporter.page_kwargs())
        last = len(messages) < EXPORT_PAGE_SIZE
        chunk = exporter.page(messages) if messages else b""
        del messages  # this page's rows go before the next page is read
        if chunk:
            yield chunk
        del chunk
        if last:
            break
    yield exporter.tail()
