"""Server-Sent Events: the only place that encodes a reply's events as SSE.

Every event is ``id:``, ``event:`` and one ``data:`` line holding a JSON object whose
``type`` equals the event name (docs/api.md#sse-events). JSON escapes newlines and
carriage returns, so any text survives in one ``data:`` line. A stream starts with a
``retry:`` line; a keep-alive is a comment line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse

from conversations.streaming.events import CHUNK, KEEP_ALIVE, Event

KEEPALIVE = b": keep-alive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def retry_line(milliseconds: int) -> bytes:
    """The ``retry:`` line a stream starts with (the client's reconnect delay)."""
    return f"retry: {int(milliseconds)}\n\n".encode()


def _frame(event_id: int, event: str, payload: str) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n".encode()


def encode_event(event_id: int, event: str, data: dict[str, Any]) -> bytes:
    """One SSE event as bytes; ``data`` gains ``type`` = ``event``."""
    body = {"type": event, **data}
    try:
        return _frame(event_id, event, _dumps(body))
    except UnicodeEncodeError:  # a lone surrogate: JSON's \\u escapes carry it as ASCII
        return _frame(event_id, event, _dumps_ascii(body))


def encode_chunk(event_id: int, content: str) -> bytes:
    """A ``chunk`` event (the hot path: one JSON string encode, no dict)."""
    try:
        return _frame(event_id, "chunk", '{"type":"chunk","content":' + _dumps(content) + "}")
    except UnicodeEncodeError:
        return encode_event(event_id, "chunk", {"content": content})


async def encode_stream(
    events: AsyncIterator[Event], *, on_disconnect: Callable[[], None] | None = None
) -> AsyncIterator[bytes]:
    """``events`` as SSE bytes, after the ``retry:`` line.

    When the client disconnects (the server cancels this generator), ``on_disconnect`` is
    called before the cancellation goes on (the turn's own stream: see
    ``Generation.client_gone``).
    """
    try:
        yield retry_line(settings.CHAT_SSE_RETRY_MS)
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for event_id, name, data in events:
                if name is CHUNK:
                    yield encode_chunk(event_id, data)
                elif name is KEEP_ALIVE:
                    yield KEEPALIVE
                else:
                    yield encode_event(event_id, name, data)
    except (asyncio.CancelledError, GeneratorExit):
        if on_disconnect is not None:
            on_disconnect()
        raise


def event_stream_response(
    events: AsyncIterator[Event], *, on_disconnect: Callable[[], None] | None = None
) -> StreamingHttpResponse:
    """An unbuffered SSE response of ``events`` (docs/api.md#sse-events: headers)."""
    return StreamingHttpResponse(
        encode_stream(events, on_disconnect=on_disconnect),
        content_type="text/event-stream",
        headers=HEADERS,
    )
