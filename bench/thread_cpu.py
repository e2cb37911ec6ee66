"""CPU per turn of each thread of the product under load: the event loop against the
database thread, unpinned or pinned to one core.

Usage::

    .venv/bin/python bench/thread_cpu.py [--tokens 5] [--concurrency 50] [--seconds 6]
                                         [--pin] [--no-extraction]

Starts the fake upstream and the product (as ``bench/run.py`` does), drives short turns
and prints, per thread of the daphne process, its CPU time (user + system, from psutil)
per turn. ``--pin`` puts the product on the last core (and this script, the load
generator and the upstream on the others), as ``bench/run.py --pin`` does and
``docs/operations.md`` advises, so the product's two threads share one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the checkout, not bench/ (whose profile.py shadows the stdlib's)

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.common import (  # noqa: E402
    Server,
    load_for,
    pin_cores,
    start_upstream_and_product,
    stop_all,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument(
        "--pin", action="store_true", help="as bench/run.py --pin: the product on the last core"
    )
    parser.add_argument("--no-extraction", action="store_true")
    args = parser.parse_args()
    pin = pin_cores() if args.pin else None
    if pin:
        os.sched_setaffinity(0, pin[1])

    tmp = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    servers: list[Server] = []
    try:
        upstream, product, target = start_upstream_and_product(
            tmp, servers, extraction=not args.no_extraction, cores=pin
        )
        httpx.post(upstream.url("/_bench/config"), json={"tokens": args.tokens, "pace_ms": 10})
        asyncio.run(load_for(target, 1.0, args.concurrency, args.tokens))  # warm up
        process = psutil.Process(product.process.pid)
        before = {t.id: t.user_time + t.system_time for t in process.threads()}
        turns = asyncio.run(load_for(target, args.seconds, args.concurrency, args.tokens))
        after = {t.id: t.user_time + t.system_time for t in process.threads()}
        used = sorted(((after[i] - before.get(i, 0.0), i) for i in after), reverse=True)
        total = sum(cpu for cpu, _ in used)
        print(
            f"T={args.tokens} C={args.concurrency} pinned={args.pin} "
            f"extraction={not args.no_extraction}: {turns} turns, "
            f"{total / max(1, turns) * 1000:.2f} ms of CPU per turn"
        )
        for cpu, tid in used:
            if cpu <= 0:
                continue
            name = "event loop (main)" if tid == process.pid else "other thread"
            print(f"  thread {tid} {name}: {cpu / max(1, turns) * 1000:.2f} ms per turn")
    finally:
        stop_all(servers)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
