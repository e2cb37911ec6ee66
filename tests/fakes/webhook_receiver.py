"""A local webhook receiver for the tests: verifies every request with the
``standardwebhooks`` package, as a real receiver would, and records what came.

Each request's answer is chosen by ``respond`` (default: 204); ``"hold"`` keeps the
request open until :meth:`WebhookReceiver.release` (a receiver that hangs).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    """One request the receiver got."""

    webhook_id: str
    timestamp: str
    verified: bool
    body: Any
    at: float
    answered: int | str
    path: str = "/hook"
    headers: dict[str, str] = field(default_factory=dict)


class WebhookReceiver:
    """A threaded HTTP server on 127.0.0.1 (a free port) that records webhooks."""

    def __init__(self, secret: str = "", respond: Callable[[int], int | str] | None = None):
        self.secret = secret
        self.respond = respond or (lambda n: 204)
        self.received: list[Received] = []
        self.lock = threading.Lock()
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k: v for k, v in self.headers.items()}
                try:
                    body = Webhook(receiver.secret).verify(raw, headers)
                    verified = True
                except (WebhookVerificationError, ValueError):
                    body, verified = json.loads(raw or b"null"), False
                with receiver.lock:
                    answer = receiver.respond(len(receiver.received))
                    entry = Received(
                        webhook_id=headers.get("Webhook-Id", ""),
                        timestamp=headers.get("Webhook-Timestamp", ""),
                        verified=verified,
                        body=body,
                        at=time.time(),
                        answered=answer,
                        path=self.path,
                        headers=headers,
                    )
                    receiver.received.append(entry)
                if answer == "hold":
                    receiver.released.wait(60)
                    answer = 200
                try:
                    self.send_response(int(answer))
                    if 300 <= int(answer) < 400:
                        self.send_header("Location", receiver.url.replace("/hook", "/elsewhere"))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def ids(self) -> list[str]:
        with self.lock:
            return [entry.webhook_id for entry in self.received]

    def entries(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def release(self) -> None:
        self.released.set()

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
