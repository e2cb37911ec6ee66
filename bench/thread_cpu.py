"""CPU per turn of each thread of the product under load: the event loop against the
database thread, unpinned or pinned to one core.

Usage::

    .venv/bin/python bench/thread_cpu.py [--tokens 5] [--concurrency 50] [--seconds 6]
                                         [--pin] [--no-extraction]

Starts the fake upstream and the product (as ``bench/run.py`` does), drives short turns
and prints, per thread of the daphne process, its CPU time (user + system, from psutil)
per turn. ``--pin`` runs the product with ``taskset -c <last core>``, as
``docs/operations.md`` advises, so the two threads share one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # not bench/, whose profile.py would shadow the stdlib's

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench.load import Target  # noqa: E402
from bench.profile import load_for  # noqa: E402
from bench.run import (  # noqa: E402
    PY,
    Server,
    daphne_cmd,
    free_port,
    prepare_database,
    product_env,
    setup_product,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--pin", action="store_true", help="the product on the last core")
    parser.add_argument("--no-extraction", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    port = free_port()
    upstream = Server("upstream", [PY, "bench/upstream.py", "--port", str(port)], {}, port)
    upstream.start(tmp)
    product: Server | None = None
    try:
        env = product_env(
            {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
            f"http://127.0.0.1:{port}/v1",
            prepare_database(tmp, postgres=False),
            redis=False,
        )
        env["FLOWS_EXTRACTION_ENABLED"] = "false" if args.no_extraction else "true"
        key, context_id = setup_product(env)
        pport = free_port()
        cmd = daphne_cmd(pport, "chatproject.asgi:application")
        if args.pin:
            cmd = ["taskset", "-c", str((os.cpu_count() or 1) - 1), *cmd]
        product = Server("product", cmd, env, pport).start(tmp)
        target = Target.product(
            "product", product.url("/api/v1/conversations/stream"), key, context_id
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
        if product is not None:
            product.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
