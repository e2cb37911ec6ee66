"""Faults against real servers: the database and Redis going away, providers failing.

- PostgreSQL kills every connection of the test database mid-reply
  (``pg_terminate_backend``): the reply ends cleanly (``done`` or ``error``) and the stored
  state is consistent (nothing left ``streaming``, no reservation held). PostgreSQL only.
- The database is unreachable at request time (a daphne on ``postgres://...:1/none``, on
  either suite): the chat and REST endpoints answer 503 with a JSON code within seconds.
- Redis (a private ``redis-server`` on its own port, so other tests are not disturbed)
  stops while streams are open: the local streams finish, ``/readyz`` answers 503, and
  the service is ready again by itself when Redis returns.
- Provider failures under concurrency: 24 concurrent turns, a third rate limited, a third
  failing midway, a third complete: each ends as it should, nothing is left streaming, no
  reservation is held, and the quota counters equal the usage ledger.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.db.models import Sum

from ai.models import Quota, Reservation, UsageRecord
from conversations.models import Message
from tests import factories
from tests.e2e.server import DaphneServer
from tests.private_redis import PrivateRedis
from tests.sse_client import stream

pytestmark = pytest.mark.e2e


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def assert_consistent(user) -> None:
    """Nothing streaming, nothing held, quota counters equal to the usage ledger."""
    assert wait_until(lambda: not Message.objects.filter(status="streaming").exists()), list(
        Message.objects.filter(status="streaming").values("id", "updated_at")
    )
    assert wait_until(lambda: not Reservation.objects.filter(status="held").exists())
    quota = Quota.objects.get(user=user)
    assert quota.requests_reserved == 0 and quota.tokens_reserved == 0
    complete = Message.objects.filter(user=user, role="assistant", status="complete").count()
    charged = (
        UsageRecord.objects.filter(user=user).aggregate(total=Sum("tokens_charged"))["total"] or 0
    )
    assert quota.requests_used == complete
    assert quota.tokens_used == charged


def chat_body(context, text: str) -> dict:
    return {"context_id": str(context.id), "messages": [{"role": "user", "content": text}]}


# --- the database ------------------------------------------------------------------------


@pytest.mark.postgres
def test_database_connections_killed_mid_reply(daphne_factory, transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip(
            "pg_terminate_backend needs PostgreSQL; the SQLite run covers the "
            "unreachable database below"
        )
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="2", CHAT_CHECKPOINT_SECONDS="0.2")
    alice = factories.make_user("alice")
    token = factories.make_token(alice)
    context = factories.make_context(alice, name="Work")
    results: list = []

    def run() -> None:
        results.append(
            stream(
                "POST",
                f"{server.url}/api/v1/conversations/stream",
                token=token,
                json_body=chat_body(context, "[[mock:slow:40]] [[mock:long:80]] go"),
            )
        )

    thread = threading.Thread(target=run)
    thread.start()
    assert wait_until(
        lambda: Message.objects.filter(status="streaming", content__gt="").exists(), 10, 0.05
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        killed = cursor.fetchone()[0]
    assert killed >= 1
    # The kill also ended this test process's connection in asgiref's sync thread (used by
    # earlier async tests): close it there, so that later tests open a fresh one.
    asyncio.run(sync_to_async(connections.close_all)())
    thread.join(60)
    assert not thread.is_alive()
    (result,) = results
    assert result.names()[-1] in ("done", "error"), result.names()
    assert_consistent(alice)
    reply = Message.objects.get(role="assistant")
    assert reply.status in ("complete", "failed")
    if result.names()[-1] == "done":
        assert reply.content == result.text()
    # The server serves the next turn on fresh connections.
    again = stream(
        "POST",
        f"{server.url}/api/v1/conversations/stream",
        token=token,
        json_body=chat_body(context, "hello again"),
    )
    assert again.names()[-1] == "done"
    assert_consistent(alice)


@pytest.fixture
def db_down_server(transactional_db):
    server = DaphneServer(
        {"DATABASE_URL": "postgres://postgres@127.0.0.1:1/none", "DB_CONN_MAX_AGE": "0"}
    ).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/api/v1/conversations/stream",
            {
                "context_id": "00000000-0000-0000-0000-000000000001",
                "messages": [{"role": "user", "content": "hi"}],
            },
        ),
        ("GET", "/api/v1/contexts/", None),
        ("GET", "/api/v1/quota/", None),
        ("GET", "/api/v1/messages/00000000-0000-0000-0000-000000000001/stream", None),
    ],
    ids=["chat", "contexts", "quota", "resume"],
)
def test_database_unreachable_answers_503_quickly(db_down_server, method, path, body):
    started = time.monotonic()
    response = httpx.request(
        method,
        f"{db_down_server.url}{path}",
        json=body,
        headers={
            "Authorization": "Token 0123456789abcdef",
            "Accept": "text/event-stream" if "stream" in path else "application/json",
        },
        timeout=30,
    )
    assert time.monotonic() - started < 10
    assert response.status_code == 503, (response.status_code, response.text[:300])
    assert response.json()["code"] == "database_unavailable"


def test_database_unreachable_readyz_is_503_and_nothing_hangs(db_down_server):
    started = time.monotonic()
    ready = httpx.get(f"{db_down_server.url}/readyz", timeout=30)
    assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    for path in ("/api/v1/contexts/", "/api/v1/quota/"):
        response = httpx.get(
            f"{db_down_server.url}{path}",
            headers={"Authorization": "Token 0123456789abcdef"},
            timeout=30,
        )
        assert response.status_code == 503 and response.json()["code"] == "database_unavailable"
    assert time.monotonic() - started < 20


# --- Redis ------------------------------------------------------------------------------------


@pytest.mark.redis
def test_redis_stopped_while_streams_are_open(daphne_factory, transactional_db):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis = PrivateRedis()
    redis.start()
    try:
        server = daphne_factory(
            MOCK_TOKEN_DELAY_MS="2", REDIS_URL=f"redis://127.0.0.1:{redis.port}/0"
        )
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
        alice = factories.make_user("alice")
        token = factories.make_token(alice)
        contexts = [factories.make_context(alice, name=f"C{i}") for i in range(3)]
        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(
                    stream,
                    "POST",
                    f"{server.url}/api/v1/conversations/stream",
                    token=token,
                    json_body=chat_body(context, "[[mock:slow:30]] [[mock:long:80]] go"),
                )
                for context in contexts
            ]
            assert wait_until(
                lambda: Message.objects.filter(status="streaming").count() == 3, 10, 0.05
            )
            redis.stop()
            results = [f.result(timeout=60) for f in futures]
        for result in results:
            assert result.names()[-1] == "done", result.names()
            assert len(result.text()) > 100
        not_ready = httpx.get(f"{server.url}/readyz", timeout=15)
        assert not_ready.status_code == 503
        assert not_ready.json()["checks"]["channel_layer"] is False
        redis.start()  # the same port: the service must find it again by itself
        assert wait_until(
            lambda: httpx.get(f"{server.url}/readyz", timeout=15).status_code == 200, 30, 0.5
        )
        after = stream(
            "POST",
            f"{server.url}/api/v1/conversations/stream",
            token=token,
            json_body=chat_body(contexts[0], "back again"),
        )
        assert after.names()[-1] == "done"
        assert_consistent(alice)
    finally:
        redis.stop()


# --- providers failing under concurrency -----------------------------------------------------


def test_provider_failures_under_concurrency(daphne_factory, transactional_db):
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="2", CHAT_MAX_CONCURRENT_STREAMS="50")
    alice = factories.make_user("alice")
    token = factories.make_token(alice)
    hooks = ["[[mock:error:ai_rate_limited]]", "[[mock:fail-midway]]", "I need to call Bob"]
    jobs = [(factories.make_context(alice, name=f"C{i}"), hooks[i % 3]) for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        results = list(
            pool.map(
                lambda job: stream(
                    "POST",
                    f"{server.url}/api/v1/conversations/stream",
                    token=token,
                    json_body=chat_body(job[0], f"{job[1]} [[mock:slow:5]] please"),
                    timeout=60,
                ),
                jobs,
            )
        )
    outcomes = {"rate_limited": 0, "midway": 0, "done": 0}
    for (_, hook), result in zip(jobs, results, strict=True):
        assert result.status_code == 200, result.body
        last = result.last()
        if hook.startswith("[[mock:error"):
            assert last.event == "error" and last.data["code"] == "ai_rate_limited"
            assert result.text() == ""
            outcomes["rate_limited"] += 1
        elif hook == "[[mock:fail-midway]]":
            assert last.event == "error" and last.data["retryable"] is True
            assert result.text()
            outcomes["midway"] += 1
        else:
            assert last.event == "done"
            outcomes["done"] += 1
    assert outcomes == {"rate_limited": 8, "midway": 8, "done": 8}
    assert_consistent(alice)
    assert Message.objects.filter(role="assistant", status="failed").count() == 16
