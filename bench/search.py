"""Search speed with a big history: one user with 100,000 messages, in process.

Usage::

    .venv/bin/python bench/search.py [--messages 100000] [--repeat 5] [--postgres]
                                     [--sqlite PATH] [--reuse]

Fills a scratch database (SQLite in a temporary file, as configured for production; or
with ``--postgres`` the PostgreSQL database ``bench_search``; ``--sqlite PATH`` keeps the
SQLite file, and a second run on it skips the filling; ``--reuse`` keeps the PostgreSQL
database of the last run instead of making it again) through the migrations and
the real triggers / indexes: one user with ``--messages`` messages in 200 conversations of
4 contexts and 1,000 flows, plus a second user with a tenth as many (whose rows the
search must skip). Message text is drawn from a 5,000-word vocabulary with Zipf-like
frequencies, so the queries range from a word in nearly every message to one in a few.

Then times what ``GET /api/v1/search/`` runs for a page (``search_for``: the count, then
the first page of 50 with snippets) over a set of queries, ``--repeat`` times each after
one warm-up, and prints p50/p95 over all of them and the median per query.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the checkout, not bench/ (whose profile.py shadows the stdlib's)

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import timedelta  # noqa: E402

from bench.common import recreate_postgres_database  # noqa: E402

VOCABULARY = 5_000
PAGE = 50


def _configure(postgres: bool, sqlite_path: str, reuse: bool) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "chatproject.settings"
    os.environ.setdefault("DJANGO_DEBUG", "false")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-search-in-process-only-not-a-production-key")
    os.environ["LOG_LEVEL"] = "WARNING"
    os.environ.pop("REDIS_URL", None)
    if postgres:
        os.environ["DATABASE_URL"] = (
            "postgres://postgres@127.0.0.1:5432/bench_search"
            if reuse
            else recreate_postgres_database("bench_search")
        )
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{sqlite_path}"


def _words(rng: random.Random) -> list[str]:
    """Pronounceable made-up words (so no stemmer merges two of them), most frequent first;
    a few real words among them for stemming."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    seen: set[str] = set()
    words = ["flight", "meeting", "budget", "invoice", "hotel", "report"]
    seen.update(words)
    while len(words) < VOCABULARY:
        word = "".join(
            rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(2, 4))
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--sqlite", metavar="PATH", help="keep (and reuse) this SQLite file")
    parser.add_argument("--reuse", action="store_true", help="PostgreSQL: the last run's data")
    args = parser.parse_args()

    tmp = None
    if args.sqlite:
        sqlite_path = str(Path(args.sqlite).resolve())
    else:
        tmp = tempfile.mkdtemp(prefix="search-bench-")
        sqlite_path = f"{tmp}/search.sqlite3"
    _configure(args.postgres, sqlite_path, args.reuse)
    try:
        _run(args)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _run(args: argparse.Namespace) -> None:
    import django

    django.setup()

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from conversations.models import Context, Conversation, Message
    from conversations.search import search_for
    from flows.models import Flow

    call_command("migrate", verbosity=0)
    rng = random.Random(23)
    words = _words(rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]

    def text(low: int, high: int) -> str:
        return " ".join(rng.choices(words, weights, k=rng.randint(low, high)))

    def fill(username: str, messages: int) -> tuple[object, list[Context]]:
        user = get_user_model().objects.create_user(username=username)
        contexts = [Context.objects.create(user=user, name=f"Context {i}") for i in range(4)]
        conversations = Conversation.objects.bulk_create(
            [Conversation(user=user, context=contexts[i % 4], title=text(2, 5)) for i in range(200)]
        )
        start = timezone.now() - timedelta(days=365)
        batch = []
        for i in range(messages):
            batch.append(
                Message(
                    user=user,
                    conversation=conversations[i % len(conversations)],
                    role="user" if i % 2 == 0 else "assistant",
                    content=text(10, 80),
                    created_at=start + timedelta(seconds=i * 60),
                )
            )
            if len(batch) == 5_000:
                Message.objects.bulk_create(batch)
                batch = []
        Message.objects.bulk_create(batch)
        Flow.objects.bulk_create(
            [
                Flow(
                    user=user,
                    context=contexts[i % 4],
                    title=(title := f"{text(2, 6)} {i}"),
                    title_key=title,
                    description=text(0, 30),
                )
                for i in range(messages // 100)
            ]
        )
        return user, contexts

    started = time.perf_counter()
    user = get_user_model().objects.filter(username="searcher").first()
    if user is None:
        with transaction.atomic():
            user, contexts = fill("searcher", args.messages)
            fill("neighbour", args.messages // 10)
        filled = f"filled in {time.perf_counter() - started:.0f} s"
    else:
        contexts = list(Context.objects.filter(user=user).order_by("name"))
        filled = "filled before"
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    queries = {
        "most common word": (words[6], None),
        "common word": (words[20], None),
        "mid word": (words[300], None),
        "rare word": (words[4000], None),
        "stemmed (flights)": ("flights", None),
        "two words": (f"{words[30]} {words[60]}", None),
        "phrase": (f'"{words[6]} {words[7]}"', None),
        "or": (f"{words[2000]} or {words[3000]}", None),
        "exclusion": (f"{words[40]} -{words[6]}", None),
        "no match": ("zzzzqqq", None),
        "common, one context": (words[20], contexts[0].id),
        "hostile syntax": ('NEAR("a" b) OR * ^x "', None),
    }
    samples: list[float] = []
    per_query: dict[str, tuple[float, int]] = {}
    for label, (q, context_id) in queries.items():
        times = []
        for i in range(args.repeat + 1):
            t0 = time.perf_counter()
            results = search_for(user=user, q=q, context_id=context_id)
            count = results.count()
            page = results[0:PAGE]
            elapsed = (time.perf_counter() - t0) * 1000
            assert len(page) == min(PAGE, count)
            if i:  # the first is a warm-up
                times.append(elapsed)
        samples.extend(times)
        per_query[label] = (statistics.median(times), count)

    samples.sort()
    p50 = statistics.median(samples)
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    vendor = connection.vendor
    mine = Message.objects.filter(user=user).count()
    others = Message.objects.exclude(user=user).count()
    flows = Flow.objects.filter(user=user).count()
    print(
        f"database: {vendor}; {mine:,} messages of the user (+{others:,} of another), "
        f"{flows:,} flows; {filled}"
    )
    print(
        f"search (count + first page of {PAGE} with snippets), {len(samples)} samples: "
        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms"
    )
    print(f"{'query':<22} {'matches':>8} {'median ms':>10}")
    for label, (median, count) in per_query.items():
        print(f"{label:<22} {count:>8,} {median:>10.1f}")


if __name__ == "__main__":
    main()
