"""Resume and cancel on one process (docs/api.md#resume-cancel-disconnect)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from ai.models import Quota
from conversations.models import Message
from tests import factories
from tests.sse_client import stream

pytestmark = pytest.mark.e2e


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return user, factories.make_token(user), factories.make_context(user, "Work")


@pytest.fixture
def server(daphne_factory, transactional_db):
    return daphne_factory(MOCK_TOKEN_DELAY_MS="1")


def slow_turn(server, token, context, stop_after=None, text="[[mock:slow:25]] [[mock:long:80]] go"):
    return stream(
        "POST",
        f"{server.url}/api/v1/conversations/stream",
        token=token,
        stop_after=stop_after,
        json_body={"context_id": str(context.id), "messages": [{"role": "user", "content": text}]},
    )


def resume(server, token, message_id, last=None, query=False):
    url = f"{server.url}/api/v1/messages/{message_id}/stream"
    headers = {}
    if last is not None and query:
        url += f"?last_event_id={last}"
    elif last is not None:
        headers["Last-Event-ID"] = str(last)
    return stream("GET", url, token=token, headers=headers)


def test_resume_after_completion_from_every_point(server, alice):
    _, token, context = alice
    full = slow_turn(server, token, context, text="[[mock:long:30]] go")
    message_id = full.first("metadata").data["message_id"]
    content = Message.objects.get(pk=message_id).content
    assert full.text() == content
    whole = resume(server, token, message_id)
    assert whole.names()[:2] == ["metadata", "typing"] and whole.text() == content
    assert whole.names()[-4:] == ["typing", "flows_extracted", "title", "done"]
    # From every event id the client may hold: exactly the rest, trailing events once.
    for index, event in enumerate(full.events):
        rest = resume(server, token, message_id, last=event.id, query=index % 2 == 0)
        had = "".join(e.data["content"] for e in full.events[: index + 1] if e.event == "chunk")
        assert had + rest.text() == content, event.id
        expected_tail = [e.event for e in full.events[index + 1 :] if e.event != "chunk"]
        assert [n for n in rest.names() if n != "chunk"] == expected_tail
        assert [e.id for e in rest.events if e.event != "chunk"] == [
            e.id for e in full.events[index + 1 :] if e.event != "chunk"
        ]


def test_resume_from_the_middle_of_a_merged_replay(server, alice):
    _, token, context = alice
    partial = slow_turn(server, token, context, stop_after=4)
    message_id = partial.first("metadata").data["message_id"]
    time.sleep(0.6)  # several chunks pile up: the replay merges them into one
    merged = stream(
        "GET",
        f"{server.url}/api/v1/messages/{message_id}/stream",
        token=token,
        headers={"Last-Event-ID": partial.events[-1].id},
        stop_after=1,
    )
    assert merged.events[0].event == "chunk" and len(merged.events[0].data["content"]) > 10
    # A client that saw only part of that merged chunk resumes from inside it.
    have = partial.text() + merged.events[0].data["content"][:5]
    middle = 2 + len(have)
    rest = resume(server, token, message_id, last=middle)
    content = Message.objects.get(pk=message_id).content
    assert have + rest.text() == content


def test_cancel_while_streaming(server, alice):
    user, token, context = alice
    results = {}

    def run():
        results["main"] = slow_turn(server, token, context)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 10
    message = None
    while time.monotonic() < deadline and message is None:
        message = Message.objects.filter(role="assistant", status="streaming").first()
        time.sleep(0.05)
    assert message is not None
    time.sleep(0.4)
    response = httpx.post(
        f"{server.url}/api/v1/messages/{message.id}/cancel",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    thread.join(30)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    main = results["main"]
    assert main.last().event == "done" and main.last().data["finish_reason"] == "cancelled"
    assert "flows_extracted" not in main.names()
    message.refresh_from_db()
    assert message.status == "cancelled" and message.content == main.text() != ""
    quota = Quota.objects.get(user=user)
    # Cancelled after its first chunk: it delivered output, so it consumed a request.
    assert quota.requests_used == 1 and quota.requests_reserved == 0 and quota.tokens_used > 0
    # Cancelling again is harmless and says the same.
    again = httpx.post(
        f"{server.url}/api/v1/messages/{message.id}/cancel",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert again.json()["status"] == "cancelled"


def test_cancel_on_disconnect_when_configured(daphne_factory, alice):
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="1", CHAT_CANCEL_ON_DISCONNECT="true")
    _, token, context = alice
    partial = slow_turn(server, token, context, stop_after=5)
    message_id = partial.first("metadata").data["message_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if Message.objects.get(pk=message_id).status != "streaming":
            break
        time.sleep(0.1)
    assert Message.objects.get(pk=message_id).status == "cancelled"


def test_foreign_users_resume_and_cancel_are_404(server, alice, transactional_db):
    _, token, context = alice
    full = slow_turn(server, token, context, text="hi")
    message_id = full.first("metadata").data["message_id"]
    mallory_token = factories.make_token(factories.make_user("mallory"))
    headers = {"Authorization": f"Token {mallory_token}"}
    assert (
        httpx.get(
            f"{server.url}/api/v1/messages/{message_id}/stream", headers=headers, timeout=10
        ).status_code
        == 404
    )
    assert (
        httpx.post(
            f"{server.url}/api/v1/messages/{message_id}/cancel", headers=headers, timeout=10
        ).status_code
        == 404
    )
    assert (
        httpx.get(f"{server.url}/api/v1/messages/{message_id}/stream", timeout=10).status_code
        == 401
    )
    assert (
        httpx.get(
            f"{server.url}/api/v1/messages/not-a-uuid/stream",
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        ).status_code
        == 404
    )
