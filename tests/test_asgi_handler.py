"""core.asgi_handler: Django's ASGI handler without a thread per request for Django's own
signal receivers, and Django's behaviour wherever a request did need a thread."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import threading
from typing import Any

import asgiref.sync
import pytest
from asgiref.testing import ApplicationCommunicator
from django.core import signals
from django.core.handlers.asgi import ASGIHandler as DjangoASGIHandler
from django.db.backends.signals import connection_created

from core.asgi_handler import ASGIHandler, only_stock_receivers
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

#: sha256 of Django 5.2's ``ASGIHandler.handle``, which core/asgi_handler.py copies.
DJANGO_HANDLE_SHA256 = "98faeb5bef800331e6a8002fbc96b30e4122a23438ae45a047190a531ea11323"


@pytest.fixture
def threads_started(monkeypatch):
    """The names of the threads started while the test runs (``Thread.start`` counted)."""
    started: list[str] = []
    original = threading.Thread.start

    def counting(self: threading.Thread) -> None:
        started.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", counting)
    return started


async def _request(app: Any, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        + [(b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(10)
    body = b""
    while True:
        message = await communicator.receive_output(10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    return start["status"], body


def _in_a_server_thread(app: Any, path: str, started: list[str]) -> list[str]:
    """Serves ``path`` twice in an event loop of its own thread, as daphne's (no outer
    ``async_to_sync``, which would take asgiref's thread-sensitive calls itself), and
    returns the threads started during the second request (the first one warms up the
    executors' lasting threads), the loop's default executor's aside."""
    result: dict[str, Any] = {}

    def serve() -> None:
        async def twice() -> None:
            await _request(app, path)
            started.clear()
            result["status"], _ = await _request(app, path)
            # Not counted: the loop's default executor (readyz's database probe), shared by
            # every request, adds a thread when a request comes before its worker is idle.
            result["started"] = [name for name in started if not name.startswith("asyncio_")]

        asyncio.run(twice())

    server = threading.Thread(target=serve)
    server.start()
    server.join(30)
    assert result.get("status") == 200, result
    return result["started"]


def test_the_copied_handle_is_djangos_current_one():
    """core.asgi_handler copies Django's ``handle`` with three calls changed: when Django's
    changes (an upgrade), compare the copy again and update this digest."""
    source = inspect.getsource(DjangoASGIHandler.handle)
    assert hashlib.sha256(source.encode()).hexdigest() == DJANGO_HANDLE_SHA256


def test_an_async_view_starts_no_thread(threads_started):
    # /readyz is an async view (its database probe runs in the loop's default executor).
    assert _in_a_server_thread(ASGIHandler(), "/readyz", threads_started) == []
    # Django's own handler starts (and joins) one for its signal receivers: the day it
    # stops, this class can go.
    assert _in_a_server_thread(DjangoASGIHandler(), "/readyz", threads_started) != []


async def _sync_view_connections(app: Any) -> list[Any]:
    """The database connections a sync DRF view opened in its request's thread, after
    the request (served by ``app``)."""
    user = await asgiref.sync.sync_to_async(factories.make_user)(f"handler{id(app)}")
    token = await asgiref.sync.sync_to_async(factories.make_token)(user)
    opened: list[Any] = []

    def record(sender: Any, connection: Any, **kwargs: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            opened.append(connection)

    connection_created.connect(record)
    try:
        status, body = await _request(app, "/api/v1/contexts/", {"authorization": f"Token {token}"})
    finally:
        connection_created.disconnect(record)
    assert status == 200, body
    assert opened, "the sync view opened no connection in its thread"
    return opened


async def test_a_sync_views_thread_leaves_no_connection_open():
    """A sync view runs in the request's own thread, which is discarded with the request:
    its connection is closed, even one kept for CONN_MAX_AGE (PostgreSQL here)."""
    for wrapper in await _sync_view_connections(ASGIHandler()):
        assert wrapper.connection is None


@pytest.mark.postgres
async def test_djangos_handler_leaves_the_connection_open_on_postgresql():
    """What the handler fixes: with CONN_MAX_AGE (PostgreSQL's settings), Django's handler
    leaves the discarded thread's connection open. The day it does not, the
    connection-closing part of core/asgi_handler.py can go."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("CONN_MAX_AGE is set for PostgreSQL only; SQLite closes at once")
    leaked = await _sync_view_connections(DjangoASGIHandler())
    assert any(wrapper.connection is not None for wrapper in leaked)
    for wrapper in leaked:
        await asgiref.sync.sync_to_async(_close_quietly)(wrapper)


def _close_quietly(wrapper: Any) -> None:
    if wrapper.connection is not None:
        wrapper.connection.close()
        wrapper.connection = None


async def test_other_receivers_take_djangos_path():
    """A receiver connected by an app or a test is called as Django calls it: from a
    thread, never inline in the event loop."""
    loop_thread = threading.get_ident()
    calls: list[tuple[str, bool]] = []

    def started(sender: Any, **kwargs: Any) -> None:
        calls.append(("started", threading.get_ident() == loop_thread))

    def finished(sender: Any, **kwargs: Any) -> None:
        calls.append(("finished", threading.get_ident() == loop_thread))

    assert only_stock_receivers(signals.request_started)
    assert only_stock_receivers(signals.request_finished)
    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        assert not only_stock_receivers(signals.request_started)
        status, _ = await _request(ASGIHandler(), "/readyz")
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    assert status == 200
    assert calls == [("started", False), ("finished", False)]
