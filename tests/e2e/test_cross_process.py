"""Two daphne processes on one database and one Redis: resume and cancel across them."""

from __future__ import annotations

import os
import threading

import httpx
import pytest

from conversations.models import Message
from tests import factories
from tests.sse_client import stream

pytestmark = pytest.mark.e2e

REDIS = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/2"


@pytest.fixture
def pair(daphne_factory, transactional_db):
    env = {"REDIS_URL": REDIS, "MOCK_TOKEN_DELAY_MS": "1", "CHAT_KEEPALIVE_SECONDS": "1"}
    return daphne_factory(**env, CHAT_SSE_RETRY_MS="2001"), daphne_factory(**env)


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return factories.make_token(user), factories.make_context(user, "Work")


def start_slow_turn(server, token, context, stop_after=8):
    return stream(
        "POST",
        f"{server.url}/api/v1/conversations/stream",
        token=token,
        stop_after=stop_after,
        json_body={
            "context_id": str(context.id),
            "messages": [{"role": "user", "content": "[[mock:slow:30]] [[mock:long:120]] go"}],
        },
    )


def test_resume_on_the_other_process_live(pair, alice):
    first, second = pair
    token, context = alice
    partial = start_slow_turn(first, token, context)
    message_id = partial.first("metadata").data["message_id"]
    resumed = stream(
        "GET",
        f"{second.url}/api/v1/messages/{message_id}/stream",
        token=token,
        headers={"Last-Event-ID": partial.events[-1].id},
    )
    message = Message.objects.get(pk=message_id)
    assert message.status == "complete"
    assert partial.text() + resumed.text() == message.content
    assert resumed.names()[-4:] == ["typing", "flows_extracted", "title", "done"]
    assert "metadata" not in resumed.names()
    ids = [int(e.id) for e in partial.events + resumed.events]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    # Live through the relay: many chunks, not one replay of the finished text.
    assert len([e for e in resumed.events if e.event == "chunk"]) > 5


def test_two_followers_on_two_processes(pair, alice):
    first, second = pair
    token, context = alice
    partial = start_slow_turn(first, token, context, stop_after=4)
    message_id = partial.first("metadata").data["message_id"]
    results = {}

    def follow(name, server, last):
        results[name] = stream(
            "GET",
            f"{server.url}/api/v1/messages/{message_id}/stream",
            token=token,
            headers={"Last-Event-ID": last},
        )

    threads = [
        threading.Thread(target=follow, args=("a", first, "0")),
        threading.Thread(target=follow, args=("b", second, partial.events[-1].id)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    content = Message.objects.get(pk=message_id).content
    assert results["a"].text() == content
    assert partial.text() + results["b"].text() == content
    assert results["a"].names()[0] == "metadata"


def test_cancel_from_the_other_process(pair, alice):
    first, second = pair
    token, context = alice
    partial = start_slow_turn(first, token, context, stop_after=5)
    message_id = partial.first("metadata").data["message_id"]
    response = httpx.post(
        f"{second.url}/api/v1/messages/{message_id}/cancel",
        headers={"Authorization": f"Token {token}"},
        timeout=20,
    )
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    message = Message.objects.get(pk=message_id)
    assert message.status == "cancelled" and message.finish_reason == "cancelled"
    resumed = stream(
        "GET",
        f"{second.url}/api/v1/messages/{message_id}/stream",
        token=token,
        headers={"Last-Event-ID": partial.events[-1].id},
    )
    assert partial.text() + resumed.text() == message.content
    assert resumed.last().event == "done"
    assert resumed.last().data["finish_reason"] == "cancelled"
