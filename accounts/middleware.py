"""Fetch a bearer token's signing keys in the event loop, before any view runs.

Verification then happens wherever the view authenticates (a DRF view's thread, a
database unit of the streaming views) with the keys already held: a slow or failing
JWKS endpoint delays only the requests whose key is not held, never a database thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from accounts.access_tokens import bearer_enabled, prefetch_key


def _bearer_token(request: HttpRequest) -> str | None:
    parts = request.headers.get("Authorization", "").split()
    if len(parts) == 2 and parts[0].lower() == "bearer" and bearer_enabled():
        return parts[1]
    return None


class BearerKeysMiddleware:
    """Awaits :func:`prefetch_key` for requests carrying ``Authorization: Bearer``.

    Async under daphne (no thread hop); in a sync stack (Django's test client) it waits
    for the fetch in its own thread.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self.__acall__(request)
        token = _bearer_token(request)
        if token is not None:
            async_to_sync(prefetch_key)(token)
        return self.get_response(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        token = _bearer_token(request)
        if token is not None:
            await prefetch_key(token)
        return await self.get_response(request)
