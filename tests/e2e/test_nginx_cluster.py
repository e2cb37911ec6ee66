"""nginx in front of two daphne processes (deploy/nginx.conf through scripts/cluster.py).

Streams pass unbuffered, a reply resumes on the other process, WebSocket upgrades, and a
process killed mid-reply is routed around while its reply becomes ``interrupted``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import pytest
from websockets.sync.client import connect

from ai.models import Reservation
from conversations.models import Message
from scripts.cluster import CHAT_CONF_DIR, NGINX, PRODUCTION_CONFIG, find_nginx
from tests import factories
from tests.e2e.cluster import (
    log_entry,
    require_nginx,
    served_by,
    sse_events,
    start_test_cluster,
    upstream_ports,
    wait_for,
    worker_pid,
)
from tests.sse_client import dechunk, raw_post, stream

pytestmark = pytest.mark.e2e

SLOW = "[[mock:slow:40]] [[mock:long:60]] "
FAST = "[[mock:slow:1]] [[mock:long:10]] "
FAST_RECOVERY = {"CHAT_STALE_SECONDS": "2", "CHAT_CHECKPOINT_SECONDS": "0.2"}


@pytest.fixture(scope="module")
def cluster(django_db_setup, django_db_blocker):
    """One cluster for the tests that leave both processes running."""
    with django_db_blocker.unblock():
        running = start_test_cluster(MOCK_TOKEN_DELAY_MS="1", CHAT_KEEPALIVE_SECONDS="2")
    yield running
    running.stop()


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return user, factories.make_token(user), factories.make_context(user, "Work")


def turn_body(context, text: str) -> dict:
    return {"context_id": str(context.id), "messages": [{"role": "user", "content": text}]}


def test_nginx_is_installed_and_accepts_the_production_config(tmp_path):
    require_nginx()
    # The production file as shipped, with a throwaway certificate in place of the real one.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=chat.example.com", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    text = PRODUCTION_CONFIG.read_text()
    text = text.replace("/etc/letsencrypt/live/chat.example.com/fullchain.pem", str(cert))
    text = text.replace("/etc/letsencrypt/live/chat.example.com/privkey.pem", str(key))
    if os.geteuid() != 0:  # `user` needs root; the rest is what matters here
        text = text.replace("user www-data;", "")
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    # Installed as documented: deploy/chat/ beside nginx.conf (its relative includes).
    shutil.copytree(CHAT_CONF_DIR, tmp_path / "chat")
    result = subprocess.run(
        [find_nginx(), "-t", "-p", str(tmp_path), "-c", str(config), "-e", str(tmp_path / "e.log")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert shutil.which("nginx") or os.path.exists(NGINX)


def test_reply_streams_through_nginx_unbuffered(cluster, alice):
    _, token, context = alice
    read = raw_post(
        f"{cluster.url}/api/v1/conversations/stream",
        json.dumps(turn_body(context, SLOW + "go")).encode(),
        {
            "Authorization": f"Token {token}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "X-Request-Id": "nginx-e2e-stream-1",
        },
    )
    head = read.head.decode().lower()
    assert head.startswith("http/1.1 200")
    assert "content-type: text/event-stream" in head
    assert "server: nginx" in head  # through nginx, daphne's Server header hidden
    assert "content-encoding" not in head
    assert "x-request-id: nginx-e2e-stream-1" in head  # passed through to the app and back

    # When did the first chunk event, and the done event, reach the client?
    first_chunk = done = None
    received = b""
    chunk_pieces = 0
    for arrived, piece in read.pieces:
        before = dechunk(received).count(b"event: chunk")
        received += piece
        body = dechunk(received)
        if body.count(b"event: chunk") > before:
            chunk_pieces += 1
        if first_chunk is None and b"event: chunk" in body:
            first_chunk = arrived
        if done is None and b"event: done" in body:
            done = arrived
    assert first_chunk is not None and done is not None, read.body[-500:]
    # 60 deltas at 40 ms: about 2.4 s of typing. Buffered, they would all arrive at the end.
    assert done - first_chunk > 1.5, f"chunks arrived together: {done - first_chunk:.2f}s"
    assert chunk_pieces > 20, f"only {chunk_pieces} separate arrivals carried chunks"

    events = sse_events(read.body)
    assert [e["event"] for e in events][-4:] == ["typing", "flows_extracted", "title", "done"]
    message = Message.objects.get(pk=events[0]["data"]["message_id"])
    text = "".join(e["data"]["content"] for e in events if e["event"] == "chunk")
    assert message.status == "complete" and message.content == text

    entry = log_entry(cluster, lambda e: e["request_id"] == "nginx-e2e-stream-1")
    assert entry["status"] == 200 and entry["upstream_status"] == "200"
    assert served_by(cluster, entry).pid == worker_pid(message.worker)


def test_resume_lands_on_the_other_daphne_without_gap_or_duplicate(cluster, alice):
    _, token, context = alice
    partial = stream(
        "POST", f"{cluster.url}/api/v1/conversations/stream", token=token, stop_after=8,
        json_body=turn_body(context, SLOW + "go"), headers={"X-Request-Id": "nginx-e2e-resume-1"},
    )  # fmt: skip
    message_id = partial.first("metadata").data["message_id"]
    # nginx balances round-robin (one worker process): the next request goes to the other.
    resumed = stream(
        "GET", f"{cluster.url}/api/v1/messages/{message_id}/stream", token=token,
        headers={"Last-Event-ID": partial.events[-1].id},
    )  # fmt: skip
    message = Message.objects.get(pk=message_id)
    assert message.status == "complete"
    assert partial.text() + resumed.text() == message.content
    assert "metadata" not in resumed.names()
    assert resumed.names()[-4:] == ["typing", "flows_extracted", "title", "done"]
    ids = [int(e.id) for e in partial.events + resumed.events]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    assert len([e for e in resumed.events if e.event == "chunk"]) > 5  # live, relayed

    generator = cluster.daphne_by_pid(worker_pid(message.worker))
    post = (
        log_entry(
            cluster, lambda e: (e["method"] == "POST" and message_id in json.dumps(e)) or False
        )
        if False
        else None
    )  # the POST's log line has no message id
    del post
    resume = log_entry(cluster, lambda e: e["uri"] == f"/api/v1/messages/{message_id}/stream")
    resumer = served_by(cluster, resume)
    assert resumer.pid != generator.pid, (
        f"the resume was served by the generating daphne (pid {generator.pid}); nginx log: {resume}"
    )
    assert resumer.alive() and generator.alive()


def test_websocket_chat_through_nginx(cluster, alice):
    _, token, context = alice
    url = cluster.url.replace("http://", "ws://") + "/ws/v1/chat/"
    with connect(
        url, origin=cluster.url, subprotocols=["token", token], proxy=None, open_timeout=10
    ) as ws:
        assert ws.subprotocol == "token"
        ws.send(json.dumps({"type": "chat", **turn_body(context, FAST + "hello")}))
        events = []
        while not events or events[-1]["type"] not in ("done", "error"):
            events.append(json.loads(ws.recv(timeout=20)))
    assert events[0]["type"] == "metadata" and events[-1]["type"] == "done"
    message = Message.objects.get(pk=events[0]["message_id"])
    assert "".join(e["content"] for e in events if e["type"] == "chunk") == message.content
    entry = log_entry(cluster, lambda e: e["uri"] == "/ws/v1/chat/")
    assert entry["status"] == 101


def test_static_files_are_served_by_nginx_and_the_app_behind_it(cluster):
    static = httpx.get(f"{cluster.url}/static/web/chat.js", timeout=10)
    assert static.status_code == 200
    assert static.headers["x-content-type-options"] == "nosniff"
    assert "max-age=" in static.headers["cache-control"]
    assert "x-request-id" not in static.headers  # nginx answered, not Django

    health = httpx.get(f"{cluster.url}/healthz", timeout=10)
    assert health.status_code == 200 and health.headers["x-request-id"]
    # Django's security headers come once, not once from Django and once from nginx.
    page = httpx.get(f"{cluster.url}/api/v1/quota/", timeout=10)
    assert page.headers.get_list("x-content-type-options") == ["nosniff"]
    assert page.headers.get_list("x-frame-options") == ["DENY"]


def test_sigkill_one_daphne_mid_reply(transactional_db, django_db_blocker):
    user = factories.make_user("alice")
    token = factories.make_token(user)
    context = factories.make_context(user, "Work")
    with django_db_blocker.unblock():
        cluster = start_test_cluster(MOCK_TOKEN_DELAY_MS="1", **FAST_RECOVERY)
    try:
        partial = stream(
            "POST", f"{cluster.url}/api/v1/conversations/stream", token=token, stop_after=12,
            json_body=turn_body(context, "[[mock:slow:50]] [[mock:long:200]] go"),
        )  # fmt: skip
        message_id = partial.first("metadata").data["message_id"]
        victim = cluster.daphne_by_pid(worker_pid(Message.objects.get(pk=message_id).worker))
        survivor = next(d for d in cluster.daphnes if d is not victim)
        time.sleep(0.5)  # a checkpoint saves some text
        cluster.kill(victim)
        assert Message.objects.get(pk=message_id).status == "streaming"

        # New turns keep succeeding through nginx, all on the survivor.
        for n in range(4):
            result = stream(
                "POST", f"{cluster.url}/api/v1/conversations/stream", token=token,
                json_body=turn_body(context, FAST + f"turn {n}"),
            )  # fmt: skip
            assert result.status_code == 200, result.body
            assert result.last().event == "done", result.names()
            done = Message.objects.get(pk=result.last().data["message_id"])
            assert worker_pid(done.worker) == survivor.pid
        # At least one of them was first sent to the dead process and retried by nginx.
        posts = [e for e in cluster.access_log() if e["uri"] == "/api/v1/conversations/stream"]
        assert any(upstream_ports(e) == [victim.port, survivor.port] for e in posts), posts

        # The survivor's sweeper marks the dead process's reply interrupted.
        assert wait_for(lambda: Message.objects.get(pk=message_id).status == "interrupted"), (
            f"still {Message.objects.get(pk=message_id).status}"
        )
        message = Message.objects.get(pk=message_id)
        assert message.content and partial.text().startswith(message.content[:10])
        assert not Reservation.objects.filter(status="held").exists()

        resumed = stream("GET", f"{cluster.url}/api/v1/messages/{message_id}/stream", token=token)
        assert resumed.text() == message.content
        assert resumed.names()[-2:] == ["typing", "error"]
        assert resumed.last().data["retryable"] is True
    finally:
        cluster.stop()
