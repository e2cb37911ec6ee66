"""WebSocket text frames: the only place that encodes a reply's events for the socket.

A stream event is ``{"type": <event>, "id": <event id>, ...data}`` (a ``chunk``:
``{"type": "chunk", "id": N, "content": "..."}``); a problem before a stream starts is
``{"type": "error", "code", "detail", "status", "request", ...data}``, without ``id``
(docs/api.md#websocket). A frame is valid UTF-8: a lone surrogate in a reply travels as
a ``\\u`` escape, as in SSE.
"""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from conversations.streaming.events import CHUNK
from core.errors import ServiceError

_dumps = DjangoJSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_dumps_ascii = DjangoJSONEncoder(ensure_ascii=True, separators=(",", ":")).encode
_dumps_text = json.JSONEncoder(ensure_ascii=False).encode


def encode_json(body: Any) -> str:
    """``body`` as a text frame: compact JSON, pure ASCII only if it is not valid UTF-8."""
    payload = _dumps(body)
    try:
        payload.encode()
    except UnicodeEncodeError:
        return _dumps_ascii(body)
    return payload


def encode_ws_event(event_id: int, event: str, data: Any) -> str:
    """One stream event as a text frame: ``{"type": event, "id": event_id, ...data}``."""
    if event is CHUNK:  # the per-token path: one string encode, no dict
        payload = f'{{"type":"chunk","id":{event_id},"content":{_dumps_text(data)}}}'
        try:
            payload.encode()
        except UnicodeEncodeError:
            return _dumps_ascii({"type": "chunk", "id": event_id, "content": data})
        return payload
    return encode_json({"type": event, "id": event_id, **data})


def encode_error(exc: ServiceError, request: str) -> str:
    """A problem before any stream, as a frame: the error body, its HTTP status (the same
    as the HTTP transports answer), the client message's type, and ``retry_after`` when
    the error says ``Retry-After``."""
    body: dict[str, Any] = {
        "type": "error",
        **exc.as_body(),
        "status": exc.status_code,
        "request": request,
    }
    retry_after = exc.headers.get("Retry-After")
    if retry_after and retry_after.isdigit():
        body.setdefault("retry_after", int(retry_after))
    return encode_json(body)
