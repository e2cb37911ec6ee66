"""A bounded soak: hundreds of chat turns against two daphne processes, then invariants.

Everything runs on 127.0.0.1: a dedicated PostgreSQL database (``chat_soak`` by default,
dropped and created, then migrated), the Redis channel layer on its own db (4), and two
daphne processes with the offline mock provider. Worker threads run turns on random
servers for ``--minutes`` (or until ``--turns``), mixing:

- full turns (with flow-producing text, so duplicate flows would show);
- disconnects after a few events, then a resume with ``Last-Event-ID`` (on either
  process) whose text is assembled with what was read before the disconnect;
- cancels (``POST /api/v1/messages/{id}/cancel``, on either process) mid-reply;
- users with a tiny quota (requests or tokens), so quota refusals happen.

Afterwards it checks, in the database: no message left ``streaming``; every resuming
client assembled exactly the stored reply; per user, ``requests_used`` equals the number
of complete replies and ``tokens_used`` the sum of the usage ledger's ``tokens_charged``;
no reservation held; no duplicate open flows (same context and title, status open). It
prints the figures and exits 1 on any violation.

    .venv/bin/python bench/soak.py                # about 3 minutes
    .venv/bin/python bench/soak.py --minutes 1 --concurrency 8
    .venv/bin/python bench/soak.py --turns 300     # stop after 300 turns
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the checkout, not bench/ (whose profile.py shadows the stdlib's)

from bench.common import (  # noqa: E402
    PY,
    SECRET_KEY,
    Server,
    daphne_cmd,
    drop_postgres_database,
    flush_redis,
    free_port,
    recreate_postgres_database,
    stop_all,
)

TEXTS = [
    "I need to book a flight and call the client",
    "Remind me to renew the passport. Also I have to water the plants",
    "Todo: write the report, then I should email the team",
    "What is on my plate today?",
    "I must pay the rent tomorrow and don't forget to buy milk",
]
#: Plenty for most users (two get a tiny quota in make_users), so the soak keeps streaming
#: for its whole duration instead of running into the daily default.
REQUESTS_LIMIT, TOKENS_LIMIT = 1_000_000, 1_000_000_000


# --- set-up -----------------------------------------------------------------------------------


def server_env(args: argparse.Namespace) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "chatproject.settings",
        # A production start needs a real key (chatproject/settings.py); any will do here.
        "DJANGO_SECRET_KEY": os.environ.get("DJANGO_SECRET_KEY") or SECRET_KEY,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.db_name}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{args.redis_db}",
        "AI_PROVIDER": "mock",
        "MOCK_TOKEN_DELAY_MS": str(args.token_delay_ms),
        "CHAT_MAX_CONCURRENT_STREAMS": "12",
        "CHAT_STALE_SECONDS": "10",
        "QUOTA_REQUESTS_LIMIT": str(REQUESTS_LIMIT),
        "QUOTA_TOKENS_LIMIT": str(TOKENS_LIMIT),
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def start_daphne(env: dict[str, str], logdir: Path, index: int) -> Server:
    port = free_port()
    return Server(f"daphne-{index}", daphne_cmd(port), env, port).start(logdir, timeout=30)


def make_users(n: int) -> list[dict[str, Any]]:
    """Users with a token and two contexts (``manage.py demo_setup``, in this process); the
    last two have a tiny quota."""
    from django.core.management import call_command  # Django is set up by main() first

    users = []
    for i in range(n):
        requests, tokens = REQUESTS_LIMIT, TOKENS_LIMIT
        if i == n - 1:
            requests = 6
        elif i == n - 2:
            tokens = 6000
        out = StringIO()
        call_command(
            "demo_setup",
            username=f"soak{i}",
            contexts=["Soak 0", "Soak 1"],
            requests_limit=requests,
            tokens_limit=tokens,
            as_json=True,
            stdout=out,
        )
        made = json.loads(out.getvalue())
        users.append(
            {"id": made["user_id"], "token": made["token"], "contexts": made["context_ids"]}
        )
    return users


# --- the client ---------------------------------------------------------------------------------


@dataclass
class Figures:
    turns: int = 0
    complete: int = 0
    ended_cancelled: int = 0
    disconnects: int = 0
    resumes: int = 0
    cancels: int = 0
    quota_refusals: int = 0
    other_refusals: Counter = field(default_factory=Counter)
    stream_errors: Counter = field(default_factory=Counter)
    client_errors: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def count(self, name: str, key: str) -> None:
        with self.lock:
            getattr(self, name)[key] += 1


@dataclass
class Read:
    status: int
    body: Any = None
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(d["content"] for _, name, d in self.events if name == "chunk")

    @property
    def last(self) -> str:
        return self.events[-1][1] if self.events else ""

    @property
    def last_id(self) -> int:
        return self.events[-1][0] if self.events else 0

    def metadata(self) -> dict[str, Any]:
        return next(d for _, name, d in self.events if name == "metadata")


def sse(
    client: httpx.Client,
    method: str,
    url: str,
    token: str,
    body: Any = None,
    *,
    stop_after: int | None = None,
    on_event: Any = None,
    last_event_id: int | None = None,
) -> Read:
    headers = {"Authorization": f"Token {token}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    with connect_sse(client, method, url, json=body, headers=headers) as source:
        response = source.response
        read = Read(response.status_code)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            read.body = response.json() if response.content else None
            return read
        for event in source.iter_sse():
            if not event.data:
                continue
            read.events.append((int(event.id), event.event, json.loads(event.data)))
            if on_event is not None:
                on_event(read)
            if stop_after is not None and len(read.events) >= stop_after:
                break  # leaving the block closes the connection: a disconnect
    return read


class Soak:
    def __init__(self, args: argparse.Namespace, servers: list[Server], users: list[dict]):
        self.args = args
        self.servers = servers
        self.users = users
        self.figures = Figures()
        self.resumed: list[tuple[str, str]] = []  # (message_id, assembled text)
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + args.minutes * 60
        self.turns_left = args.turns or 10**9

    def take_turn(self) -> bool:
        with self.lock:
            if self.turns_left <= 0 or time.monotonic() > self.deadline:
                return False
            self.turns_left -= 1
            return True

    def url(self, path: str) -> str:
        return random.choice(self.servers).url(path)

    def worker(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=60) as client:
            while self.take_turn():
                user = rng.choice(self.users)
                try:
                    self.turn(client, rng, user)
                except Exception as exc:
                    self.figures.count("client_errors", type(exc).__name__)

    def turn(self, client: httpx.Client, rng: random.Random, user: dict) -> None:
        kind = rng.choices(["full", "disconnect", "cancel"], weights=[5, 3, 2])[0]
        words = rng.randint(30, 120) if kind != "full" else rng.randint(5, 40)
        text = f"{rng.choice(TEXTS)} [[mock:long:{words}]]" if kind != "full" else rng.choice(TEXTS)
        body = {
            "context_id": rng.choice(user["contexts"]),
            "messages": [{"role": "user", "content": text}],
        }
        self.figures.add("turns")
        path = "/api/v1/conversations/stream"
        if kind == "full":
            read = sse(client, "POST", self.url(path), user["token"], body)
            self.finish(read)
        elif kind == "disconnect":
            first = sse(
                client, "POST", self.url(path), user["token"], body,
                stop_after=rng.randint(3, 12),
            )  # fmt: skip
            if first.status != 200:
                self.finish(first)
                return
            self.figures.add("disconnects")
            if first.last in ("done", "error"):
                self.finish(first)
                return
            time.sleep(rng.uniform(0, 0.5))
            message_id = first.metadata()["message_id"]
            rest = sse(
                client, "GET", self.url(f"/api/v1/messages/{message_id}/stream"),
                user["token"], last_event_id=first.last_id,
            )  # fmt: skip
            self.figures.add("resumes")
            with self.lock:
                self.resumed.append((message_id, first.text + rest.text))
            self.finish(rest)
        else:
            cancelled = threading.Event()

            def maybe_cancel(read: Read) -> None:
                chunks = sum(1 for _, name, _ in read.events if name == "chunk")
                if chunks >= 3 and not cancelled.is_set():
                    cancelled.set()
                    message_id = read.metadata()["message_id"]
                    answer = httpx.post(  # on either process, while the stream is open
                        self.url(f"/api/v1/messages/{message_id}/cancel"),
                        headers={"Authorization": f"Token {user['token']}"},
                        timeout=30,
                    )
                    if answer.status_code != 200:
                        self.figures.count("client_errors", f"cancel {answer.status_code}")

            read = sse(client, "POST", self.url(path), user["token"], body, on_event=maybe_cancel)
            if cancelled.is_set():
                self.figures.add("cancels")
                with self.lock:  # the cancelled stream's text is the stored text too
                    self.resumed.append((read.metadata()["message_id"], read.text))
            self.finish(read)

    def finish(self, read: Read) -> None:
        if read.status == 429 and (read.body or {}).get("code") == "quota_exceeded":
            self.figures.add("quota_refusals")
        elif read.status != 200:
            self.figures.count("other_refusals", f"{read.status} {(read.body or {}).get('code')}")
        elif read.last == "done" and read.events[-1][2].get("finish_reason") == "cancelled":
            self.figures.add("ended_cancelled")
        elif read.last == "done":
            self.figures.add("complete")
        elif read.last == "error":
            self.figures.count("stream_errors", read.events[-1][2].get("code", "?"))
        else:
            self.figures.count("stream_errors", "no_end")

    def run(self) -> None:
        threads = [
            threading.Thread(target=self.worker, args=(i,)) for i in range(self.args.concurrency)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


# --- invariants ---------------------------------------------------------------------------------


def check_invariants(soak: Soak, settle_seconds: float = 30.0) -> list[str]:
    from django.db import connection
    from django.db.models import Count, Sum

    from ai.models import Quota, Reservation, UsageRecord
    from conversations.models import Message
    from flows.models import Flow

    violations: list[str] = []
    deadline = time.monotonic() + settle_seconds
    while Message.objects.filter(status="streaming").exists() and time.monotonic() < deadline:
        time.sleep(0.5)  # replies left running by disconnected clients finish on their own
    connection.close()
    streaming = Message.objects.filter(status="streaming").count()
    if streaming:
        violations.append(f"{streaming} message(s) left streaming")
    stored = dict(
        Message.objects.filter(id__in=[m for m, _ in soak.resumed]).values_list("id", "content")
    )
    mismatched = [m for m, text in soak.resumed if stored.get(uuid.UUID(m)) != text]
    if mismatched:
        violations.append(f"{len(mismatched)} resumed/cancelled text(s) differ: {mismatched[:3]}")
    for user in soak.users:
        quota = Quota.objects.get(user_id=user["id"])
        complete = Message.objects.filter(
            user_id=user["id"], role="assistant", status="complete"
        ).count()
        ledger = UsageRecord.objects.filter(user_id=user["id"])
        tokens = ledger.aggregate(total=Sum("tokens_charged"))["total"] or 0
        complete_records = ledger.filter(purpose="reply", outcome="complete").count()
        if not quota.requests_used == complete == complete_records:
            violations.append(
                f"user {user['id']}: requests_used {quota.requests_used}, complete replies "
                f"{complete}, complete ledger records {complete_records}"
            )
        if quota.tokens_used != tokens:
            violations.append(
                f"user {user['id']}: tokens_used {quota.tokens_used} != ledger {tokens}"
            )
        if quota.requests_reserved or quota.tokens_reserved:
            violations.append(
                f"user {user['id']}: still reserved {quota.requests_reserved} requests, "
                f"{quota.tokens_reserved} tokens"
            )
    held = Reservation.objects.filter(status="held").count()
    if held:
        violations.append(f"{held} reservation(s) still held")
    duplicates = (
        Flow.objects.filter(status="open")
        .values("context_id", "title_key")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    if duplicates:
        violations.append(f"duplicate open flows: {list(duplicates)[:3]}")
    return violations


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long (default 3)")
    parser.add_argument("--turns", type=int, default=0, help="stop after this many turns")
    parser.add_argument("--concurrency", type=int, default=12, help="client threads")
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--token-delay-ms", type=float, default=8.0)
    parser.add_argument("--db-name", default="chat_soak")
    parser.add_argument("--redis-db", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the database and logs")
    args = parser.parse_args(argv)

    env = server_env(args)
    recreate_postgres_database(args.db_name)
    flush_redis(env["REDIS_URL"])
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        subprocess.run([PY, "manage.py", *command, "-v", "0"], cwd=ROOT, env=env, check=True)
    os.environ.update(
        {
            k: env[k]
            for k in (
                "DJANGO_SETTINGS_MODULE",
                "DJANGO_SECRET_KEY",
                "DATABASE_URL",
                "QUOTA_REQUESTS_LIMIT",
                "QUOTA_TOKENS_LIMIT",
            )
        }
    )
    import django  # after the environment above: it configures the settings

    django.setup()
    users = make_users(args.users)

    logdir = Path(tempfile.mkdtemp(prefix="soak-"))
    servers: list[Server] = []
    try:
        for index in range(2):
            servers.append(start_daphne(env, logdir, index))
        started = time.monotonic()
        soak = Soak(args, servers, users)
        soak.run()
        elapsed = time.monotonic() - started
        violations = check_invariants(soak)
    finally:
        stop_all(servers)
    f = soak.figures
    print(
        json.dumps(
            {
                "seconds": round(elapsed, 1),
                "servers": len(servers),
                "turns": f.turns,
                "complete": f.complete,
                "ended_cancelled": f.ended_cancelled,
                "disconnects": f.disconnects,
                "resumes": f.resumes,
                "cancels": f.cancels,
                "quota_refusals": f.quota_refusals,
                "other_refusals": dict(f.other_refusals),
                "stream_errors": dict(f.stream_errors),
                "client_errors": dict(f.client_errors),
                "texts_checked": len(soak.resumed),
                "violations": len(violations),
            },
            indent=2,
        )
    )
    for violation in violations:
        print("VIOLATION:", violation)
    if not args.keep:
        from django.db import connections

        connections.close_all()
        drop_postgres_database(args.db_name)
    if violations or args.keep:
        print(f"server logs in {logdir}", file=sys.stderr)
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
