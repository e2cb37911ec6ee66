"""Profile the product under load with py-spy: where its CPU goes per turn and per chunk.

    python bench/profile.py [--seconds 8] [--concurrency 50] [--short-concurrency 10]

Starts the fake upstream and the product (as ``bench/run.py`` does, extraction on), then
samples the daphne process with ``py-spy record --format raw --function`` in two
scenarios: long replies (200 tokens at 10 ms, C streams: the per-chunk path) and short
replies (5 tokens, back to back: the per-turn path). Prints, for each, the functions
with the most samples on-CPU as leaf ("self") and anywhere on the stack ("total"), and
keeps the collapsed stacks and flame graphs (SVG) in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.load import Target, run_load  # noqa: E402
from bench.run import (  # noqa: E402
    PY,
    RESULTS,
    Server,
    daphne_cmd,
    free_port,
    prepare_database,
    product_env,
    setup_product,
)

SITE = re.compile(r"^.*site-packages/")


def short_frame(frame: str) -> str:
    """``func (path:line)`` -> ``func (package/module.py)``."""
    frame = re.sub(r":\d+\)$", ")", frame)
    frame = SITE.sub("", frame.replace("(" + str(ROOT) + "/", "("))
    frame = re.sub(r"\(/usr/lib/python3[.\d]*/|\(/.*?/lib/python3[.\d]*/", "(stdlib/", frame)
    return frame


#: Leaf frames of threads that wait (py-spy's idle detection misses them here).
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py)",
    "Condition.wait (threading.py)",
    "Thread._wait_for_tstate_lock (threading.py)",
    "EpollSelector.select (selectors.py)",
    "_PollLikeSelector.select (selectors.py)",
)


def aggregate(raw: Path, top: int) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """Self and total samples per function, idle (waiting) samples left out."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [short_frame(f) for f in stack.split(";")]
        if frames[-1] in IDLE_LEAVES:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return samples, own.most_common(top), total.most_common(top)


#: Only sample the thread that holds the GIL (``--gil``): Python CPU, without the threads
#: that wait on a lock in C (SQLite's busy handler looks busy to py-spy).
GIL_ONLY: list[bool] = [False]


def record(pid: int, seconds: float, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    return subprocess.Popen(
        [
            pyspy,
            "record",
            *(["--gil"] if GIL_ONLY[0] else []),
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--function",
            "--format",
            fmt,
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def load_for(target: Target, seconds: float, concurrency: int, tokens: int) -> int:
    deadline = time.monotonic() + seconds
    turns = 0
    while time.monotonic() < deadline:
        results, _ = await run_load(
            target,
            concurrency=concurrency,
            turns=1,
            expected_tokens=tokens,
            ramp=0.2,
            timeout=30,
        )
        turns += len(results)
    return turns


def scenario(
    name: str,
    server: Server,
    upstream: Server,
    target: Target,
    *,
    tokens: int,
    concurrency: int,
    seconds: float,
    top: int,
) -> str:
    httpx.post(upstream.url("/_bench/config"), json={"tokens": tokens, "pace_ms": 10})
    asyncio.run(load_for(target, 1.0, concurrency, tokens))  # warm
    raw = RESULTS / f"profile-{name}.txt"
    svg = RESULTS / f"profile-{name}.svg"
    spy = record(server.process.pid, seconds, raw, "raw")
    cpu0 = server.cpu()
    turns = asyncio.run(load_for(target, seconds, concurrency, tokens))
    _, err = spy.communicate(timeout=seconds + 30)
    cpu = server.cpu() - cpu0
    if not raw.exists():
        return f"py-spy failed: {err.decode(errors='replace')[-800:]}"
    # The same stacks as a flame graph, for people.
    spy_svg = record(server.process.pid, min(seconds, 4), svg, "flamegraph")
    asyncio.run(load_for(target, min(seconds, 4), concurrency, tokens))
    spy_svg.communicate(timeout=60)
    samples, own, total = aggregate(raw, top)
    lines = [
        f"## {name}: T={tokens}, C={concurrency}, {turns} turns, server CPU {cpu:.2f} s "
        f"({cpu / max(1, turns) * 1000:.1f} ms per turn), {samples} busy samples "
        "(waiting threads left out)",
        "",
        "self (leaf) | samples | % || total (on stack) | samples | %",
        "---|---|---|---|---|---",
    ]
    for (fs, cs), (ft, ct) in zip(own, total, strict=False):
        lines.append(
            f"{fs} | {cs} | {cs / samples * 100:.1f} || {ft} | {ct} | {ct / samples * 100:.1f}"
        )
    return "\n".join(lines)


def start_product(
    tmp: Path, servers: list[Server], *, extraction: bool
) -> tuple[Server, Server, Target]:
    """Start the fake upstream and the product on it (fresh SQLite, bench settings), as
    ``bench/run.py`` does; both are appended to ``servers``, for the caller to stop.
    Returns the upstream, the product and the load generator's target."""
    port = free_port()
    upstream = Server("upstream", [PY, "bench/upstream.py", "--port", str(port)], {}, port)
    servers.append(upstream.start(tmp))
    env = product_env(
        {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
        f"http://127.0.0.1:{port}/v1",
        prepare_database(tmp, postgres=False),
        redis=False,
    )
    env["FLOWS_EXTRACTION_ENABLED"] = "true" if extraction else "false"
    key, context_id = setup_product(env)
    pport = free_port()
    product = Server("product", daphne_cmd(pport, "chatproject.asgi:application"), env, pport)
    servers.append(product.start(tmp))
    target = Target.product("product", product.url("/api/v1/conversations/stream"), key, context_id)
    return upstream, product, target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--short-concurrency", type=int, default=10)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--no-extraction", action="store_true")
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (CPU)"
    )
    parser.add_argument(
        "--from-raw", action="store_true", help="only re-read bench/results/profile-*.txt"
    )
    args = parser.parse_args()
    GIL_ONLY[0] = args.gil
    if args.from_raw:
        for name in ("chunks", "turns"):
            samples, own, total = aggregate(RESULTS / f"profile-{name}.txt", args.top)
            print(f"## {name}: {samples} busy samples")
            for (fs, cs), (ft, ct) in zip(own, total, strict=False):
                print(
                    f"{fs} | {cs} | {cs / samples * 100:.1f} || {ft} | {ct} | "
                    f"{ct / samples * 100:.1f}"
                )
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    servers: list[Server] = []
    try:
        upstream, product, target = start_product(tmp, servers, extraction=not args.no_extraction)
        RESULTS.mkdir(parents=True, exist_ok=True)
        reports = [
            scenario(
                "chunks",
                product,
                upstream,
                target,
                tokens=200,
                concurrency=args.concurrency,
                seconds=args.seconds,
                top=args.top,
            ),
            scenario(
                "turns",
                product,
                upstream,
                target,
                tokens=5,
                concurrency=args.short_concurrency,
                seconds=args.seconds,
                top=args.top,
            ),
        ]
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    text = "# py-spy profile of the product under load\n\n" + "\n\n".join(reports) + "\n"
    (RESULTS / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
