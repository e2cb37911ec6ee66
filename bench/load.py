"""The load generator: C concurrent chat turns over SSE, measured per stream.

An asyncio client opens C workers (an ``httpx.AsyncClient`` whose pool is as large as the
concurrency, or by default a minimal keep-alive HTTP/1.1 protocol of its own, one
connection per worker: httpx costs 100-200 µs of CPU per chunk, more than the servers
under test, and would make the load generator the bottleneck on a small machine); each runs
``turns`` turns back to back (starts spread over ``ramp`` seconds). Per stream it records
the time to the first text chunk, the gaps between text chunks as they arrive, the time
of the last chunk against the ideal ``(T - 1) * pace``, the number of chunk events and of
tokens (every upstream token is one word with a leading space), and errors: a status
other than 200, an ``error`` event, a stream without its end (``done`` / ``[DONE]``), a
token count other than T, an exception or the phase's time limit.

With ``duration`` the workers keep starting turns until that many seconds have passed
(open-ended, for throughput), then finish the ones in flight; with ``window=(t0, t1)`` the
generator also records, at those two offsets from the start, the tokens and chunks
received so far (in ``marks``) and calls ``on_mark("start")`` / ``on_mark("end")`` so the
caller can read server CPU over exactly the same steady-state window.

Three kinds of target:

- ``product``: ``POST /api/v1/conversations/stream`` with ``Authorization: Token <key>``,
  ``Accept: text/event-stream`` and ``{"context_id", "messages": [{"role": "user", ...}]}``;
- ``relay``: a reference relay's ``POST /relay`` (same events: ``chunk``, ``done``);
- ``upstream``: the fake upstream itself (OpenAI chunks), the floor for the others.

Standalone use (prints the summary as JSON)::

    python bench/load.py --kind product --url http://127.0.0.1:8000/api/v1/conversations/stream \\
        --token KEY --context-id ID -c 50 -n 2 --tokens 200 --pace-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

USER_TEXT = (
    "Plan my week: book a flight to Paris for Friday, call the dentist on Monday "
    "and remind me to review the quarterly notes."
)


#: Every target gets a JSON body and asks for an event stream.
SSE_JSON_HEADERS = {"Accept": "text/event-stream", "Content-Type": "application/json"}


@dataclass
class Target:
    name: str
    kind: str  # "product" | "relay" | "upstream"
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def product(cls, name: str, url: str, token: str, context_id: str) -> Target:
        body = {"context_id": context_id, "messages": [{"role": "user", "content": USER_TEXT}]}
        headers = {"Authorization": f"Token {token}", **SSE_JSON_HEADERS}
        return cls(name, "product", url, headers, json.dumps(body).encode())

    @classmethod
    def relay(cls, name: str, url: str) -> Target:
        body = {"messages": [{"role": "user", "content": USER_TEXT}]}
        return cls(name, "relay", url, dict(SSE_JSON_HEADERS), json.dumps(body).encode())

    @classmethod
    def upstream(cls, name: str, url: str) -> Target:
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": USER_TEXT}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return cls(name, "upstream", url, dict(SSE_JSON_HEADERS), json.dumps(body).encode())


@dataclass
class StreamResult:
    ok: bool = False
    error: str = ""
    ttfc: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    chunks: int = 0
    last_chunk: float | None = None
    total: float = 0.0
    started: float | None = None  # perf_counter() when the turn started
    finished: float | None = None  # perf_counter() when it ended (any outcome)


def _content(kind: str, data: bytes) -> str | None:
    obj = json.loads(data)
    if kind == "upstream":
        choices = obj.get("choices")
        if choices:
            return (choices[0].get("delta") or {}).get("content") or None
        return None
    return obj.get("content")


class SSEReader:
    """Feeds response body bytes into a :class:`StreamResult` (chunks, timing, end)."""

    def __init__(self, result: StreamResult, kind: str, start: float) -> None:
        self.result = result
        self.kind = kind
        self.start = start
        self.last: float | None = None
        self.done = False
        self.buffer = b""
        result.started = start

    def feed(self, raw: bytes, now: float) -> None:
        buffer = self.buffer + raw if self.buffer else raw
        if b"\n\n" not in buffer:
            self.buffer = buffer
            return
        *blocks, self.buffer = buffer.split(b"\n\n")
        result, kind = self.result, self.kind
        for block in blocks:
            event = b""
            data = b""
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data = line[5:].strip()
                elif line.startswith(b"event:"):
                    event = line[6:].strip()
            if kind == "upstream":
                if data == b"[DONE]":
                    self.done = True
                    continue
                if not data:
                    continue
                text = _content(kind, data)
            elif event == b"chunk":
                text = _content(kind, data)
            elif event == b"done":
                self.done = True
                continue
            elif event == b"error":
                result.error = "error_event:" + str(json.loads(data).get("code"))
                continue
            else:
                continue
            if not text:
                continue
            result.chunks += 1
            result.tokens += text.count(" ")
            if self.last is None:
                result.ttfc = now - self.start
            else:
                result.gaps.append(now - self.last)
            self.last = now

    def finish(self, expected: int) -> None:
        result = self.result
        result.finished = time.perf_counter()
        result.total = result.finished - self.start
        result.last_chunk = None if self.last is None else self.last - self.start
        if not result.error:
            if not self.done:
                result.error = "no_end"
            elif result.tokens != expected:
                result.error = f"tokens_{result.tokens}_of_{expected}"
        result.ok = not result.error


async def one_stream(
    client: httpx.AsyncClient, target: Target, expected: int, result: StreamResult | None = None
) -> StreamResult:
    """One turn with httpx; never raises but on cancel (``result`` holds what arrived)."""
    result = result or StreamResult()
    result.error = ""
    reader = SSEReader(result, target.kind, time.perf_counter())
    try:
        async with client.stream(
            "POST", target.url, headers=target.headers, content=target.body
        ) as response:
            if response.status_code != 200:
                result.error = refusal(response.status_code, await response.aread())
            else:
                async for raw in response.aiter_raw():
                    reader.feed(raw, time.perf_counter())
    except asyncio.CancelledError:
        result.error = "timeout"
        reader.finish(expected)
        raise
    except Exception as exc:  # every failure is a measured error
        result.error = f"exc:{type(exc).__name__}"
    reader.finish(expected)
    return result


_CODE = re.compile(rb'"code"\s*:\s*"([A-Za-z0-9_]+)"')
#: The product's early refusal under load (503 ``server_busy``): counted apart from errors.
REFUSED = "http_503:server_busy"


def refusal(status: int, body: bytes) -> str:
    """The error of a non-200 answer: ``http_<status>``, with the body's ``code`` if any."""
    code = _CODE.search(body or b"")
    return f"http_{status}:{code.group(1).decode()}" if code else f"http_{status}"


def failed_after_start(result: StreamResult) -> bool:
    """A turn that failed after its stream began (not a refusal, not one never sent)."""
    return (
        bool(result.error)
        and not result.error.startswith(("http_", "not_started"))
        and (result.chunks > 0 or not result.error.startswith("exc:"))
    )


class RawConnection(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client connection (chunked or close-delimited bodies).

    httpx costs more CPU per chunk than the servers under test (100-200 µs); on a small
    machine the load generator would then be the bottleneck, so the runner uses this by
    default (``--client httpx`` for the httpx one).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader: SSEReader | None = None
        self.ended: asyncio.Future[None] | None = None
        self.head = True
        self.chunked = False
        self.buf = b""
        self.closed = False
        self.refused = 0  # the status of a non-200 answer, while its body arrives

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.ended is not None and not self.ended.done():
            if self.reader is not None and not self.chunked and not self.head:
                self.ended.set_result(None)  # a close-delimited body ends here
            elif self.refused and self.reader is not None:
                self.reader.result.error = refusal(self.refused, self.buf)
                self.ended.set_result(None)
            else:
                self.ended.set_exception(ConnectionError("connection lost"))

    def request(self, target: Target, host: str, path: str, reader: SSEReader) -> asyncio.Future:
        self.reader = reader
        self.head, self.chunked, self.buf, self.refused = True, False, b"", 0
        self.ended = asyncio.get_running_loop().create_future()
        headers = "".join(f"{k}: {v}\r\n" for k, v in target.headers.items())
        self.transport.write(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{headers}"
            f"Content-Length: {len(target.body)}\r\n\r\n".encode()
            + target.body
        )
        return self.ended

    def _refusal_body(self, data: bytes) -> None:
        """Collect a non-200 answer's (small) body until its error code is in it."""
        assert self.reader is not None and self.ended is not None
        self.buf += data
        code = _CODE.search(self.buf)
        if code or len(self.buf) > 4096:
            self.reader.result.error = refusal(self.refused, self.buf)
            self.closed = True  # before the worker's next turn looks at it
            self.transport.close()
            self.ended.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.reader is None or self.ended is None or self.ended.done():
            return
        if self.refused:
            self._refusal_body(data)
            return
        if self.head:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            data, self.buf = self.buf[end + 4 :], b""
            status = int(head.split(b" ", 2)[1])
            self.head = False
            self.chunked = b"transfer-encoding: chunked" in head
            if status != 200:
                self.refused, self.buf = status, data
                self._refusal_body(b"")
                return
        if not self.chunked:
            self.reader.feed(data, now)
            return
        buf = self.buf + data if self.buf else data
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                break
            size = int(buf[:line_end].split(b";", 1)[0], 16)
            if size == 0:
                self.ended.set_result(None)
                buf = b""
                break
            if len(buf) < line_end + 2 + size + 2:
                break
            self.reader.feed(buf[line_end + 2 : line_end + 2 + size], now)
            buf = buf[line_end + 2 + size + 2 :]
        self.buf = buf


async def raw_stream(
    conn: list[RawConnection | None], target: Target, expected: int, result: StreamResult
) -> StreamResult:
    """One turn on the worker's own keep-alive connection (opened on first use)."""
    url = httpx.URL(target.url)
    result.error = ""
    reader = SSEReader(result, target.kind, time.perf_counter())
    try:
        if conn[0] is None or conn[0].closed:
            loop = asyncio.get_running_loop()
            _, conn[0] = await loop.create_connection(RawConnection, url.host, url.port)
        path = url.raw_path.decode()
        await conn[0].request(target, f"{url.host}:{url.port}", path, reader)
    except asyncio.CancelledError:
        result.error = "timeout"
        reader.finish(expected)
        raise
    except Exception as exc:  # every failure is a measured error
        result.error = f"exc:{type(exc).__name__}"
        if conn[0] is not None and conn[0].transport is not None:
            conn[0].transport.close()
        conn[0] = None
    reader.finish(expected)
    return result


async def run_load(
    target: Target,
    *,
    concurrency: int,
    turns: int,
    expected_tokens: int,
    ramp: float = 0.0,
    timeout: float = 60.0,
    client: str = "raw",
    duration: float | None = None,
    window: tuple[float, float] | None = None,
    marks: dict[str, float] | None = None,
    on_mark: Callable[[str], None] | None = None,
) -> tuple[list[StreamResult], float]:
    """``concurrency`` workers each running ``turns`` turns; all results and wall time.

    With ``duration``, a worker starts no turn after ``duration`` seconds (and ``turns``
    is only an upper bound). With ``window``, ``marks`` gets ``t0`` / ``t1`` (perf_counter)
    and ``tokens0`` / ``tokens1``, ``chunks0`` / ``chunks1`` (received so far, all turns)
    at those offsets, and ``on_mark`` is called there. A turn cut by the time limit keeps
    what it received (error ``timeout``); turns never started count as ``not_started``.
    """
    limits = httpx.Limits(
        max_connections=concurrency + 16, max_keepalive_connections=concurrency + 16
    )
    results: list[StreamResult] = []
    async with httpx.AsyncClient(
        limits=limits, timeout=httpx.Timeout(timeout, connect=timeout)
    ) as http:

        async def worker(index: int) -> None:
            conn: list[RawConnection | None] = [None]
            try:
                if ramp and concurrency > 1:
                    await asyncio.sleep(ramp * index / concurrency)
                for _ in range(turns):
                    if stop_at is not None and time.perf_counter() >= stop_at:
                        break
                    result = StreamResult(error="not_started")
                    results.append(result)
                    if client == "raw":
                        await raw_stream(conn, target, expected_tokens, result)
                    else:
                        await one_stream(http, target, expected_tokens, result)
            finally:
                if conn[0] is not None and conn[0].transport is not None:
                    conn[0].transport.close()

        async def marker() -> None:
            assert window is not None
            for label, offset in (("0", window[0]), ("1", window[1])):
                await asyncio.sleep(max(0.0, started + offset - time.perf_counter()))
                if marks is not None:
                    marks["t" + label] = time.perf_counter()
                    marks["tokens" + label] = sum(r.tokens for r in results)
                    marks["chunks" + label] = sum(r.chunks for r in results)
                if on_mark is not None:
                    on_mark("start" if label == "0" else "end")

        started = time.perf_counter()
        stop_at = None if duration is None else started + duration
        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        mark_task = asyncio.create_task(marker()) if window is not None else None
        _done, not_done = await asyncio.wait(tasks, timeout=timeout)
        for task in not_done:
            task.cancel()
        await asyncio.gather(*not_done, return_exceptions=True)
        wall = time.perf_counter() - started
        if mark_task is not None:
            if not mark_task.done():  # the phase ended before the window did
                mark_task.cancel()
            await asyncio.gather(mark_task, return_exceptions=True)
    if duration is None:
        missing = concurrency * turns - len(results)
        results.extend(StreamResult(error="not_started") for _ in range(max(0, missing)))
    return results, wall


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def summarize(results: list[StreamResult], *, tokens: int, pace_ms: float) -> dict[str, Any]:
    """Per-phase figures (times in ms)."""
    ok = [r for r in results if r.ok]
    gaps = [g for r in ok for g in r.gaps]
    ideal_last = (tokens - 1) * pace_ms / 1000
    over = [r.last_chunk - ideal_last for r in ok if r.last_chunk is not None]
    tails = [r.total - r.last_chunk for r in ok if r.last_chunk is not None]
    ttfc = [r.ttfc for r in ok if r.ttfc is not None]
    return {
        "turns": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "error_kinds": dict(Counter(r.error for r in results if r.error)),
        "refused": sum(1 for r in results if r.error == REFUSED),
        "failed_after_start": sum(1 for r in results if failed_after_start(r)),
        "tokens": sum(r.tokens for r in results),
        "tokens_ok": sum(r.tokens for r in ok),
        "chunks": sum(r.chunks for r in results),
        "ttfc_p50": _ms(percentile(ttfc, 50)),
        "ttfc_p99": _ms(percentile(ttfc, 99)),
        "gap_p50": _ms(percentile(gaps, 50)),
        "gap_p99": _ms(percentile(gaps, 99)),
        "over_ideal_p50": _ms(percentile(over, 50)),
        "over_ideal_p99": _ms(percentile(over, 99)),
        "tail_p50": _ms(percentile(tails, 50)),
        "ideal_ms": round(ideal_last * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Run C concurrent SSE chat turns.")
    parser.add_argument("--kind", choices=["product", "relay", "upstream"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--context-id", default="")
    parser.add_argument("-c", "--concurrency", type=int, default=1)
    parser.add_argument("-n", "--turns", type=int, default=1, help="turns per worker")
    parser.add_argument("--tokens", type=int, default=200, help="tokens the upstream sends")
    parser.add_argument("--pace-ms", type=float, default=10.0)
    parser.add_argument("--ramp", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    args = parser.parse_args()
    if args.kind == "product":
        target = Target.product("product", args.url, args.token, args.context_id)
    elif args.kind == "relay":
        target = Target.relay("relay", args.url)
    else:
        target = Target.upstream("upstream", args.url)
    results, wall = asyncio.run(
        run_load(
            target,
            concurrency=args.concurrency,
            turns=args.turns,
            expected_tokens=args.tokens,
            ramp=args.ramp,
            timeout=args.timeout,
            client=args.client,
        )
    )
    summary = summarize(results, tokens=args.tokens, pace_ms=args.pace_ms)
    summary["wall_s"] = round(wall, 2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
