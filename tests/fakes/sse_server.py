"""The HTTP machinery shared by the fake provider servers (stdlib only).

A :class:`FakeServer` listens on 127.0.0.1 on a free port and serves from a background
thread. It records every request (:class:`RecordedRequest`), so tests can assert what the
SDK sent, and notes when a client went away in the middle of a stream
(:attr:`FakeServer.disconnected`). Responses are written with HTTP/1.1 chunked transfer
encoding, one chunk per SSE event and flushed, like the real APIs; :meth:`Writer.drop`
cuts the connection without the terminating chunk (a dropped stream).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class RecordedRequest:
    """One request the fake server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    #: The client's port: two requests with the same one came on one kept-alive connection.
    client_port: int = 0

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class ClientGone(Exception):
    """The client closed the connection while the server was writing."""


class Writer:
    """Writes a response: headers, then chunks, then the end (or a drop)."""

    def __init__(self, handler: BaseHTTPRequestHandler, server: FakeServer) -> None:
        self.handler = handler
        self.server = server

    def _send(self, data: bytes) -> None:
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            self.server.disconnected.set()
            self.handler.close_connection = True
            raise ClientGone from exc

    def json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        """A complete JSON response with Content-Length."""
        data = json.dumps(body).encode()
        self.handler.send_response(status)
        self.handler.send_header("Content-Type", "application/json")
        self.handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.handler.send_header(name, value)
        self.handler.end_headers()
        self._send(data)

    def start_stream(self, headers: dict[str, str] | None = None) -> None:
        """Status 200 and the headers of an SSE stream (chunked)."""
        self.handler.send_response(200)
        self.handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.handler.send_header("Cache-Control", "no-cache")
        self.handler.send_header("Transfer-Encoding", "chunked")
        for name, value in (headers or {}).items():
            self.handler.send_header(name, value)
        try:
            self.handler.end_headers()
        except OSError as exc:
            self.server.disconnected.set()
            raise ClientGone from exc

    def chunk(self, data: bytes) -> None:
        """One chunk of the body, flushed."""
        self._send(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        """The terminating chunk: the body ended cleanly."""
        self._send(b"0\r\n\r\n")

    def drop(self) -> None:
        """Cut the connection in the middle of the body (no terminating chunk)."""
        self.handler.close_connection = True
        with contextlib.suppress(OSError):
            self.handler.connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request = RecordedRequest(
            method="POST",
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            client_port=self.client_address[1],
        )
        with fake.lock:
            fake.requests.append(request)
        writer = Writer(self, fake)
        try:
            fake.handle(request, writer)
        except ClientGone:
            self.close_connection = True


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (timeouts, drops) are part of the scenarios


class FakeServer:
    """Base of the fake servers: request log, scenario queue, background thread."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.lock = threading.Lock()
        self.disconnected = threading.Event()
        self._queue: deque[Any] = deque()
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.fake = self
        self._thread: threading.Thread | None = None
        self.scheme = "http"

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (``https`` after :meth:`enable_tls`)."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def enable_tls(self, certfile: str, keyfile: str) -> FakeServer:
        """Serve HTTPS with this certificate and key (call before :meth:`start`)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile, keyfile)
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https"
        return self

    def start(self) -> FakeServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- scenarios -----------------------------------------------------------------------

    default: Any = None

    def push(self, *scenarios: Any) -> None:
        """Queue scenarios for the next requests (then the default is used again)."""
        with self.lock:
            self._queue.extend(scenarios)

    def next_scenario(self) -> Any:
        with self.lock:
            return self._queue.popleft() if self._queue else self.default

    def handle(self, request: RecordedRequest, writer: Writer) -> None:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def pause(seconds: float) -> None:
        if seconds:
            time.sleep(seconds)


@dataclass
class StreamScript:
    """What every fake stream can be told to do, beyond its normal reply."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", ",", " world", "!"])
    first_byte_delay: float = 0.0  # before the status line (beyond a client timeout)
    token_delay: float = 0.0
    drop_after: int | None = None  # cut the connection after this many text chunks
    malformed_after: int | None = None  # send a broken JSON chunk after this many
    status: int = 200
    error_body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
