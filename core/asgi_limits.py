"""An ASGI guard that refuses oversized request bodies before Django reads them.

Django's ASGI handler reads a whole body (spooling it to disk) before a view runs. This
refuses a too-large ``Content-Length`` at once, and stops a chunked body as soon as it
passes the limit, with a 413 JSON answer (``payload_too_large``).
"""

from __future__ import annotations

import json
from typing import Any

from core.errors import PayloadTooLarge

Scope = dict[str, Any]
Message = dict[str, Any]


class _TooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    """Wraps an ASGI app; HTTP bodies over the limit answer 413.

    ``limits`` maps path prefixes to their own limits (the chat endpoints take smaller
    bodies); any other path gets ``limit``.
    """

    def __init__(self, app: Any, limit: int, limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_limit = limit
        self.limits = sorted((limits or {}).items(), key=lambda item: -len(item[0]))

    def limit_for(self, path: str) -> int:
        """The byte limit of a request path."""
        for prefix, limit in self.limits:
            if path.startswith(prefix):
                return limit
        return self.default_limit

    async def _refuse(self, send: Any, limit: int) -> None:
        error = PayloadTooLarge(limit)
        body = json.dumps(error.as_body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": error.status_code,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_large = int(value) > limit
                except ValueError:
                    too_large = False
                if too_large:
                    await self._refuse(send, limit)
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, limit)
