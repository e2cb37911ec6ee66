"""Django's ASGI handler without a thread per request where nothing needs one.

Django's ``ASGIHandler`` sends ``request_started`` with ``asend`` and closes the response
with ``sync_to_async(response.close)``: both hop to a thread, and inside the request's
``ThreadSensitiveContext`` the first such hop makes a new thread (asgiref's executor per
request context), which ``__aexit__`` joins at the end. Every request, the streaming turn
included, started and joined a thread to run Django's own receivers, which do no I/O
there: ``reset_queries`` and ``close_old_connections`` act on the connections of the
calling thread (database connections are thread-critical; a fresh thread, or the event
loop, holds none), ``close_caches`` on caches whose ``close`` is a no-op for the Redis
and local-memory backends, ``reset_urlconf`` on a context variable.

:class:`ASGIHandler` runs them inline in the event loop when both hold:

- the two signals have only Django's stock receivers (anything else connected, by an app
  or a test, takes Django's path unchanged);
- for ``request_finished``, nothing in the request hopped to a thread-sensitive thread
  (a sync view, a session save): then it runs in that thread, as Django runs it.

A request's own thread is discarded when the request ends, so the handler also closes
that thread's database connections there. Django leaves them open under ``CONN_MAX_AGE``
(kept for a reuse that cannot come) until garbage collection: on PostgreSQL every sync
request (the REST list and detail views, the admin) opened a session and left it open
(measured: 20 requests, 21 sessions opened, 9 more left open; Django ticket #33497).

Measured (``bench/thread_cpu.py``, 5-token turns, 50 at once, five interleaved runs each):
12.1-12.7 ms of CPU per turn with Django's handler, 10.5-12.3 with this one (means 12.4 and
11.4), and up to a fifth more turns in the same time.

:meth:`ASGIHandler.handle` is Django 5.2's with those three calls changed (marked
``was``); ``tests/test_asgi_handler.py`` fails when Django's method changes, so that
the copy is compared again on an upgrade.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import django
from asgiref.sync import AsyncToSync, SyncToAsync, sync_to_async
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers import asgi as django_asgi
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, connections, reset_queries
from django.dispatch import Signal
from django.urls import set_script_prefix

#: Django's own receivers of the two signals: cheap, and no I/O off their thread.
STOCK_RECEIVERS = frozenset({reset_queries, close_old_connections, close_caches, reset_urlconf})


def only_stock_receivers(signal: Signal) -> bool:
    """True when every receiver connected to ``signal`` is one of Django's own."""
    for _key, receiver, _is_async in signal.receivers:
        target = receiver() if isinstance(receiver, weakref.ReferenceType) else receiver
        if target not in STOCK_RECEIVERS:
            return False
    return True


def _inline(signal: Signal) -> bool:
    """True when ``signal`` may be sent in the event loop: only Django's receivers listen,
    and no outer ``async_to_sync`` (a test harness; never under daphne) takes
    thread-sensitive calls in a lasting thread of its own."""
    return only_stock_receivers(signal) and getattr(AsyncToSync.executors, "current", None) is None


def _request_thread_made() -> bool:
    """True when this request made asgiref's thread of its own (a sync view, a session
    save): the thread is discarded when the request ends. (Under an outer
    ``async_to_sync`` no such thread is made: its thread takes the calls.)"""
    context = SyncToAsync.thread_sensitive_context.get(None)
    return context is not None and context in SyncToAsync.context_to_thread_executor


def _close_in_request_thread(response: Any) -> None:
    """``response.close()`` (``request_finished``) in the request's own thread, then that
    thread's database connections closed: the thread is discarded with the request, so a
    connection kept for ``CONN_MAX_AGE`` would never be used again, only left open until
    garbage collection (one PostgreSQL session per sync request; Django ticket #33497)."""
    try:
        response.close()
    finally:
        connections.close_all()


class ASGIHandler(django_asgi.ASGIHandler):
    """Django's handler, with its two signal hops inline when they may be, and no
    database connection left behind by a request's own thread (module doc)."""

    async def _request_started(self, scope: dict[str, Any]) -> None:
        if _inline(signals.request_started):
            signals.request_started.send(sender=self.__class__, scope=scope)
        else:
            await signals.request_started.asend(sender=self.__class__, scope=scope)

    async def _close(self, response: Any) -> None:
        if _request_thread_made():
            await sync_to_async(_close_in_request_thread)(response)
        elif _inline(signals.request_finished):
            response.close()  # sends request_finished in the event loop
        else:
            await sync_to_async(response.close)()  # Django's path

    async def _finished_without_response(self) -> None:
        await signals.request_finished.asend(sender=self.__class__)
        if _request_thread_made():
            await sync_to_async(connections.close_all)()

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Handles the ASGI request (Django 5.2's ``ASGIHandler.handle``, with the
        three calls marked ``was`` changed)."""
        # Receive the HTTP request body as a stream object.
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        # Request is complete and can be served.
        set_script_prefix(django_asgi.get_script_prefix(scope))
        await self._request_started(scope)  # was request_started.asend
        # Get the request and check for basic issues.
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            await sync_to_async(error_response.close)()
            return

        async def process_request(request: Any, send: Any) -> Any:
            response = await self.run_get_response(request)
            try:  # noqa: SIM105 (Django's code, kept as written for comparison)
                await self.send_response(response, send)
            except asyncio.CancelledError:
                # Client disconnected during send_response (ignore exception).
                pass

            return response

        # Try to catch a disconnect while getting response.
        tasks = [
            # Check the status of these tasks and (optionally) terminate them
            # in this order. The listen_for_disconnect() task goes first
            # because it should not raise unexpected errors that would prevent
            # us from cancelling process_request().
            asyncio.create_task(self.listen_for_disconnect(receive)),
            asyncio.create_task(process_request(request, send)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        # Now wait on both tasks (they may have both finished by now).
        for task in tasks:
            if task.done():
                try:
                    task.result()
                except RequestAborted:
                    # Ignore client disconnects.
                    pass
                except AssertionError:
                    body_file.close()
                    raise
            else:
                # Allow views to handle cancellation.
                task.cancel()
                try:  # noqa: SIM105 (Django's code, kept as written for comparison)
                    await task
                except asyncio.CancelledError:
                    # Task re-raised the CancelledError as expected.
                    pass

        try:
            response = tasks[1].result()
        except asyncio.CancelledError:
            await self._finished_without_response()  # was request_finished.asend
        else:
            await self._close(response)  # was sync_to_async(response.close)

        body_file.close()


def get_asgi_application() -> ASGIHandler:
    """``django.core.asgi.get_asgi_application`` with this module's handler."""
    django.setup(set_prefix=False)
    return ASGIHandler()
