"""The reference relays the product is compared with, each its own server process.

Every reference does exactly the same work per request: POST the chat to the upstream
with a shared HTTP client, read its SSE lines, ``json.loads`` each chunk, and send every
text delta to the client as ``event: chunk`` / ``data: {"content": ...}``, then
``event: done``. Two things vary:

- the server stack: ``starlette``, a bare Starlette app under uvicorn (asyncio loop, h11,
  no access log); ``django``, an empty Django 5.2 async view under daphne, no middleware,
  no apps, no database (``bench/refdjango``), no access log;
- the HTTP client to the upstream (``--client``): ``httpx`` (one ``httpx.AsyncClient``)
  or ``aiohttp`` (one ``aiohttp.ClientSession``: the client the product's SDKs use by
  default, ``AI_HTTP_CLIENT``), so that the product is compared with a relay on the same
  client.

    python bench/references.py starlette --port 9101 --upstream http://127.0.0.1:9100/v1
    python bench/references.py django --client aiohttp --port 9102 --upstream ...

The endpoint is ``POST /relay`` (body ``{"messages": [...]}``, optional ``?tokens=N``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]

_clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
#: The upstream client of this process's relay: "httpx" or "aiohttp" (``--client``).
CLIENT_ENV = "BENCH_RELAY_CLIENT"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(60.0, connect=10.0),
            limits=httpx.Limits(max_connections=2000, max_keepalive_connections=1000),
        )
        _clients[loop] = client
    return client


def _session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2000, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=60.0),
        )
        _sessions[loop] = session
    return session


def upstream_request(body: bytes, tokens: str | None = None) -> tuple[str, dict[str, Any]]:
    """The upstream URL and the chat completion request for a client's body."""
    base = os.environ.get("BENCH_UPSTREAM", "http://127.0.0.1:9100/v1").rstrip("/")
    try:
        messages = json.loads(body or b"{}").get("messages") or []
    except ValueError:
        messages = []
    url = f"{base}/chat/completions" + (f"?tokens={int(tokens)}" if tokens else "")
    payload = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "You are a helpful assistant."}, *messages],
        "max_tokens": 1024,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return url, payload


def relay_events(url: str, payload: dict[str, Any]) -> AsyncIterator[bytes]:
    """The upstream's text deltas as SSE ``chunk`` events, then ``done``, on the client
    ``BENCH_RELAY_CLIENT`` names (httpx unless ``aiohttp``)."""
    if os.environ.get(CLIENT_ENV) == "aiohttp":
        return relay_events_aiohttp(url, payload)
    return relay_events_httpx(url, payload)


def _chunk_event(data: bytes | str) -> bytes | None:
    chunk = json.loads(data)
    choices = chunk.get("choices")
    if choices:
        content = choices[0].get("delta", {}).get("content")
        if content:
            return b"event: chunk\ndata: " + _dumps({"content": content}).encode() + b"\n\n"
    return None


async def relay_events_aiohttp(url: str, payload: dict[str, Any]) -> AsyncIterator[bytes]:
    """:func:`relay_events` on one shared ``aiohttp.ClientSession``."""
    async with _session().post(url, json=payload) as response:
        if response.status != 200:
            yield b'event: error\ndata: {"code":"upstream"}\n\n'
            return
        async for line in response.content:  # one line at a time, with its newline
            if not line.startswith(b"data: "):
                continue
            data = line[6:].rstrip(b"\r\n")
            if data == b"[DONE]":
                break
            event = _chunk_event(data)
            if event:
                yield event
    yield b'event: done\ndata: {"type":"done"}\n\n'


async def relay_events_httpx(url: str, payload: dict[str, Any]) -> AsyncIterator[bytes]:
    """:func:`relay_events` on one shared ``httpx.AsyncClient``."""
    async with _client().stream("POST", url, json=payload) as response:
        if response.status_code != 200:
            yield b'event: error\ndata: {"code":"upstream"}\n\n'
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = _chunk_event(data)
            if event:
                yield event
    yield b'event: done\ndata: {"type":"done"}\n\n'


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def relay(request: Request) -> StreamingResponse:
        url, payload = upstream_request(await request.body(), request.query_params.get("tokens"))
        return StreamingResponse(
            relay_events(url, payload),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def healthz(request: Request) -> StreamingResponse:
        async def ok() -> AsyncIterator[bytes]:
            yield b"ok"

        return StreamingResponse(ok())

    return Starlette(routes=[Route("/relay", relay, methods=["POST"]), Route("/healthz", healthz)])


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one reference relay.")
    parser.add_argument("kind", choices=["starlette", "django"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", default=os.environ.get("BENCH_UPSTREAM", ""))
    parser.add_argument("--client", choices=["httpx", "aiohttp"], default="httpx")
    args = parser.parse_args()
    os.environ[CLIENT_ENV] = args.client  # read per request, here and in daphne's process
    if args.upstream:
        os.environ["BENCH_UPSTREAM"] = args.upstream
    if args.kind == "starlette":
        import uvicorn

        uvicorn.run(
            starlette_app(),
            host=args.host,
            port=args.port,
            loop="asyncio",
            http="h11",
            log_level="warning",
            access_log=False,
            backlog=4096,
        )
        return
    # The Django reference: replace this process with daphne (same pid for CPU accounting).
    os.chdir(ROOT)
    os.environ["DJANGO_SETTINGS_MODULE"] = "bench.refdjango.settings"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "daphne",
            "-v",
            "0",
            "-b",
            args.host,
            "-p",
            str(args.port),
            "bench.refdjango.asgi:application",
        ],
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
