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
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the checkout, not bench/ (whose profile.py shadows the stdlib's)

from bench.common import (  # noqa: E402
    LONG,
    PY,
    RESULTS,
    SHORT,
    Server,
    load_for,
    start_upstream_and_product,
    stop_all,
)
from bench.load import Target  # noqa: E402

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
        upstream, product, target = start_upstream_and_product(
            tmp, servers, extraction=not args.no_extraction
        )
        RESULTS.mkdir(parents=True, exist_ok=True)
        reports = [
            scenario(
                name,
                product,
                upstream,
                target,
                tokens=tokens,
                concurrency=concurrency,
                seconds=args.seconds,
                top=args.top,
            )
            for name, tokens, concurrency in (
                ("chunks", LONG, args.concurrency),
                ("turns", SHORT, args.short_concurrency),
            )
        ]
    finally:
        stop_all(servers)
        shutil.rmtree(tmp, ignore_errors=True)
    text = "# py-spy profile of the product under load\n\n" + "\n\n".join(reports) + "\n"
    (RESULTS / "profile.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
