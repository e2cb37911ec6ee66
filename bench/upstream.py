"""A fake OpenAI-compatible upstream for the benchmark (its own process, plain asyncio).

``POST /v1/chat/completions``:

- ``"stream": true``: an SSE stream in the real chunk format: a role chunk, then T
  ``chat.completion.chunk`` events of one token each, ``pace`` apart (token ``k`` leaves
  at ``start + first_token + k * pace``), then a chunk with ``finish_reason`` ``stop``, a
  usage chunk (``choices: []``) when ``stream_options.include_usage`` is set, and
  ``data: [DONE]``. Every token is one word with a leading space, so a client counts
  tokens by counting spaces.
- otherwise (the structured-output flow extraction call, ``response_format``): one
  ``chat.completion`` whose content is ``{"flows": [], "updated": []}``, with a ``title``
  when the request's JSON schema asks for one.

T and pace come from, by priority: the query string (``?tokens=5&pace_ms=10``), a path
prefix usable in a base URL (``/t/5/p/10/v1/chat/completions``), the defaults set with
``POST /_bench/config {"tokens": 5, "pace_ms": 10}``, the environment
(``BENCH_TOKENS``, ``BENCH_PACE_MS``, ``BENCH_FIRST_TOKEN_MS``), the command line.

The HTTP/1.1 server is a hand-written asyncio protocol (keep-alive, chunked responses,
pre-encoded chunks, one timer per token) so that it costs a few microseconds per token
and is never the bottleneck. ``GET /_bench/stats`` counts what it served.

    python bench/upstream.py --port 9100 [--tokens 200] [--pace-ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from typing import Any
from urllib.parse import parse_qs

_TEXT = (
    "the quick brown fox jumps over a lazy dog while seven wizards quietly pack "
    "boxes of liquor jugs and every morning we plan tasks for the week ahead "
    "call the dentist book a flight to Paris on Friday remember milk review notes"
)
WORDS = _TEXT.split(" ")


class Config:
    def __init__(self, tokens: int, pace_ms: float, first_token_ms: float, model: str) -> None:
        self.tokens = tokens
        self.pace_ms = pace_ms
        self.first_token_ms = first_token_ms
        self.model = model


STATS = {"streams": 0, "streams_done": 0, "streams_cut": 0, "extractions": 0, "tokens": 0}
_CHUNK_CACHE: dict[tuple[str, int, bool], list[bytes]] = {}


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def stream_parts(model: str, tokens: int, include_usage: bool) -> list[bytes]:
    """The HTTP chunks of a whole stream: [role, token 0..T-1, tail], pre-encoded."""
    key = (model, tokens, include_usage)
    cached = _CHUNK_CACHE.get(key)
    if cached is not None:
        return cached
    created = int(time.time())
    base = {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_bench",
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None) -> bytes:
        return _sse(
            {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                **extra,
            }
        )

    parts = [_http_chunk(chunk({"role": "assistant", "content": "", "refusal": None}, None))]
    for k in range(tokens):
        parts.append(_http_chunk(chunk({"content": " " + WORDS[k % len(WORDS)]}, None)))
    tail = chunk({}, "stop")
    if include_usage:
        usage = {
            "prompt_tokens": 60,
            "completion_tokens": tokens,
            "total_tokens": 60 + tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }
        tail += _sse({**base, "choices": [], "usage": usage})
    tail += b"data: [DONE]\n\n"
    parts.append(_http_chunk(tail) + b"0\r\n\r\n")
    if len(_CHUNK_CACHE) > 64:
        _CHUNK_CACHE.clear()
    _CHUNK_CACHE[key] = parts
    return parts


def completion_body(model: str, request: dict[str, Any]) -> bytes:
    """The structured call's completion: no flows, and the ``title`` when the request's
    JSON schema asks for one (a conversation's first extraction, or a title call)."""
    schema = ((request.get("response_format") or {}).get("json_schema") or {}).get("schema")
    wanted = (schema or {}).get("properties", {})
    answer: dict[str, Any] = {"flows": [], "updated": []} if "flows" in wanted else {}
    if "title" in wanted:
        answer["title"] = "Bench conversation"
    content = json.dumps(answer or {"flows": []})
    return json.dumps(
        {
            "id": "chatcmpl-bench-x",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_bench",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 120, "completion_tokens": 6, "total_tokens": 126},
        },
        separators=(",", ":"),
    ).encode()


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


def _response(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
        % (status.encode(), ctype, len(body))
        + body
    )


class UpstreamProtocol(asyncio.Protocol):
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.busy = False  # a streamed response is in progress
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            STATS["streams_cut"] += 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._try_request()

    def _try_request(self) -> None:
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            self._send(_response("400 Bad Request", b"{}"))
            return
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip() or 0)
        total = head_end + 4 + length
        if len(self.buffer) < total:
            return
        body = self.buffer[head_end + 4 : total]
        self.buffer = self.buffer[total:]
        self._handle(method, target, body)
        if not self.busy and self.buffer:
            self._try_request()

    def _send(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _handle(self, method: str, target: str, body: bytes) -> None:
        path, _, query = target.partition("?")
        cfg = self.config
        tokens, pace_ms, first_ms = cfg.tokens, cfg.pace_ms, cfg.first_token_ms
        segments = path.strip("/").split("/")
        # /t/<T>/p/<ms>/v1/chat/completions
        while len(segments) >= 2 and segments[0] in ("t", "p", "f"):
            key, value = segments[0], float(segments[1])
            if key == "t":
                tokens = int(value)
            elif key == "p":
                pace_ms = value
            else:
                first_ms = value
            segments = segments[2:]
        path = "/" + "/".join(segments)
        if query:
            q = parse_qs(query)
            tokens = int(q.get("tokens", [tokens])[0])
            pace_ms = float(q.get("pace_ms", [pace_ms])[0])
            first_ms = float(q.get("first_token_ms", [first_ms])[0])
        if path == "/healthz":
            self._send(_response("200 OK", b'{"ok":true}'))
            return
        if path == "/_bench/stats":
            self._send(_response("200 OK", json.dumps(STATS).encode()))
            return
        if path == "/_bench/config" and method == "POST":
            data = json.loads(body or b"{}")
            cfg.tokens = int(data.get("tokens", cfg.tokens))
            cfg.pace_ms = float(data.get("pace_ms", cfg.pace_ms))
            cfg.first_token_ms = float(data.get("first_token_ms", cfg.first_token_ms))
            out = {"tokens": cfg.tokens, "pace_ms": cfg.pace_ms, "first": cfg.first_token_ms}
            self._send(_response("200 OK", json.dumps(out).encode()))
            return
        if path != "/v1/chat/completions" or method != "POST":
            self._send(_response("404 Not Found", b'{"error":{"message":"not found"}}'))
            return
        try:
            request = json.loads(body)
        except ValueError:
            self._send(_response("400 Bad Request", b'{"error":{"message":"bad json"}}'))
            return
        model = str(request.get("model") or cfg.model)
        if not request.get("stream"):
            STATS["extractions"] += 1
            self._send(_response("200 OK", completion_body(model, request)))
            return
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        parts = stream_parts(model, tokens, include_usage)
        STATS["streams"] += 1
        self.busy = True
        self._send(SSE_HEAD + parts[0])
        start = self.loop.time() + first_ms / 1000.0
        self._schedule(parts, 1, start, pace_ms / 1000.0)

    def _schedule(self, parts: list[bytes], index: int, start: float, pace: float) -> None:
        when = start + (index - 1) * pace
        self.timer = self.loop.call_at(when, self._tick, parts, index, start, pace)

    def _tick(self, parts: list[bytes], index: int, start: float, pace: float) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(parts[index])
        if index + 1 < len(parts):
            STATS["tokens"] += 1
            self._schedule(parts, index + 1, start, pace)
            return
        STATS["streams_done"] += 1
        self.busy = False
        if self.buffer:
            self._try_request()


async def serve(host: str, port: int, config: Config) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(config), host, port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on http://{host}:{port}/v1", flush=True)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("BENCH_UPSTREAM_PORT", 9100))
    )
    parser.add_argument("--tokens", type=int, default=int(os.environ.get("BENCH_TOKENS", 200)))
    parser.add_argument("--pace-ms", type=float, default=float(os.environ.get("BENCH_PACE_MS", 10)))
    parser.add_argument(
        "--first-token-ms", type=float, default=float(os.environ.get("BENCH_FIRST_TOKEN_MS", 0))
    )
    parser.add_argument("--model", default="gpt-4o-mini")
    args = parser.parse_args()
    config = Config(args.tokens, args.pace_ms, args.first_token_ms, args.model)
    asyncio.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
