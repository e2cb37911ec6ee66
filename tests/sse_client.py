"""SSE reading helpers for tests: a real client (httpx-sse) and a raw socket reader."""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from httpx_sse import connect_sse


@dataclass
class Event:
    id: str
    event: str
    data: dict[str, Any]


@dataclass
class StreamResult:
    status_code: int
    headers: httpx.Headers
    events: list[Event] = field(default_factory=list)
    body: Any = None
    retry: int | None = None

    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def text(self) -> str:
        return "".join(e.data["content"] for e in self.events if e.event == "chunk")

    def first(self, name: str) -> Event:
        return next(e for e in self.events if e.event == name)

    def last(self) -> Event:
        return self.events[-1]


def stream(
    method: str,
    url: str,
    *,
    token: str | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    stop_after: int | None = None,
) -> StreamResult:
    """Run one SSE request with httpx-sse; ``stop_after`` disconnects after N events."""
    all_headers = {"Accept": "text/event-stream", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Token {token}"
    with (
        httpx.Client(timeout=timeout) as client,
        connect_sse(client, method, url, json=json_body, headers=all_headers) as source,
    ):
        response = source.response
        result = StreamResult(response.status_code, response.headers)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            result.body = response.json() if response.content else None
            return result
        for sse in source.iter_sse():
            if sse.data == "" and sse.event == "message":
                # httpx-sse reports the bare ``retry:`` block; browsers dispatch nothing.
                result.retry = sse.retry
                continue
            result.events.append(Event(sse.id, sse.event, json.loads(sse.data)))
            if stop_after is not None and len(result.events) >= stop_after:
                break
    return result


@dataclass
class RawRead:
    """Bytes of a response body as they arrived, with arrival times."""

    head: bytes
    pieces: list[tuple[float, bytes]]

    @property
    def body(self) -> bytes:
        return dechunk(b"".join(p for _, p in self.pieces))


def dechunk(data: bytes) -> bytes:
    """Decode an HTTP/1.1 chunked body (tolerating a cut at the end)."""
    out = bytearray()
    while data:
        line, sep, rest = data.partition(b"\r\n")
        if not sep:
            break
        size = int(line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)


def raw_post(url: str, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> RawRead:
    """POST over a plain socket and record when each piece of the body arrived."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=timeout)
    lines = [
        f"POST {parts.path} HTTP/1.1",
        f"Host: {parts.hostname}:{parts.port}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    buffer = b""
    pieces: list[tuple[float, bytes]] = []
    head = b""
    deadline = time.monotonic() + timeout
    with sock:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            now = time.monotonic()
            if not head:
                buffer += data
                if b"\r\n\r\n" in buffer:
                    head, _, rest = buffer.partition(b"\r\n\r\n")
                    if rest:
                        pieces.append((now, rest))
            else:
                pieces.append((now, data))
            if pieces and pieces[-1][1].endswith(b"0\r\n\r\n"):
                break
    return RawRead(head, pieces)
