"""Server-Sent Events framing, and nothing else.

Every event is ``id:``, ``event:`` and one ``data:`` line holding a JSON object whose
``type`` equals the event name (contract 3.1). JSON escapes newlines and carriage returns,
so any text survives in one ``data:`` line.
"""

from __future__ import annotations

import json
from typing import Any

KEEPALIVE = b": keep-alive\n\n"

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
