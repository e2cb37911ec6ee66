"""CPU cost per relayed chunk of each provider adapter, against the local fake servers.

Usage::

    .venv/bin/python bench/chunk_cost.py [--chunks 2000] [--repeat 5] [--paced MS]

For each adapter (mock, OpenAI, Anthropic) one reply of ``--chunks`` text chunks is
streamed through ``stream_reply`` and the CPU time of the event loop's thread
(``time.thread_time``, so the fake server's thread does not count) is divided by the
number of chunks; the best of ``--repeat`` runs is shown. Each real adapter is measured
on both SDK HTTP clients (``AI_HTTP_CLIENT``: aiohttp, the default, and httpx). For
comparison, the same streams are read the naive way, iterating the SDK's typed
chunk/event objects, and the "floor" row only reads the body bytes through the SDK's
default httpx2 client (h11 decoding one HTTP chunk per event, as the real APIs send them).

``--paced MS`` makes the fake servers wait MS milliseconds between chunks, so that every
chunk is its own read, as with a real model streaming tokens; unpaced, one read carries
many chunks and the per-read costs (the HTTP client's) are shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

import anthropic  # noqa: E402
import openai  # noqa: E402

from ai.providers._clients import HTTP_CLIENTS  # noqa: E402
from ai.providers.anthropic import AnthropicProvider  # noqa: E402
from ai.providers.base import ChatMessage, StreamEnd  # noqa: E402
from ai.providers.mock import MockProvider  # noqa: E402
from ai.providers.openai import OpenAIProvider  # noqa: E402
from tests.fakes.anthropic_server import AnthropicScript, FakeAnthropicServer  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript  # noqa: E402

SYSTEM = "You are an assistant for the user's Bench context."
KEY = "sk-bench-fake"


async def _consume_provider(stream: AsyncIterator[str | StreamEnd]) -> int:
    count = 0
    async for item in stream:
        if isinstance(item, str):
            count += 1
    return count


def _replying(
    provider: object, messages: list[ChatMessage], chunks: int
) -> Callable[[], Awaitable[int]]:
    """A run that streams one reply through ``provider.stream_reply`` and counts its deltas."""

    def run() -> Awaitable[int]:
        return _consume_provider(
            provider.stream_reply(  # type: ignore[attr-defined]
                messages=messages, system=SYSTEM, max_output_tokens=chunks
            )
        )

    return run


async def _measure(run: Callable[[], Awaitable[int]], chunks: int, repeat: int) -> float:
    """Best CPU microseconds per chunk over ``repeat`` runs (after one warm-up run)."""
    await run()
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        got = await run()
        elapsed = time.thread_time() - started
        if got != chunks:
            raise RuntimeError(f"expected {chunks} chunks, got {got}")
        best = min(best, elapsed / chunks * 1e6)
    return best


async def _on_each_client(
    name: str,
    build: Callable[[str], object],
    messages: list[ChatMessage],
    chunks: int,
    repeat: int,
) -> list[tuple[str, float]]:
    """One row per SDK HTTP client (``AI_HTTP_CLIENT``) for the adapter ``build`` makes."""
    return [
        (
            f"{name}: stream_reply (raw SSE + json.loads), {kind}",
            await _measure(_replying(build(kind), messages, chunks), chunks, repeat),
        )
        for kind in HTTP_CLIENTS
    ]


async def main(chunks: int, repeat: int, paced_ms: float = 0.0) -> list[tuple[str, float]]:
    tokens = [f" w{i % 97}" for i in range(chunks)]
    delay = paced_ms / 1000.0
    messages = [ChatMessage("user", f"[[mock:long:{chunks}]]")]
    rows: list[tuple[str, float]] = []

    mock = MockProvider(token_delay_ms=0)
    rows.append(
        (
            "mock: stream_reply",
            await _measure(_replying(mock, messages, chunks), chunks, repeat),
        )
    )

    with FakeOpenAIServer() as server:
        server.default = OpenAIScript(tokens=tokens, token_delay=delay)
        rows += await _on_each_client(
            "openai",
            lambda kind: OpenAIProvider(
                model="gpt-4o-mini", api_key=KEY, base_url=server.base_url, http_client=kind
            ),
            messages,
            chunks,
            repeat,
        )
        client = openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url)

        async def naive_openai() -> int:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "x"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            count = 0
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    count += 1
            return count

        naive = await _measure(naive_openai, chunks, repeat)
        rows.append(("openai: SDK typed chunks (naive)", naive))

        async def floor_openai() -> int:
            async with client.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True
            ) as response:
                async for _ in response.http_response.aiter_bytes():
                    pass
            return chunks

        rows.append(
            ("openai: HTTP body bytes only (floor)", await _measure(floor_openai, chunks, repeat))
        )

    with FakeAnthropicServer() as server:
        server.default = AnthropicScript(tokens=tokens, token_delay=delay)
        rows += await _on_each_client(
            "anthropic",
            lambda kind: AnthropicProvider(
                model="claude-sonnet-4-6", api_key=KEY, base_url=server.base_url, http_client=kind
            ),
            messages,
            chunks,
            repeat,
        )
        aclient = anthropic.AsyncAnthropic(api_key=KEY, base_url=server.base_url)

        async def naive_anthropic() -> int:
            stream = await aclient.messages.create(
                model="claude-sonnet-4-6",
                max_tokens=chunks,
                system=SYSTEM,
                messages=[{"role": "user", "content": "x"}],
                stream=True,
            )
            count = 0
            async for event in stream:
                if event.type == "content_block_delta" and event.delta.type == "text_delta":
                    count += 1
            return count

        rows.append(
            ("anthropic: SDK typed events (naive)", await _measure(naive_anthropic, chunks, repeat))
        )
    return rows


def _print(rows: list[tuple[str, float]], chunks: int, paced_ms: float) -> None:
    width = max(len(name) for name, _ in rows)
    pace = f", {paced_ms:g} ms apart" if paced_ms else ", unpaced"
    print(f"CPU per relayed chunk, {chunks} chunks{pace}, best of runs (time.thread_time)")
    print(f"{'adapter'.ljust(width)}  µs/chunk")
    print(f"{'-' * width}  --------")
    for name, micros in rows:
        print(f"{name.ljust(width)}  {micros:8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--paced", type=float, default=0.0, metavar="MS")
    args = parser.parse_args()
    _print(asyncio.run(main(args.chunks, args.repeat, args.paced)), args.chunks, args.paced)
