"""A saturated process sheds new turns with 503 ``server_busy`` before they start
(docs/api.md#load-shedding), over SSE and WebSocket, through a real daphne."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from ai.models import Reservation
from conversations.models import Conversation, Message
from tests import factories
from tests.e2e.test_metrics import sample
from tests.e2e.test_websocket import recv, token_socket
from tests.sse_client import stream

pytestmark = pytest.mark.e2e

#: Two turns fill the process; the third is shed. The per-user limit is out of the way.
ENV = {"CHAT_MAX_PROCESS_STREAMS": "2", "CHAT_MAX_CONCURRENT_STREAMS": "10"}
SLOW = "[[mock:slow:200]] [[mock:long:400]] keep going"


@pytest.fixture
def shedding(daphne_factory, transactional_db):
    return daphne_factory(**ENV)


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return {
        "user": user,
        "token": factories.make_token(user),
        "context": factories.make_context(user, "Work"),
    }


def body(alice, text: str) -> dict:
    return {"context_id": str(alice["context"].id), "messages": [{"role": "user", "content": text}]}


def start_slow_turns(server, alice, n: int) -> list[str]:
    """Start ``n`` slow turns (read up to their metadata, then let them run on); their
    reply ids."""
    ids = []
    for _ in range(n):
        started = stream(
            "POST",
            f"{server.url}/api/v1/conversations/stream",
            token=alice["token"],
            json_body=body(alice, SLOW),
            stop_after=1,
        )
        assert started.status_code == 200 and started.events[0].event == "metadata"
        ids.append(started.events[0].data["message_id"])
    return ids


def cancel_all(server, alice, ids: list[str]) -> None:
    for message_id in ids:
        httpx.post(
            f"{server.url}/api/v1/messages/{message_id}/cancel",
            headers={"Authorization": f"Token {alice['token']}"},
            timeout=30,
        )


def test_sse_turn_past_the_process_limit_is_shed_before_any_byte(shedding, alice):
    ids = start_slow_turns(shedding, alice, 2)
    try:
        before = httpx.get(f"{shedding.url}/metrics", timeout=10).text
        counts = (Message.objects.count(), Conversation.objects.count())
        reservations = Reservation.objects.count()
        response = httpx.post(
            f"{shedding.url}/api/v1/conversations/stream",
            headers={"Authorization": f"Token {alice['token']}", "Accept": "text/event-stream"},
            json=body(alice, "one more"),
            timeout=30,
        )
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/json")
        assert int(response.headers["Retry-After"]) >= 1
        data = response.json()
        assert data["code"] == "server_busy" and data["detail"]
        # The turn was not started: nothing stored, nothing reserved.
        assert (Message.objects.count(), Conversation.objects.count()) == counts
        assert Reservation.objects.count() == reservations
        after = httpx.get(f"{shedding.url}/metrics", timeout=10).text
        refused = 'code="server_busy"'
        assert sample(after, "chat_refusals_total", refused) == (
            sample(before, "chat_refusals_total", refused) + 1
        )
        assert sample(after, "chat_shed_turns_total", 'reason="streams"') == (
            sample(before, "chat_shed_turns_total", 'reason="streams"') + 1
        )
    finally:
        cancel_all(shedding, alice, ids)
    # Once the process has room again, turns start as usual.
    deadline = time.monotonic() + 60
    while True:
        result = stream(
            "POST",
            f"{shedding.url}/api/v1/conversations/stream",
            token=alice["token"],
            json_body=body(alice, "hello again"),
        )
        if result.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.status_code == 200 and result.last().event == "done"


def test_websocket_turn_past_the_process_limit_is_refused_with_a_frame(shedding, alice):
    ids = start_slow_turns(shedding, alice, 2)
    try:
        count = Message.objects.count()
        with token_socket(shedding, alice["token"]) as ws:
            ws.send(json.dumps({"type": "chat", **body(alice, "one more")}))
            frame = recv(ws)
            assert frame["type"] == "error" and "id" not in frame
            assert frame["code"] == "server_busy" and frame["status"] == 503
            assert frame["request"] == "chat" and frame["retry_after"] >= 1
            # The socket stays open and answers the next frame.
            ws.send('{"type": "bogus"}')
            assert recv(ws)["code"] == "invalid"
        assert Message.objects.count() == count
    finally:
        cancel_all(shedding, alice, ids)
