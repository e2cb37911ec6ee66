"""The events of a reply: their ids, their order, their payloads. Pure: no I/O.

Every source of a reply's events (a generation of this process, :mod:`.live`; the
database, :mod:`.stored`; another process through the channel layer, :mod:`.remote`)
yields :class:`Event` objects built here, and every transport (:mod:`.transports.sse`,
:mod:`.transports.ws`) encodes them. Event ids let a client resume exactly
(docs/api.md#event-ids). They are integers that encode the position in the reply, so a
replay that merges several missed chunks into one stays exact:

- ``1`` ``metadata``, ``2`` ``typing`` start, and ``2`` again for a ``failover``
  (docs/api.md#routing: a notice before any text, about the route, not a position in the
  reply; a client that resumes from ``2`` does not get it again);
- a ``chunk`` ending at character offset ``n`` of the reply has id ``2 + n``;
- the trailing events (``typing`` stop, then ``flows_extracted`` and ``done``, or
  ``error``) of a reply of length ``L`` have ids ``2 + L + 1``, ``2 + L + 2``, ...

A client that sends ``Last-Event-ID: k`` has what :class:`Cursor` says: the preamble
events up to ``k``, the first ``k - 2`` characters, the trailing events up to ``k``.
Offsets count Python characters (code points); clients never compute them, they only
echo the id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from ai.providers.base import Usage
from conversations.models import Message
from core.errors import error_kind

METADATA_ID = 1
TYPING_START_ID = 2
TEXT_BASE = 2
#: A ``failover`` event's id: the position it happens at (before any text).
FAILOVER_ID = TYPING_START_ID

#: The event names whose data is not a dict (transports compare them with ``is``).
CHUNK = "chunk"
KEEP_ALIVE = "keep-alive"

TYPING_STOP: tuple[str, dict[str, Any]] = ("typing", {"status": "stop"})


class Event(NamedTuple):
    """One event of a reply, as every source yields it and every transport encodes it.

    ``data`` is a dict, except for a ``chunk`` (the text delta itself, a ``str``: no dict
    on the per-token path) and :data:`KEEPALIVE_EVENT` (``None``).
    """

    id: int
    name: str
    data: Any


#: The source was silent for ``CHAT_KEEPALIVE_SECONDS`` (id 0; a transport may drop it).
KEEPALIVE_EVENT = Event(0, KEEP_ALIVE, None)

#: A trailing event before it has an id: ``(name, data)``.
Trailing = tuple[str, dict[str, Any]]


def parse_last_event_id(raw: str | None) -> int:
    """The client's ``Last-Event-ID`` as an int (0 when missing or malformed)."""
    if not raw:
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        return 0
    return max(value, 0)


def trailing_event_id(length: int, position: int) -> int:
    """The id of the trailing event at ``position`` after a reply of ``length`` characters."""
    return TEXT_BASE + length + 1 + position


class Cursor:
    """What one client has of a reply, and so which events it still needs (the resume
    arithmetic, for every source).

    ``offset`` is how many characters of the reply the client has, ``last_event_id`` the
    newest id it has; both advance as events are made. A source feeds the cursor what it
    learns of the reply (its metadata, pieces of its text at their character offsets, its
    trailing events) and yields what the cursor returns, in that order.
    """

    __slots__ = ("last_event_id", "offset")

    def __init__(self, last_event_id: int = 0) -> None:
        self.last_event_id = last_event_id
        self.offset = max(0, last_event_id - TEXT_BASE)

    def preamble(
        self, metadata: dict[str, Any], failovers: Iterable[dict[str, Any]] = ()
    ) -> list[Event]:
        """``metadata``, ``typing`` start and the ``failover`` events so far, unless the
        client has them."""
        events: list[Event] = []
        if self.last_event_id < METADATA_ID:
            events.append(Event(METADATA_ID, "metadata", metadata))
        if self.last_event_id < TYPING_START_ID:
            events.append(Event(TYPING_START_ID, "typing", {"status": "start"}))
            events.extend(Event(FAILOVER_ID, "failover", data) for data in failovers)
        return events

    def text(self, start: int, text: str) -> Event | None:
        """``text`` found at character ``start`` of the reply (``start`` no later than the
        client's ``offset``): the part the client lacks, as one chunk, or ``None``.

        A checkpoint is the text from 0; a live or relayed piece starts where the last
        one ended. The chunk's id is ``2 +`` the offset where it ends.
        """
        end = start + len(text)
        offset = self.offset
        if end <= offset:
            return None
        self.offset = end
        return Event(TEXT_BASE + end, CHUNK, text[offset - start :] if offset > start else text)

    def text_lost(self, length: int) -> None:
        """The reply's final text is ``length`` characters, shorter than what the client has
        (an interrupted reply: the crash lost text that had been sent): the client has
        none of the trailing events, whatever its id said."""
        if self.offset > length:
            self.last_event_id = min(self.last_event_id, TEXT_BASE + length)

    def trailing(self, length: int, events: Iterable[Trailing], start: int = 0) -> list[Event]:
        """The trailing events at positions ``start``, ``start + 1``, ... of a reply of
        ``length`` characters that the client lacks."""
        out: list[Event] = []
        for position, (name, data) in enumerate(events, start):
            event_id = trailing_event_id(length, position)
            if event_id > self.last_event_id:
                self.last_event_id = event_id
                out.append(Event(event_id, name, data))
        return out


def error_data(code: str, retryable: bool | None = None) -> dict[str, Any]:
    """The ``error`` event's data for a code of the catalog (never provider internals).

    ``retryable`` is the case's own hint when it differs from the code's (a cut stream is
    a retryable ``ai_error``); an unknown code is reported as ``internal_error``.
    """
    kind = error_kind(code)
    return {
        "code": kind.code,
        "message": kind.message,
        "retryable": kind.retryable if retryable is None else retryable,
    }


def failover_data(source: Any, target: Any, code: str) -> dict[str, Any]:
    """The ``failover`` event's data (docs/api.md#routing): the routes (objects with
    ``provider`` and ``model``) it moved from and to, and the failure's code."""
    return {
        "from": {"provider": source.provider, "model": source.model},
        "to": {"provider": target.provider, "model": target.model},
        "code": code,
    }


def usage_to_dict(usage: Usage) -> dict[str, Any]:
    """The ``usage`` object of the ``done`` event, the stored message and the JSON answer
    (docs/api.md#usage): tokens by kind, ``estimated``, and ``cost`` as a decimal string
    in ``currency``."""
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "estimated": usage.estimated,
        "cost": f"{usage.cost:f}",
        "currency": usage.currency,
    }


def trailing_events(
    *,
    message_id: str,
    status: str,
    finish_reason: str,
    usage: Usage,
    error_code: str,
    error_retryable: bool | None,
    flows: list[dict[str, Any]],
    quota: dict[str, Any],
    provider: str = "",
    model: str = "",
    updated: list[dict[str, Any]] | None = None,
    title: str = "",
    conversation_id: str = "",
) -> list[Trailing]:
    """The events after ``typing`` stop, by how the reply ended (live and replayed alike).

    complete: ``flows_extracted`` (the new ``flows`` and the ``updated`` ones:
    docs/api.md#flow-extraction), ``title`` when the turn named its conversation
    (docs/api.md#titles), then ``done``; cancelled: ``done``; otherwise ``error``.
    ``done`` names the ``provider`` and ``model`` that wrote the reply
    (docs/api.md#routing).
    """
    usage_data = usage_to_dict(usage)
    if status == Message.Status.COMPLETE:
        done = {
            "message_id": message_id,
            "finish_reason": finish_reason or "stop",
            "usage": usage_data,
            "quota": quota,
            "provider": provider,
            "model": model,
        }
        events: list[Trailing] = [("flows_extracted", {"flows": flows, "updated": updated or []})]
        if title:
            events.append(("title", {"conversation_id": conversation_id, "title": title}))
        events.append(("done", done))
        return events
    if status == Message.Status.CANCELLED:
        done = {
            "message_id": message_id,
            "finish_reason": "cancelled",
            "usage": usage_data,
            "quota": quota,
            "provider": provider,
            "model": model,
        }
        return [("done", done)]
    return [("error", error_data(error_code or "internal_error", error_retryable))]
