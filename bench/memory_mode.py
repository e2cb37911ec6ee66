"""Memory per open stream: ``python bench/run.py --memory`` (a minute or two).

The product (as ``bench/run.py`` runs it: SQLite, flow extraction on) and the reference it
is compared with (``django-aiohttp``, bench/references.py) each hold C streams open at
once, C stepping 0, 100, 200, 400: the upstream (bench/upstream.py) sends a long reply
slowly (:data:`TOKENS` tokens at :data:`PACE_MS` ms), so every stream stays open for the
whole step (after a warm-up of a few short turns, not measured). At each step, once
every new stream has its first chunk, the server's resident memory is sampled for
:data:`SAMPLE_S` seconds (the peak counts); the figure is the least-squares slope of
that peak over the streams open (a stream refused with 503 ``server_busy`` is not open
and not counted). The streams are plain sockets that read and discard (this module's
own, a few lines: the load generator's clients wait for each turn to end).

Writes the table and the target line (< 100 KB per open stream) to stdout,
``bench/results/memory.md`` and ``memory.json`` (which ``make bench``'s target lines read).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    PY,
    RESULTS,
    SHORT,
    STREAM_PATH,
    Server,
    clean_env,
    configure_upstream,
    daphne_cmd,
    free_port,
    machine,
    now_iso,
    product_env,
    setup_product,
    sqlite_url,
    start_upstream,
    stop_all,
    upstream_base_url,
)
from bench.load import Target, run_load

STEPS = (0, 100, 200, 400)
TOKENS = 3000
PACE_MS = 100.0  # 10 chunks / s per stream: 4,000 / s at C=400, far from saturation
SAMPLE_S = 2.0
FIRST_CHUNK_TIMEOUT_S = 60.0
TARGET_KB = 100.0


class OpenStream:
    """One streaming request held open: reads and discards until closed."""

    def __init__(self) -> None:
        self.first_chunk = asyncio.Event()
        self.refused = False
        self.failed = ""
        self.task: asyncio.Task[None] | None = None

    async def run(self, target: Target) -> None:
        url = httpx.URL(target.url)
        writer = None
        try:
            reader, writer = await asyncio.open_connection(url.host, url.port)
            headers = "".join(f"{k}: {v}\r\n" for k, v in target.headers.items())
            writer.write(
                f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                f"{headers}Content-Length: {len(target.body)}\r\n\r\n".encode()
                + target.body
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                self.refused = status == 503
                self.failed = f"http_{status}"
                self.first_chunk.set()
                return
            while data := await reader.read(65536):
                if not self.first_chunk.is_set() and b"event: chunk" in data:
                    self.first_chunk.set()
            self.failed = "ended"  # the reply is longer than the run: it should not end
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.failed = f"exc:{type(exc).__name__}"
        finally:
            self.first_chunk.set()
            if writer is not None:
                writer.close()


async def measure(server: Server, target: Target) -> list[dict[str, Any]]:
    """Step through :data:`STEPS` on one server: the peak RSS at each count of open streams."""
    streams: list[OpenStream] = []
    points = []
    try:
        for count in STEPS:
            while len(streams) < count:
                stream = OpenStream()
                stream.task = asyncio.create_task(stream.run(target))
                streams.append(stream)
                if len(streams) % 20 == 0:
                    await asyncio.sleep(0.05)  # a short ramp, not one burst
            await asyncio.wait_for(
                asyncio.gather(*(s.first_chunk.wait() for s in streams)),
                FIRST_CHUNK_TIMEOUT_S,
            )
            await asyncio.sleep(0.5)
            peak = 0
            deadline = time.monotonic() + SAMPLE_S
            while time.monotonic() < deadline:
                peak = max(peak, server.rss())
                await asyncio.sleep(0.05)
            open_now = sum(1 for s in streams if not s.failed)
            points.append(
                {
                    "target": server.name,
                    "C": count,
                    "open": open_now,
                    "refused": sum(1 for s in streams if s.refused),
                    "failed": sum(1 for s in streams if s.failed and not s.refused),
                    "rss_peak_mb": round(peak / 2**20, 2),
                }
            )
            print(f"  {server.name:15} C={count:<4} open={open_now:<4} peak RSS "
                  f"{peak / 2**20:.1f} MB", flush=True)  # fmt: skip
    finally:
        for stream in streams:
            if stream.task is not None:
                stream.task.cancel()
        await asyncio.gather(*(s.task for s in streams if s.task), return_exceptions=True)
    return points


def slope_kb(points: list[dict[str, Any]]) -> float | None:
    """Least-squares slope of peak RSS (KB) over open streams."""
    xy = [(p["open"], p["rss_peak_mb"] * 1024) for p in points]
    if len(xy) < 2:
        return None
    mx = sum(x for x, _ in xy) / len(xy)
    my = sum(y for _, y in xy) / len(xy)
    den = sum((x - mx) ** 2 for x, _ in xy)
    return round(sum((x - mx) * (y - my) for x, y in xy) / den, 1) if den else None


def memory_line(result: dict[str, Any], when: str = "") -> str:
    """The target line of a run's result (``memory.json``)."""
    slope = result.get("slope_kb", {}).get("product")
    verdict = "n/a" if slope is None else ("**met**" if slope < TARGET_KB else "**not met**")
    ref = result.get("slope_kb", {}).get("django-aiohttp")
    return (
        f"- memory per open stream < {TARGET_KB:g} KB, streams held open (`--memory`): "
        f"{verdict} ({slope} KB per open stream over {result.get('steps')}; django-aiohttp "
        f"{ref} KB{when})"
    )


async def _run(servers: dict[str, Server], targets: dict[str, Target]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        # Warm-up, not measured: imports, connection pools, caches a first turn fills.
        await configure_upstream(http, servers["upstream"], tokens=SHORT, pace_ms=1)
        for target in targets.values():
            await run_load(target, concurrency=8, turns=3, expected_tokens=SHORT, timeout=60)
        await configure_upstream(http, servers["upstream"], tokens=TOKENS, pace_ms=PACE_MS)
    rows = []
    for name in ("django-aiohttp", "product"):
        rows += await measure(servers[name], targets[name])
        await asyncio.sleep(1.0)  # the closed streams end on the server side
    return rows


def run_memory(*, keep: bool = False) -> None:
    """The memory mode: starts its servers, steps, writes the report."""
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    servers: dict[str, Server] = {}
    try:
        base_env = clean_env()
        servers["upstream"] = start_upstream(tmp, base_env)
        upstream_url = upstream_base_url(servers["upstream"])
        port = free_port()
        servers["django-aiohttp"] = Server(
            "django-aiohttp",
            [PY, "bench/references.py", "django", "--client", "aiohttp", "--port", str(port)],
            {**base_env, "BENCH_UPSTREAM": upstream_url},
            port,
        ).launch(tmp)
        env = product_env(base_env, upstream_url, sqlite_url(tmp))
        key, context_id = setup_product(env)
        port = free_port()
        servers["product"] = Server("product", daphne_cmd(port), env, port).launch(tmp)
        for server in servers.values():
            server.wait_ready(timeout=120)
        targets = {
            "django-aiohttp": Target.relay(
                "django-aiohttp", servers["django-aiohttp"].url("/relay")
            ),
            "product": Target.product(
                "product", servers["product"].url(STREAM_PATH), key, context_id
            ),
        }
        rows = asyncio.run(_run(servers, targets))
    finally:
        stop_all(list(servers.values()))
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "date": now_iso(),
        "steps": list(STEPS),
        "slope_kb": {
            name: slope_kb([r for r in rows if r["target"] == name])
            for name in ("product", "django-aiohttp")
        },
        "rows": rows,
    }
    lines = [
        "# Memory per open stream",
        "",
        f"{result['date']}, {machine()}; streams held open ({TOKENS} tokens at {PACE_MS:g} ms), "
        f"peak RSS over {SAMPLE_S:g} s at each step; run took "
        f"{time.monotonic() - started:.0f} s (`python bench/run.py --memory`).",
        "",
        "| target | C | open | refused | failed | peak RSS MB |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['target']} | {r['C']} | {r['open']} | {r['refused']} | {r['failed']} "
            f"| {r['rss_peak_mb']} |"
            for r in rows
        ),
        "",
        memory_line(result),
        "",
    ]
    md = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory.md").write_text(md)
    (RESULTS / "memory.json").write_text(json.dumps(result, indent=1))
    print()
    print(md)
    print(f"Saved {RESULTS / 'memory.md'} and {RESULTS / 'memory.json'}.")
