"""Django's stock middleware without a thread hop per hook under ASGI.

Django runs every hook of a ``MiddlewareMixin`` middleware (``process_request``,
``process_view``, ``process_response``) through ``sync_to_async(thread_sensitive=True)``
when it serves an async view: a streaming turn paid 17 thread hops, all through one shared
thread, before its first byte. The hooks of the middleware below do no I/O in the cases
where they run inline here (headers, cookies, URL checks, lazy objects), so they run in
the event loop; the one case that can touch the database, saving a session that was
accessed, or storing flash messages, still goes to a thread.

Each class is the stock one with ``__acall__`` (and CSRF's ``process_view``) made async;
sync requests (WSGI, the test client) take the stock code path unchanged.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware
from django.http import HttpRequest, HttpResponseBase
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware


class InlineHooksMixin:
    """``__acall__`` that runs the hooks in the event loop, unless
    :meth:`response_needs_thread` says the response hook may do I/O."""

    get_response: Any

    def response_needs_thread(self, request: HttpRequest) -> bool:
        """True when ``process_response`` may block (I/O): it then runs in a thread."""
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            response = process_request(request)
        response = response or await self.get_response(request)
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.response_needs_thread(request):
                response = await sync_to_async(process_response, thread_sensitive=True)(
                    request, response
                )
            else:
                response = process_response(request, response)
        return response


class AsyncSecurityMiddleware(InlineHooksMixin, SecurityMiddleware):
    """``SecurityMiddleware``: headers and the HTTPS redirect, inline."""


class AsyncSessionMiddleware(InlineHooksMixin, SessionMiddleware):
    """``SessionMiddleware``: the session is loaded lazily (by whoever reads it, in a
    thread); saving it is I/O, so a session that was read goes to a thread."""

    def response_needs_thread(self, request: HttpRequest) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (
            session.accessed or session.modified or settings.SESSION_SAVE_EVERY_REQUEST
        )


class AsyncCommonMiddleware(InlineHooksMixin, CommonMiddleware):
    """``CommonMiddleware``: host checks and the trailing-slash redirect, inline."""


class AsyncCsrfViewMiddleware(InlineHooksMixin, CsrfViewMiddleware):
    """``CsrfViewMiddleware`` with the token in a cookie (the default): inline. With
    ``CSRF_USE_SESSIONS`` the token lives in the session, which is I/O: stock hops."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if settings.CSRF_USE_SESSIONS:
            return await super(InlineHooksMixin, self).__acall__(request)  # type: ignore[misc]
        return await super().__acall__(request)

    async def process_view(  # type: ignore[override]
        self, request: HttpRequest, callback: Any, callback_args: Any, callback_kwargs: Any
    ) -> HttpResponseBase | None:
        if settings.CSRF_USE_SESSIONS:
            return await sync_to_async(super().process_view, thread_sensitive=True)(
                request, callback, callback_args, callback_kwargs
            )
        return super().process_view(request, callback, callback_args, callback_kwargs)


class AsyncAuthenticationMiddleware(InlineHooksMixin, AuthenticationMiddleware):
    """``AuthenticationMiddleware``: ``request.user`` is lazy; setting it is inline."""


class AsyncMessageMiddleware(InlineHooksMixin, MessageMiddleware):
    """``MessageMiddleware``: storing messages that were used or added may read the
    session (I/O), so only then the response hook goes to a thread."""

    def response_needs_thread(self, request: HttpRequest) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class AsyncXFrameOptionsMiddleware(InlineHooksMixin, XFrameOptionsMiddleware):
    """``XFrameOptionsMiddleware``: one header, inline."""
