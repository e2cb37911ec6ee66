"""A small, cheap Server-Sent Events reader over a streamed HTTP response.

The SDKs parse every chunk into typed (pydantic) objects, which costs tens of
microseconds per chunk. The adapters keep the SDK for the request (auth, retries, status
errors) and read the body with this reader instead: bytes are split into lines, lines
into events, and each event's data is left as bytes for ``json.loads``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

#: How long a finished stream may take to end its body before its connection is dropped.
DRAIN_SECONDS = 0.05


async def iter_sse_events(response: Any) -> AsyncIterator[tuple[bytes, bytes]]:
    """Yield ``(event, data)`` per SSE event of a streamed ``httpx``/``httpx2`` response.

    ``event`` is ``b""`` when the event has no ``event:`` field. Multi-line ``data:``
    fields are joined with ``\\n`` as the SSE specification says; comments and other
    fields are ignored. An event not terminated by a blank line when the body ends is
    still yielded (some servers omit the last blank line).
    """
    buffer = b""
    event = b""
    data_lines: list[bytes] = []
    async for chunk in response.aiter_bytes():
        buffer = buffer + chunk if buffer else chunk
        if b"\n" not in buffer:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data_lines:
                    yield event, data_lines[0] if len(data_lines) == 1 else b"\n".join(data_lines)
                event = b""
                data_lines = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data_lines.append(value[1:] if value.startswith(b" ") else value)
            elif line.startswith(b"event:"):
                event = line[6:].strip()
            # ":" comments, "id:" and "retry:" fields are not used by the providers.
    if buffer.startswith(b"data:"):
        value = buffer[5:].rstrip(b"\r")
        data_lines.append(value[1:] if value.startswith(b" ") else value)
    if data_lines:
        yield event, b"\n".join(data_lines)


async def drain(events: AsyncIterator[Any], timeout: float = DRAIN_SECONDS) -> None:
    """Read what is left of a stream whose reply is complete, briefly.

    A response closed before its body ends takes its connection with it; read to the end
    (usually only the chunked body's terminator is left), the connection goes back to the
    SDK client's pool and the next turn skips a TCP (and TLS) handshake. A server that
    keeps the body open is given ``timeout``, then the connection is dropped.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(timeout):
            async for _ in events:
                pass
