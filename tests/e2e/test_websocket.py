"""The chat WebSocket end to end (docs/api.md#websocket): a real daphne, a real WebSocket client."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conversations.models import Message
from flows.models import Flow
from tests import factories
from tests.e2e.test_metrics import sample

pytestmark = pytest.mark.e2e

SLOW = "[[mock:slow:50]] [[mock:long:200]] "


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return user, factories.make_token(user), factories.make_context(user, name="Work")


def ws_url(server) -> str:
    return server.url.replace("http://", "ws://") + "/ws/v1/chat/"


def ws_connect(
    server,
    *,
    subprotocols: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> ClientConnection:
    """A client as a browser would open it: with an ``Origin`` of an allowed host."""
    return connect(
        ws_url(server),
        origin=server.url,
        subprotocols=subprotocols,
        additional_headers=headers,
        proxy=None,
        open_timeout=10,
    )


def token_socket(server, token: str) -> ClientConnection:
    return ws_connect(server, subprotocols=["token", token])


def recv(ws: ClientConnection, timeout: float = 15) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def read_stream(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame up to the stream's last event (``done``, or an ``error`` with an id)."""
    events = []
    while True:
        event = recv(ws)
        events.append(event)
        if event["type"] == "done" or (event["type"] == "error" and "id" in event):
            return events


def stream_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of the stream itself (they carry an ``id``)."""
    return [e for e in events if "id" in e]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(e["content"] for e in events if e["type"] == "chunk")


def chat(context, text: str) -> dict[str, Any]:
    return {
        "type": "chat",
        "context_id": str(context.id),
        "messages": [{"role": "user", "content": text}],
    }


def closed_code(ws: ClientConnection) -> int:
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=10)
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def test_chat_event_order_ids_text_and_flows(daphne, alice):
    _, token, context = alice
    with token_socket(daphne, token) as ws:
        assert ws.subprotocol == "token"  # the scheme, never the key
        ws.send(json.dumps(chat(context, "I need to book a flight and call the client")))
        events = read_stream(ws)

    names = [e["type"] for e in events]
    assert names[:2] == ["metadata", "typing"]
    assert names[-4:] == ["typing", "flows_extracted", "title", "done"]
    assert set(names[2:-4]) == {"chunk"} and len(names) > 8
    assert events[1]["status"] == "start" and events[-4]["status"] == "stop"
    ids = [e["id"] for e in events]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    meta = events[0]
    message = Message.objects.get(pk=meta["message_id"])
    assert meta["resume_url"] == f"/api/v1/messages/{message.id}/stream"
    assert message.status == "complete"
    assert message.content == text_of(events) and "Work" in message.content
    done = events[-1]
    assert done["finish_reason"] == "stop" and done["message_id"] == str(message.id)
    assert done["usage"]["output_tokens"] == message.output_tokens
    titles = sorted(f["title"] for f in events[-3]["flows"])
    assert titles == ["Book a flight", "Call the client"]
    stored = Flow.objects.filter(context=context, source_message=message)
    assert sorted(stored.values_list("title", flat=True)) == titles


def test_text_with_newlines_and_emoji_survives(daphne, alice):
    _, token, context = alice
    text = 'line one\nline "two"\r\n{"type":"done"} 🎉 ünïcødé [[mock:echo]]'
    with token_socket(daphne, token) as ws:
        ws.send(json.dumps(chat(context, text)))
        events = read_stream(ws)
    assert text_of(events) == text
    assert Message.objects.get(pk=events[-1]["message_id"]).content == text


def test_several_turns_on_one_socket_with_server_kept_history(daphne, alice):
    _, token, context = alice
    with token_socket(daphne, token) as ws:
        ws.send(json.dumps(chat(context, "hello")))
        first = read_stream(ws)
        conversation_id = first[0]["conversation_id"]
        ws.send(
            json.dumps({"type": "chat", "conversation_id": conversation_id, "message": "again"})
        )
        second = read_stream(ws)
    assert second[-1]["type"] == "done"
    assert second[0]["conversation_id"] == conversation_id
    assert Message.objects.filter(conversation_id=conversation_id).count() == 4


def test_authorization_header_for_non_browser_clients(daphne, alice):
    _, token, context = alice
    with ws_connect(daphne, headers={"Authorization": f"Token {token}"}) as ws:
        assert ws.subprotocol is None
        ws.send(json.dumps(chat(context, "hi")))
        assert read_stream(ws)[-1]["type"] == "done"


def test_session_cookie_after_admin_login(daphne, transactional_db):
    staff = factories.make_user("staffer", is_staff=True)
    context = factories.make_context(staff, name="Ops")
    with httpx.Client(base_url=daphne.url, timeout=10) as client:
        page = client.get("/admin/login/")
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = client.post(
            "/admin/login/?next=/admin/",
            data={
                "username": "staffer",
                "password": "pw-staffer",
                "csrfmiddlewaretoken": csrf,
                "next": "/admin/",
            },
        )
        assert response.status_code == 302, response.text[:500]
        session = client.cookies["sessionid"]
    with ws_connect(daphne, headers={"Cookie": f"sessionid={session}"}) as ws:
        ws.send(json.dumps(chat(context, "hi from the admin")))
        events = read_stream(ws)
    assert events[-1]["type"] == "done"
    assert Message.objects.get(pk=events[0]["message_id"]).user == staff


def test_no_credentials_closes_with_4401(daphne, transactional_db):
    with ws_connect(daphne) as ws:
        error = recv(ws)
        assert error["type"] == "error" and error["code"] == "not_authenticated"
        assert error["status"] == 401 and "id" not in error
        assert closed_code(ws) == 4401


@pytest.mark.parametrize(
    ("subprotocols", "headers", "accepted"),
    [
        (["token", "not-a-real-key"], None, "token"),
        (["bearer", "not.a.jwt"], None, "bearer"),
        (None, {"Authorization": "Token not-a-real-key"}, None),
    ],
)
def test_bad_credentials_close_with_4401_without_session_fallback(
    daphne, transactional_db, subprotocols, headers, accepted
):
    with ws_connect(daphne, subprotocols=subprotocols, headers=headers) as ws:
        assert ws.subprotocol == accepted
        error = recv(ws)
        assert error["type"] == "error" and error["code"] == "authentication_failed"
        assert error["status"] == 401
        assert closed_code(ws) == 4401
    assert "not-a-real-key" not in daphne.output()


def test_foreign_origin_is_refused(daphne, alice):
    _, token, _ = alice
    with pytest.raises(Exception, match="403"):
        connect(
            ws_url(daphne),
            origin="http://evil.example",
            subprotocols=["token", token],
            proxy=None,
            open_timeout=10,
        )


def test_script_without_origin_uses_its_authorization_header(daphne, alice):
    _, token, context = alice
    with connect(
        ws_url(daphne),
        additional_headers={"Authorization": f"Token {token}"},
        proxy=None,
        open_timeout=10,
    ) as ws:
        ws.send(json.dumps(chat(context, "hello")))
        events = []
        while not events or events[-1]["type"] not in ("done", "error"):
            events.append(recv(ws))
    assert events[0]["type"] == "metadata" and events[-1]["type"] == "done"


def _metrics(daphne) -> str:
    return httpx.get(f"{daphne.url}/metrics", timeout=10).text


def test_cancel_while_streaming(daphne, alice):
    _, token, context = alice
    cancels_before = sample(_metrics(daphne), "chat_cancels_total")
    with token_socket(daphne, token) as ws:
        ws.send(json.dumps(chat(context, SLOW + "tell me a long story")))
        events = [recv(ws) for _ in range(6)]  # metadata, typing, 4 chunks
        assert [e["type"] for e in events[:3]] == ["metadata", "typing", "chunk"]
        message_id = events[0]["message_id"]
        ws.send(json.dumps({"type": "cancel", "message_id": message_id}))
        events += read_stream(ws)
    acks = [e for e in events if e["type"] == "cancel_accepted"]
    assert acks == [{"type": "cancel_accepted", "message_id": message_id}]
    stream = stream_events(events)
    assert [e["type"] for e in stream[-2:]] == ["typing", "done"]
    assert stream[-1]["finish_reason"] == "cancelled"
    ids = [e["id"] for e in stream]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    message = Message.objects.get(pk=message_id)
    assert message.status == "cancelled" and message.finish_reason == "cancelled"
    text = text_of(events)
    assert message.content == text and 0 < len(text.split()) < 150
    assert sample(_metrics(daphne), "chat_cancels_total") == cancels_before + 1


def test_cancel_of_another_users_message_is_not_found(daphne, alice):
    _, token, context = alice
    mallory = factories.make_user("mallory")
    with token_socket(daphne, token) as ws:
        ws.send(json.dumps(chat(context, SLOW + "a slow one")))
        message_id = recv(ws)["message_id"]
        with token_socket(daphne, factories.make_token(mallory)) as intruder:
            intruder.send(json.dumps({"type": "cancel", "message_id": message_id}))
            error = recv(intruder)
            assert error["type"] == "error" and error["code"] == "not_found"
            assert error["status"] == 404 and error["request"] == "cancel"
            # still usable: a cancel without an id names the field
            intruder.send(json.dumps({"type": "cancel"}))
            error = recv(intruder)
            assert error["code"] == "invalid" and "message_id" in error["errors"]
        assert Message.objects.get(pk=message_id).status == "streaming"
        ws.send(json.dumps({"type": "cancel", "message_id": message_id}))
        assert read_stream(ws)[-1]["finish_reason"] == "cancelled"


def test_bad_body_is_an_error_and_the_socket_stays_usable(daphne, alice):
    _, token, context = alice
    with token_socket(daphne, token) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "context_id": str(context.id),
                    "messages": [{"role": "user", "content": ""}],
                }
            )
        )
        error = recv(ws)
        assert error["type"] == "error" and error["code"] == "invalid"
        assert error["status"] == 400 and error["request"] == "chat"
        assert "messages" in error["errors"] and "id" not in error

        ws.send("{not json")
        assert recv(ws)["code"] == "invalid_json"
        ws.send(json.dumps({"type": "launch"}))
        error = recv(ws)
        assert error["code"] == "invalid" and "type" in error["errors"]
        ws.send(json.dumps(["chat"]))
        assert recv(ws)["code"] == "invalid"
        ws.send(json.dumps({"type": "chat", "context_id": "0" * 32, "message": "x"}))
        assert recv(ws)["code"] in ("invalid", "not_found")
        other = factories.make_context(factories.make_user("bob"))
        ws.send(json.dumps(chat(other, "not mine")))
        error = recv(ws)
        assert error["code"] == "not_found" and error["status"] == 404

        ws.send(json.dumps(chat(context, "now a good one")))
        events = read_stream(ws)
    assert events[0]["type"] == "metadata" and events[-1]["type"] == "done"


def test_one_stream_per_socket_busy(daphne, alice):
    _, token, context = alice
    with token_socket(daphne, token) as ws:
        ws.send(json.dumps(chat(context, SLOW + "first")))
        message_id = recv(ws)["message_id"]
        ws.send(json.dumps(chat(context, "second")))
        events = []
        while True:
            event = recv(ws)
            if event["type"] == "error" and "id" not in event:
                break
            events.append(event)
        assert event["code"] == "busy" and event["status"] == 409
        ws.send(json.dumps({"type": "cancel", "message_id": message_id}))
        events += read_stream(ws)
        assert events[-1]["finish_reason"] == "cancelled"
        ws.send(json.dumps(chat(context, "third, after the first ended")))
        assert read_stream(ws)[-1]["type"] == "done"


def test_resume_after_disconnect_live_and_stored(daphne, alice):
    _, token, context = alice
    before = _metrics(daphne)
    with token_socket(daphne, token) as ws:
        ws.send(json.dumps(chat(context, "[[mock:slow:20]] [[mock:long:60]] go")))
        first = [recv(ws) for _ in range(8)]
    message_id = first[0]["message_id"]
    last_id = first[-1]["id"]
    assert first[-1]["type"] == "chunk"
    with token_socket(daphne, token) as ws:  # the generation ran on without a reader
        ws.send(json.dumps({"type": "resume", "message_id": message_id, "last_event_id": last_id}))
        rest = read_stream(ws)
    assert rest[0]["type"] == "chunk" and rest[0]["id"] > last_id
    assert rest[-1]["type"] == "done"
    message = Message.objects.get(pk=message_id)
    assert message.status == "complete"
    assert text_of(first) + text_of(rest) == message.content

    with token_socket(daphne, token) as ws:  # finished: replayed from the database
        ws.send(json.dumps({"type": "resume", "message_id": message_id}))
        replay = read_stream(ws)
    assert [e["type"] for e in replay[:2]] == ["metadata", "typing"]
    assert [e["type"] for e in replay[-4:]] == ["typing", "flows_extracted", "title", "done"]
    assert text_of(replay) == message.content
    assert replay[-1]["id"] == rest[-1]["id"]
    after = _metrics(daphne)
    for source in ("live", "stored"):
        label = f'source="{source}"'
        assert (
            sample(after, "chat_resumes_total", label)
            == sample(before, "chat_resumes_total", label) + 1
        )


def test_cancel_on_disconnect_setting(daphne_factory, alice, transactional_db):
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="2", CHAT_CANCEL_ON_DISCONNECT="true")
    _, token, context = alice
    with token_socket(server, token) as ws:
        ws.send(json.dumps(chat(context, SLOW + "bye")))
        message_id = recv(ws)["message_id"]
        recv(ws)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = Message.objects.get(pk=message_id)
        if message.status != "streaming":
            break
        time.sleep(0.1)
    assert message.status == "cancelled"


REDIS = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/2"


def test_resume_and_cancel_on_another_process(daphne_factory, alice, transactional_db):
    """Two daphne processes on one Redis: a socket on the second follows the reply the
    first generates (live, through the relay) and cancels it."""
    env = {"REDIS_URL": REDIS, "MOCK_TOKEN_DELAY_MS": "1", "CHAT_KEEPALIVE_SECONDS": "1"}
    first, second = daphne_factory(**env, CHAT_SSE_RETRY_MS="2001"), daphne_factory(**env)
    _, token, context = alice
    with token_socket(first, token) as owner:
        owner.send(json.dumps(chat(context, "[[mock:slow:40]] [[mock:long:200]] go")))
        head = [recv(owner) for _ in range(6)]
        message_id = head[0]["message_id"]
        with token_socket(second, token) as other:
            other.send(
                json.dumps(
                    {"type": "resume", "message_id": message_id, "last_event_id": head[-1]["id"]}
                )
            )
            relayed = [recv(other) for _ in range(4)]
            assert all(e["type"] == "chunk" for e in relayed)
            other.send(json.dumps({"type": "cancel", "message_id": message_id}))
            relayed += read_stream(other)
        owned = head + read_stream(owner)
    assert owned[-1]["finish_reason"] == "cancelled"
    assert relayed[-1]["type"] == "done" and relayed[-1]["finish_reason"] == "cancelled"
    assert {"type": "cancel_accepted", "message_id": message_id} in relayed
    message = Message.objects.get(pk=message_id)
    assert message.status == "cancelled"
    assert text_of(owned) == message.content
    assert text_of(head) + text_of(relayed) == message.content
