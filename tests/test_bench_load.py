"""The benchmark's load generator tells early refusals (503 ``server_busy``) from turns that
failed after they started (bench/load.py), on both of its HTTP clients."""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from bench.load import REFUSED, Target, run_load, summarize

REQUESTS = itertools.count()
BUSY_BODY = json.dumps({"detail": "The server is busy.", "code": "server_busy"}).encode()


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Every other request refused with 503 server_busy (head and body in two writes, as a
    server may send them); the others start a stream, send 2 chunks and an error event."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            await reader.readexactly(length)
            if next(REQUESTS) % 2 == 0:
                writer.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(BUSY_BODY)}\r\n\r\n".encode()
                )
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(BUSY_BODY)
                await writer.drain()
                continue
            events = [
                b'event: chunk\ndata: {"content": " a"}\n\n',
                b'event: chunk\ndata: {"content": " b"}\n\n',
                b'event: error\ndata: {"code": "provider_error"}\n\n',
            ]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
            writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
            for event in events:
                writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("client", ["raw", "httpx"])
async def test_refusals_and_failures_after_start_are_counted_apart(client):
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = Target.relay("fake", f"http://127.0.0.1:{port}/relay")
        results, _ = await run_load(
            target, concurrency=2, turns=4, expected_tokens=2, timeout=20, client=client
        )
    finally:
        server.close()
        await server.wait_closed()
    summary = summarize(results, tokens=2, pace_ms=10)
    assert summary["turns"] == 8
    assert summary["refused"] > 0, summary["error_kinds"]
    assert summary["error_kinds"].get(REFUSED) == summary["refused"]
    assert summary["failed_after_start"] == summary["turns"] - summary["refused"]
    assert set(summary["error_kinds"]) == {REFUSED, "error_event:provider_error"}
