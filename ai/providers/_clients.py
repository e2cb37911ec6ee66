"""One SDK client per event loop: an SDK client's pooled connections cannot cross loops."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx2

T = TypeVar("T")


class LoopClients(Generic[T]):
    """Builds a client with ``factory`` the first time each event loop asks for one."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        """The running loop's client."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = self._factory()
        return client


async def post_json(client: Any, path: str, body: dict[str, Any], *, stream: bool) -> Any:
    """POST ``body`` through an SDK client and return its raw ``httpx2.Response``.

    The SDK still builds the request (base URL, auth headers, timeouts), retries, and turns
    error statuses into its typed exceptions; what is skipped is its per-request parameter
    transform (``maybe_transform`` over typed dicts costs 2-4 ms for a 20-message history,
    more than the rest of a turn's request) and its typed response objects. The body is
    plain JSON built by the adapter. ``stream=True`` leaves the body unread: the caller
    must ``aclose()`` the response.
    """
    return await client.post(path, cast_to=httpx2.Response, body=body, stream=stream)
