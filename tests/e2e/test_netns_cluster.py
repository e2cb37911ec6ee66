"""The service across hosts: Linux network namespaces made by the test (scripts/netns_cluster.py).

A data host (its own PostgreSQL and Redis), two app hosts (daphne) and a proxy host
(nginx) on one bridge, 10.200.0.0/24 inside the namespaces only. The test client's
connections are made in the proxy host's namespace (``cluster.client()``). A turn through
nginx, resume and cancel across hosts, and one app host cut off mid-reply (its link down):
the other keeps serving, the cut host's reply becomes ``interrupted`` (the survivor's
sweeper) and resumable from what was stored, its quota reservation released.

Skipped only where namespaces cannot be made (not root, no ``ip netns``), with the
reason; under CI (``CI=true``, root on the same kind of machine) that fails instead.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from scripts.cluster import ClusterError
from scripts.netns_cluster import NetnsCluster, app_address, netns_problem
from tests.e2e.cluster import require_nginx, wait_for, worker_pid
from tests.e2e.server import ROOT
from tests.sse_client import StreamResult, stream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SLOW = "[[mock:slow:30]] [[mock:long:120]] "
FAST = "[[mock:slow:1]] [[mock:long:10]] "


@pytest.fixture(scope="module")
def hosts() -> Iterator[NetnsCluster]:
    problem = netns_problem()
    if problem:
        message = f"network namespaces cannot be made here: {problem}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message} (CI must run the cross-host test)", pytrace=False)
        pytest.skip(message)
    require_nginx()
    cluster = NetnsCluster(
        env={
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "MOCK_TOKEN_DELAY_MS": "1",
            "CHAT_KEEPALIVE_SECONDS": "2",
            "CHAT_STALE_SECONDS": "2",
            "CHAT_CHECKPOINT_SECONDS": "0.2",
        },
        static_root=ROOT / "web" / "static",
        # The hosts' logs (daphne, nginx, PostgreSQL, Redis) kept to read after a failure.
        keep=bool(os.environ.get("KEEP_DAPHNE_LOGS")),
    )
    try:
        cluster.start()
    except ClusterError as exc:
        pytest.fail(f"the namespace cluster did not start: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        if cluster.keep:
            print(f"namespace cluster logs kept in {cluster.folder}")


@pytest.fixture(scope="module")
def alice(hosts: NetnsCluster) -> tuple[str, str]:
    """The user's token and context, made on app1 against the data host's database."""
    made = json.loads(hosts.manage("demo_setup", "--username", "alice", "--json"))
    return made["token"], made["context_ids"][0]


def query(cluster: NetnsCluster, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one statement on the data host's database (connected from the proxy host)."""
    with cluster.client(), psycopg.connect(cluster.database_url, connect_timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


def message_row(cluster: NetnsCluster, message_id: str) -> dict[str, Any]:
    rows = query(
        cluster,
        "SELECT status, content, worker, finish_reason FROM conversations_message WHERE id = %s",
        message_id,
    )
    assert rows, f"no message {message_id}"
    return dict(zip(("status", "content", "worker", "finish_reason"), rows[0], strict=True))


def turn(
    cluster: NetnsCluster, base: str, token: str, context: str, text: str, **kwargs: Any
) -> StreamResult:
    body = {"context_id": context, "messages": [{"role": "user", "content": text}]}
    with cluster.client():
        return stream(
            "POST", f"{base}/api/v1/conversations/stream", token=token, json_body=body, **kwargs
        )


def follow(cluster: NetnsCluster, base: str, token: str, message_id: str, last: str | None):
    with cluster.client():
        return stream(
            "GET",
            f"{base}/api/v1/messages/{message_id}/stream",
            token=token,
            headers={"Last-Event-ID": last} if last else {},
        )


def test_a_turn_through_nginx_on_the_proxy_host(hosts, alice):
    token, context = alice
    result = turn(hosts, hosts.url, token, context, FAST + "hello")
    assert result.status_code == 200, result.body
    assert result.headers["server"] == "nginx"
    assert result.last().event == "done", result.names()
    message_id = result.first("metadata").data["message_id"]
    row = message_row(hosts, message_id)
    assert row["status"] == "complete" and row["content"] == result.text()
    assert worker_pid(row["worker"]) in {hosts.daphne(1).pid, hosts.daphne(2).pid}


def test_resume_on_the_other_host(hosts, alice):
    token, context = alice
    partial = turn(hosts, hosts.app_url(1), token, context, SLOW + "go", stop_after=8)
    message_id = partial.first("metadata").data["message_id"]
    resumed = follow(hosts, hosts.app_url(2), token, message_id, partial.events[-1].id)
    row = message_row(hosts, message_id)
    assert worker_pid(row["worker"]) == hosts.daphne(1).pid  # generated on app1
    assert row["status"] == "complete"
    assert partial.text() + resumed.text() == row["content"]
    assert "metadata" not in resumed.names()
    assert resumed.names()[-1] == "done"
    ids = [int(e.id) for e in partial.events + resumed.events]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    # Live from app1 over the data host's Redis, not one replay of the finished text.
    assert len([e for e in resumed.events if e.event == "chunk"]) > 5


def test_cancel_from_the_other_host_then_resume_through_nginx(hosts, alice):
    token, context = alice
    partial = turn(hosts, hosts.app_url(1), token, context, SLOW + "go", stop_after=5)
    message_id = partial.first("metadata").data["message_id"]
    with hosts.client():
        response = httpx.post(
            f"{hosts.app_url(2)}/api/v1/messages/{message_id}/cancel",
            headers={"Authorization": f"Token {token}"},
            timeout=20,
        )
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    row = message_row(hosts, message_id)
    assert row["status"] == "cancelled" and row["finish_reason"] == "cancelled"
    resumed = follow(hosts, hosts.url, token, message_id, partial.events[-1].id)
    assert partial.text() + resumed.text() == row["content"]
    assert resumed.last().event == "done"
    assert resumed.last().data["finish_reason"] == "cancelled"


def test_an_app_host_cut_off_mid_reply(hosts, alice):
    """Last in this file: app1 stays cut off until the end (then reconnected)."""
    token, context = alice
    # nginx keeps idle connections to the app hosts (upstream keepalive). A request it sent
    # on one to a host that went silent (a cut, no RST) would wait for proxy_read_timeout:
    # docs/operations.md, "A host cut off". New workers start without them.
    hosts.reload_nginx()
    assert wait_for(lambda: hosts.connections("proxy", app_address(1), 8000) == 0, 20), (
        "nginx still holds connections to app1"
    )
    partial = turn(
        hosts, hosts.app_url(1), token, context, "[[mock:slow:50]] [[mock:long:400]] go",
        stop_after=12,
    )  # fmt: skip
    message_id = partial.first("metadata").data["message_id"]
    # A checkpoint has stored some of the reply.
    assert wait_for(lambda: len(message_row(hosts, message_id)["content"]) > 0, 20)
    hosts.cut("app1")
    try:
        assert message_row(hosts, message_id)["status"] == "streaming"
        cut_at = time.monotonic()
        # New turns keep succeeding, through nginx and directly, all on app2.
        for n, base in enumerate([hosts.url, hosts.url, hosts.url, hosts.app_url(2)]):
            result = turn(hosts, base, token, context, FAST + f"turn {n}")
            assert result.status_code == 200, result.body
            assert result.last().event == "done", result.names()
            done = message_row(hosts, result.last().data["message_id"])
            assert done["status"] == "complete"
            assert worker_pid(done["worker"]) == hosts.daphne(2).pid
        # At least one went to the cut host first: nginx's connection attempt timed out
        # (proxy_connect_timeout) and it sent the turn on to app2.
        app1, app2 = f"{app_address(1)}:8000", f"{app_address(2)}:8000"
        posts = [e for e in hosts.access_log() if e["uri"] == "/api/v1/conversations/stream"]
        assert any(e["upstream_addr"] == f"{app1}, {app2}" for e in posts), posts
        # app2's sweeper marks the cut host's reply interrupted, keeping what was stored.
        assert wait_for(lambda: message_row(hosts, message_id)["status"] == "interrupted", 40), (
            f"still {message_row(hosts, message_id)['status']}"
        )
        interrupted_after = time.monotonic() - cut_at
        row = message_row(hosts, message_id)
        assert row["finish_reason"] == "interrupted" and row["content"]
        assert partial.text()[:10] == row["content"][:10]
        # Its quota reservation is released, and no turn holds one any more.
        reservation = query(
            hosts, "SELECT status FROM ai_reservation WHERE message_id = %s", message_id
        )
        assert reservation == [("released",)]
        assert query(hosts, "SELECT count(*) FROM ai_reservation WHERE status = 'held'") == [(0,)]
        # Resumable (through nginx, on app2) from what was stored.
        resumed = follow(hosts, hosts.url, token, message_id, None)
        assert resumed.text() == row["content"]
        assert resumed.names()[-2:] == ["typing", "error"]
        assert resumed.last().data["retryable"] is True
        print(f"interrupted {interrupted_after:.1f} s after the cut")
    finally:
        hosts.reconnect("app1")
