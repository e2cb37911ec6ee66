"""The SDK clients' HTTP side: one client per event loop, on aiohttp or httpx2.

An SDK client's pooled connections cannot cross event loops, so :class:`LoopClients`
builds one per loop. Which HTTP client the SDKs use is ``AI_HTTP_CLIENT``:

- ``aiohttp`` (default): the SDKs' own ``DefaultAioHttpClient`` (their documented
  ``[aiohttp]`` extra). Reading a streamed body costs about half the CPU per chunk of
  the default client (measured with ``bench/chunk_cost.py --paced``): aiohttp parses HTTP
  in C and reads from an asyncio protocol, where httpx2's default transport parses with
  h11 and sets up an anyio cancel scope and a reader registration for every read.
- ``httpx``: the SDKs' default httpx2 client.

An aiohttp session must be closed on its own loop or it logs "Unclosed client session"
when collected. Sessions whose loop has closed are closed (synchronously, without their
loop) when the next loop gets its client, and all of them at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
import weakref
from collections.abc import Callable
from types import ModuleType
from typing import Any, Generic, TypeVar

import httpx2

T = TypeVar("T")

AIOHTTP = "aiohttp"
HTTPX = "httpx"
HTTP_CLIENTS: tuple[str, ...] = (AIOHTTP, HTTPX)

# Every client built on aiohttp, with its loop, until it is closed (see the module doc).
_open: list[tuple[asyncio.AbstractEventLoop, Any]] = []
_open_lock = threading.Lock()


def sdk_http_client(sdk: ModuleType, kind: str) -> httpx2.AsyncClient | None:
    """The ``http_client`` to build an SDK client with: the SDK's ``DefaultAioHttpClient``
    for ``aiohttp``, ``None`` (the SDK's default) for ``httpx``."""
    if kind == AIOHTTP:
        return sdk.DefaultAioHttpClient()
    return None


def _aiohttp_sessions(sdk_client: Any) -> list[Any]:
    try:
        import aiohttp  # noqa: PLC0415 (optional: the SDKs' [aiohttp] extra)
    except ImportError:  # only the httpx client can be in use
        return []
    http = getattr(sdk_client, "_client", None)  # the SDK's httpx2.AsyncClient
    transports = [getattr(http, "_transport", None), *getattr(http, "_mounts", {}).values()]
    return [
        session
        for session in (getattr(transport, "client", None) for transport in transports)
        if isinstance(session, aiohttp.ClientSession)
    ]


def close_detached(sdk_client: Any) -> None:
    """Close an aiohttp-based SDK client's sessions without their loop (which has closed
    or will never run again): its pooled connections are dropped, nothing is logged."""
    for session in _aiohttp_sessions(sdk_client):
        if session.closed:
            continue
        connector = session.connector
        session.detach()
        if connector is not None:
            with contextlib.suppress(Exception):
                connector._close()


def _sweep(*, everything: bool = False) -> None:
    """Close the clients whose loop has closed (``everything``: all of them)."""
    done, kept = [], []
    with _open_lock:
        for entry in _open:
            (done if everything or entry[0].is_closed() else kept).append(entry)
        _open[:] = kept
    for _, client in done:
        close_detached(client)


atexit.register(_sweep, everything=True)


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
            _sweep()
            client = self._clients[loop] = self._factory()
            with _open_lock:
                _open.append((loop, client))
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
