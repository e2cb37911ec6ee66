"""One burst of C turns at once against one product process: where the end of a turn waits.

    python bench/saturation.py [-c 500] [--tokens 200] [--rounds 1] [--profile]
        [--no-extraction] [--env NAME=VALUE ...] [--short-c 50]

Starts the fake upstream and the product (as ``bench/run.py`` does: fresh SQLite, flow
extraction on, ``LOG_LEVEL=WARNING``), warms it with a few turns, then per round fires C
turns of T tokens at the same instant (no ramp: the issue's worst case) and prints, per
round: wall time, server CPU per 1k tokens, TTFC p50/p99, the ``done`` after the last
chunk ("tail") p50/p99, the turns refused (503 ``server_busy``) and other errors. With
``--short-c N`` it also runs N turns of 5 tokens at once and prints the CPU per turn.
``--env`` passes settings to the product (e.g. ``CHAT_MAX_PROCESS_STREAMS=0`` to turn
admission control off, ``DB_THREADS=2``); ``--profile`` records the burst with py-spy
(``--idle``, every thread) into ``bench/results/saturation-*.txt`` and prints the top
frames. Each run is one burst on a shared machine: compare before/after by interleaving
runs in the same conditions, never against a figure from another time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the checkout, not bench/ (whose profile.py shadows the stdlib's)

from bench.common import (  # noqa: E402
    PACE_MS,
    PY,
    RESULTS,
    SHORT,
    STREAM_PATH,
    Server,
    clean_env,
    product_env,
    setup_product,
    sqlite_url,
    start_product,
    start_upstream,
    stop_all,
    upstream_base_url,
)
from bench.load import Target, run_load, summarize  # noqa: E402


def py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on every thread, waits included (``--idle``), raw collapsed stacks."""
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    cmd = [pyspy, "record", "--idle", "--threads", "--pid", str(pid), "--rate", "100"]
    cmd += ["--duration", str(int(seconds)), "--function", "--format", "raw", "-o", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def top_frames(raw: Path, top: int = 25) -> list[tuple[str, int]]:
    """Samples per frame anywhere on the stack (every thread, waits included)."""
    from collections import Counter

    total: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            for frame in set(stack.split(";")):
                total[frame.split(" (")[0] + " (" + frame.rsplit("/", 1)[-1]] += int(count)
    return total.most_common(top)


async def burst(
    target: Target, server: Server, upstream: Server, *, concurrency: int, tokens: int
) -> dict[str, Any]:
    """C turns at once; the summary with the server's CPU."""
    async with httpx.AsyncClient() as client:
        r = await client.post(
            upstream.url("/_bench/config"), json={"tokens": tokens, "pace_ms": PACE_MS}
        )
        r.raise_for_status()
    await asyncio.sleep(0.5)
    cpu0 = server.cpu()
    host0 = psutil.cpu_times()
    results, wall = await run_load(
        target,
        concurrency=concurrency,
        turns=1,
        expected_tokens=tokens,
        ramp=0.0,
        timeout=max(60.0, concurrency * tokens / 1000),
    )
    cpu = server.cpu() - cpu0
    host1 = psutil.cpu_times()
    host_total = sum(host1) - sum(host0)
    row = summarize(results, tokens=tokens, pace_ms=PACE_MS)
    ok_tokens = row["tokens_ok"]
    row.update(
        C=concurrency,
        T=tokens,
        wall_s=round(wall, 2),
        cpu_s=round(cpu, 2),
        cpu_per_1k_tokens=round(cpu / ok_tokens * 1000, 4) if ok_tokens else None,
        cpu_per_ok_turn_ms=round(cpu / max(1, row["ok"]) * 1000, 2),
        host_busy=round(1 - (host1.idle - host0.idle) / max(1e-9, host_total), 2),
        done_p99=None,
    )
    ends = sorted(r.total for r in results if r.ok)
    if ends:
        row["done_p99"] = round(ends[min(len(ends) - 1, int(0.99 * len(ends)))] * 1000)
        row["done_p50"] = round(ends[len(ends) // 2] * 1000)
    return row


def show(label: str, row: dict[str, Any]) -> None:
    keys = (
        "ok", "errors", "error_kinds", "wall_s", "cpu_s", "cpu_per_1k_tokens",
        "cpu_per_ok_turn_ms", "ttfc_p50", "ttfc_p99", "tail_p50", "done_p50", "done_p99",
        "gap_p99", "host_busy",
    )  # fmt: skip
    print(label, json.dumps({k: row.get(k) for k in keys}), flush=True)


def metrics_lines(server: Server, prefixes: tuple[str, ...]) -> list[str]:
    """The product's /metrics lines starting with one of ``prefixes``."""
    try:
        text = httpx.get(server.url("/metrics"), timeout=5).text
    except httpx.HTTPError:
        return []
    return [line for line in text.splitlines() if line.startswith(prefixes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--concurrency", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--short-c", type=int, default=0, help="then N turns of 5 tokens")
    parser.add_argument("--no-extraction", action="store_true")
    parser.add_argument("--profile", action="store_true", help="py-spy the first burst")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the product")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-saturation-"))
    servers: list[Server] = []
    try:
        base_env = clean_env()
        upstream = start_upstream(tmp, base_env)
        servers.append(upstream)
        env = product_env(base_env, upstream_base_url(upstream), sqlite_url(tmp))
        env.update(dict(item.split("=", 1) for item in args.env))
        key, context_id = setup_product(env)
        product = start_product(tmp, env, extraction=not args.no_extraction)
        servers.append(product)
        target = Target.product("product", product.url(STREAM_PATH), key, context_id)
        show("warm-up", asyncio.run(burst(target, product, upstream, concurrency=5, tokens=20)))
        for n in range(args.rounds):
            spy = None
            raw = RESULTS / f"saturation-{int(time.time())}.txt"
            if args.profile and n == 0:
                RESULTS.mkdir(parents=True, exist_ok=True)
                spy = py_spy(product.process.pid, 30, raw)
                time.sleep(1.0)
            row = asyncio.run(
                burst(target, product, upstream, concurrency=args.concurrency, tokens=args.tokens)
            )
            show(f"C={args.concurrency} T={args.tokens} round {n + 1}", row)
            if spy is not None:
                spy.terminate()
                spy.communicate(timeout=60)
                if raw.exists():
                    for frame, count in top_frames(raw):
                        print(f"  {count:7d}  {frame}")
        if args.short_c:
            for n in range(max(1, args.rounds)):
                row = asyncio.run(
                    burst(target, product, upstream, concurrency=args.short_c, tokens=SHORT)
                )
                show(f"C={args.short_c} T={SHORT} round {n + 1}", row)
        for line in metrics_lines(product, ("chat_refus", "chat_shed", "chat_extraction")):
            print("  metrics:", line)
    finally:
        stop_all(servers)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
