"""CPU cost of a chat turn's two database units, in process: what every turn pays once.

Usage::

    .venv/bin/python bench/turn_cost.py [--turns 500] [--repeat 5] [--postgres] [--profile N]

Runs the turn's database work as the bench's load generator causes it (token
authentication, a new conversation per turn from a context, client-sent history, a
complete reply with no flows and an extraction charge), without HTTP or a provider:

- ``prepare``: ``authenticate`` then ``prepare_turn`` (validation, quota lock and
  reserve, the conversation and both messages stored), as the SSE view runs it;
- ``finish``: ``turn_finish`` (the reply's final state, the usage ledger, quota settled).

Prints the best CPU time (``time.thread_time``) per unit over ``--repeat`` rounds and the
SQL statements each executes. ``--profile N`` prints cProfile's top N functions by
cumulative time for one round. SQLite (a temporary file, as configured for production:
WAL, ``BEGIN IMMEDIATE``) by default; ``--postgres`` uses a scratch database ``bench_turn``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the checkout, not bench/ (whose profile.py shadows the stdlib's)

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from io import StringIO  # noqa: E402

from bench.common import recreate_postgres_database  # noqa: E402


def _configure(postgres: bool, tmp: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatproject.settings"
    os.environ.setdefault("DJANGO_DEBUG", "false")
    os.environ.setdefault(
        "DJANGO_SECRET_KEY", "bench-turn-cost-in-process-only-not-a-production-key"
    )
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ["QUOTA_REQUESTS_LIMIT"] = "1000000000"
    os.environ["QUOTA_TOKENS_LIMIT"] = str(10**15)
    os.environ["CHAT_MAX_CONCURRENT_STREAMS"] = "100000"
    os.environ["AI_PROVIDER"] = "mock"
    os.environ.pop("REDIS_URL", None)
    if postgres:
        os.environ["DATABASE_URL"] = recreate_postgres_database("bench_turn")
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/turn.sqlite3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="turn-cost-")
    _configure(args.postgres, tmp)
    import django

    django.setup()

    from django.contrib.auth.models import AnonymousUser
    from django.core.management import call_command
    from django.db import connection
    from django.test import RequestFactory
    from django.test.utils import CaptureQueriesContext

    from ai.providers.base import Usage
    from conversations.models import Message
    from conversations.streaming.views import _prepare
    from conversations.turn_finish import ReplyOutcome, turn_finish

    call_command("migrate", verbosity=0)
    out = StringIO()
    call_command(
        "demo_setup",
        username="bench",
        contexts=["bench"],
        requests_limit=int(os.environ["QUOTA_REQUESTS_LIMIT"]),
        tokens_limit=int(os.environ["QUOTA_TOKENS_LIMIT"]),
        as_json=True,
        stdout=out,
    )
    made = json.loads(out.getvalue())
    token_key, context_id = made["token"], made["context_ids"][0]

    factory = RequestFactory()
    body = json.dumps(
        {"context_id": context_id, "messages": [{"role": "user", "content": "Hello " * 8}]}
    )

    def request():  # type: ignore[no-untyped-def]
        req = factory.post(
            "/api/v1/conversations/stream",
            data=body,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Token {token_key}",
            HTTP_ACCEPT="text/event-stream",
        )
        req.user = AnonymousUser()
        req.session = {}  # type: ignore[assignment]
        return req

    def finish(turn):  # type: ignore[no-untyped-def]
        outcome = ReplyOutcome(
            status=Message.Status.COMPLETE,
            finish_reason="stop",
            content="word " * 200,
            usage=Usage(input_tokens=30, output_tokens=200),
            duration_ms=2000,
        )
        return turn_finish(
            turn=turn,
            outcome=outcome,
            drafts=[],
            extraction_usage=Usage(input_tokens=300, output_tokens=5),
        )

    def one_round(n: int) -> tuple[float, float]:
        prep = fin = 0.0
        for _ in range(n):
            req = request()
            t0 = time.thread_time()
            turn, _provider, _user = _prepare(req)
            t1 = time.thread_time()
            finish(turn)
            t2 = time.thread_time()
            prep += t1 - t0
            fin += t2 - t1
        return prep / n, fin / n

    one_round(min(50, args.turns))  # warm-up
    with CaptureQueriesContext(connection) as queries:
        turn, _provider, _user = _prepare(request())
    prepared = [q["sql"] for q in queries.captured_queries]
    with CaptureQueriesContext(connection) as queries:
        finish(turn)
    finished = [q["sql"] for q in queries.captured_queries]

    best_prep = best_fin = float("inf")
    for _ in range(args.repeat):
        prep, fin = one_round(args.turns)
        best_prep, best_fin = min(best_prep, prep), min(best_fin, fin)

    vendor = connection.vendor
    print(f"database: {vendor}; {args.turns} turns x {args.repeat} rounds, best round")
    print(f"prepare: {best_prep * 1e3:6.2f} ms CPU, {len(prepared)} statements")
    print(f"finish:  {best_fin * 1e3:6.2f} ms CPU, {len(finished)} statements")
    print(
        f"turn:    {(best_prep + best_fin) * 1e3:6.2f} ms CPU, "
        f"{len(prepared) + len(finished)} statements"
    )
    if os.environ.get("TURN_COST_SQL"):
        for name, sqls in (("prepare", prepared), ("finish", finished)):
            print(f"\n{name}:")
            for sql in sqls:
                print("  ", sql[:160])
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one_round(args.turns)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)


if __name__ == "__main__":
    main()
