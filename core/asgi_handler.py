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
  (a sync view, a session save): then Django's path runs it in that thread, where the
  view's connection must be closed.

Measured (``bench/thread_cpu.py``, 5-token turns, 50 at once, five interleaved runs each):
12.1-12.7 ms of CPU per turn with Django's handler, 10.5-12.3 with this one (means 12.4 and
11.4), and up to a fifth more turns in the same time.

:meth:`ASGIHandler.handle` is Django 5.2's with those two calls changed (marked
``inline:``); ``tests/test_asgi_handler.py`` fails when Django's method changes, so that
the copy is compared again on an upgrade.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import django
from asgiref.sync import SyncToAsync, sync_to_async
from django.core import signals
from django.core.cache import close_caches
from django.core.exceptions import RequestAborted
from django.core.handlers import asgi as django_asgi
from django.core.handlers.base import reset_urlconf
from django.db import close_old_connections, reset_queries
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


def _request_hopped() -> bool:
    """True when this request context made asgiref's per-request thread (a sync hop)."""
    context = SyncToAsync.thread_sensitive_context.get(None)
    return context is not None and context in SyncToAsync.context_to_thread_executor


class ASGIHandler(django_asgi.ASGIHandler):
    """Django's handler, with its two signal hops inline when they may be (module doc)."""

    async def _request_started(self, scope: dict[str, Any]) -> None:
        if only_stock_receivers(signals.request_started):
            signals.request_started.send(sender=self.__class__, scope=scope)  # inline
        else:
            await signals.request_started.asend(sender=self.__class__, scope=scope)

    async def _close(self, response: Any) -> None:
        if _request_hopped() or not only_stock_receivers(signals.request_finished):
            await sync_to_async(response.close)()
        else:
            response.close()  # inline: sends request_finished in the event loop

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Handles the ASGI request (Django 5.2's ``ASGIHandler.handle``, two calls
        inline where they may be)."""
        # Receive the HTTP request body as a stream object.
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        # Request is complete and can be served.
        set_script_prefix(django_asgi.get_script_prefix(scope))
        await self._request_started(scope)  # inline: was request_started.asend
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
            await signals.request_finished.asend(sender=self.__class__)
        else:
            await self._close(response)  # inline: was sync_to_async(response.close)

        body_file.close()


def get_asgi_application() -> ASGIHandler:
    """``django.core.asgi.get_asgi_application`` with this module's handler."""
    django.setup(set_prefix=False)
    return ASGIHandler()
