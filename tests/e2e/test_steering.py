"""Through a real daphne: regenerate, edit, titles and Idempotency-Key
(docs/api.md#regenerate-and-edit, #titles, #idempotency)."""

from __future__ import annotations

import datetime
import json
import threading
import time
from typing import Any

import httpx
import pytest

from ai.models import Reservation, UsageRecord
from ai.providers.mock import mock_title
from conversations.models import Conversation, IdempotencyKey, Message
from tests import factories
from tests.e2e.server import DaphneServer
from tests.e2e.test_websocket import read_stream, recv, stream_events, text_of, token_socket
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript
from tests.sse_client import stream

pytestmark = pytest.mark.e2e


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return user, factories.make_token(user), factories.make_context(user, name="Work")


@pytest.fixture
def server(daphne_factory, transactional_db):
    return daphne_factory(MOCK_TOKEN_DELAY_MS="1")


def first_turn(server, token, context, text="I need to book a flight to Rome", **kw) -> Any:
    return stream(
        "POST",
        f"{server.url}/api/v1/conversations/stream",
        token=token,
        json_body={"context_id": str(context.id), "messages": [{"role": "user", "content": text}]},
        **kw,
    )


def next_turn(server, token, conversation_id, text, **kw) -> Any:
    return stream(
        "POST",
        f"{server.url}/api/v1/conversations/stream",
        token=token,
        json_body={"conversation_id": conversation_id, "message": text},
        **kw,
    )


def steer(server, token, kind, message_id, body=None, **kw) -> Any:
    return stream(
        "POST",
        f"{server.url}/api/v1/messages/{message_id}/{kind}",
        token=token,
        json_body=body,
        **kw,
    )


def wait_for(predicate, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --- regenerate ------------------------------------------------------------------------------


def test_regenerate_streams_a_new_reply_to_the_same_question(server, alice):
    _, token, context = alice
    first = first_turn(server, token, context)
    meta = first.first("metadata").data
    old_id = meta["message_id"]

    again = steer(server, token, "regenerate", old_id)
    assert again.status_code == 200
    assert again.names()[:2] == ["metadata", "typing"] and again.names()[-1] == "done"
    new = again.first("metadata").data
    assert new["message_id"] != old_id
    assert new["user_message_id"] == meta["user_message_id"]  # the same question, again
    assert new["conversation_id"] == meta["conversation_id"]
    assert "title" not in again.names()  # only a conversation's first turn names it

    old = Message.objects.get(pk=old_id)
    reply = Message.objects.get(pk=new["message_id"])
    assert old.superseded and old.status == "complete"  # kept, marked
    assert not reply.superseded and reply.status == "complete"
    assert str(reply.reply_to_id) == meta["user_message_id"]
    assert reply.content == again.text()
    # one user message, two replies: the question was not stored twice
    roles = list(
        Message.objects.filter(conversation_id=meta["conversation_id"]).values_list(
            "role", "superseded"
        )
    )
    assert sorted(roles) == [("assistant", False), ("assistant", True), ("user", False)]


def test_regenerate_refusals(server, alice, transactional_db):
    _, token, context = alice
    first = first_turn(server, token, context)
    meta = first.first("metadata").data
    second = next_turn(server, token, meta["conversation_id"], "And a hotel?")
    url = f"{server.url}/api/v1/messages/%s/regenerate"
    headers = {"Authorization": f"Token {token}", "Accept": "application/json"}
    with httpx.Client(timeout=30) as client:
        older = client.post(url % meta["message_id"], headers=headers)
        assert older.status_code == 409 and older.json()["code"] == "not_latest_reply"
        question = client.post(url % meta["user_message_id"], headers=headers)
        assert question.status_code == 400 and "message_id" in question.json()["errors"]
        bob = factories.make_user("bob")
        bob_token = factories.make_token(bob)
        theirs = client.post(
            url % second.first("metadata").data["message_id"],
            headers={**headers, "Authorization": f"Token {bob_token}"},
        )
        assert theirs.status_code == 404
        edit_reply = client.post(
            f"{server.url}/api/v1/messages/{meta['message_id']}/edit",
            headers=headers,
            json={"content": "x"},
        )
        assert edit_reply.status_code == 400 and "message_id" in edit_reply.json()["errors"]
        blank = client.post(
            f"{server.url}/api/v1/messages/{meta['user_message_id']}/edit",
            headers=headers,
            json={"content": "   "},
        )
        assert blank.status_code == 400 and "content" in blank.json()["errors"]
    # Nothing changed by the refusals.
    assert not Message.objects.filter(conversation_id=meta["conversation_id"], superseded=True)


def test_regenerate_while_streaming_is_busy_and_resume_and_cancel_work_on_the_new_reply(
    server, alice
):
    _, token, context = alice
    first = first_turn(server, token, context, text="[[mock:slow:20]] [[mock:long:60]] go")
    old_id = first.first("metadata").data["message_id"]
    # The new reply streams slowly: disconnect after a few chunks, then resume.
    part = steer(server, token, "regenerate", old_id, stop_after=6)
    new_id = part.first("metadata").data["message_id"]
    busy = httpx.post(
        f"{server.url}/api/v1/messages/{new_id}/regenerate",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert busy.status_code == 409 and busy.json()["code"] == "conversation_busy"
    last = part.events[-1].id
    rest = stream(
        "GET",
        f"{server.url}/api/v1/messages/{new_id}/stream",
        token=token,
        headers={"Last-Event-ID": last},
        stop_after=3,
    )
    cancel = httpx.post(
        f"{server.url}/api/v1/messages/{new_id}/cancel",
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    stored = Message.objects.get(pk=new_id)
    assert stored.status == "cancelled" and stored.content.startswith(part.text() + rest.text())
    assert Message.objects.get(pk=old_id).superseded


def test_regenerate_answers_json_when_asked(server, alice):
    _, token, context = alice
    first = first_turn(server, token, context)
    old_id = first.first("metadata").data["message_id"]
    response = httpx.post(
        f"{server.url}/api/v1/messages/{old_id}/regenerate",
        headers={"Authorization": f"Token {token}", "Accept": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["message"]["id"] != old_id and body["message"]["status"] == "complete"
    assert body["user_message"]["id"] == first.first("metadata").data["user_message_id"]


# --- edit ------------------------------------------------------------------------------------


def test_edit_supersedes_the_message_and_everything_after_it(server, alice):
    user, token, context = alice
    first = first_turn(server, token, context, text="I need to book a flight")
    meta = first.first("metadata").data
    conversation_id = meta["conversation_id"]
    second = next_turn(server, token, conversation_id, "And a hotel too")
    second_meta = second.first("metadata").data

    edited = steer(
        server,
        token,
        "edit",
        meta["user_message_id"],
        {"content": "I need to book a train [[mock:echo]]"},
    )
    assert edited.names()[-1] == "done"
    new = edited.first("metadata").data
    assert new["user_message_id"] != meta["user_message_id"]
    assert edited.text() == "I need to book a train [[mock:echo]]"
    superseded = set(
        Message.objects.filter(conversation_id=conversation_id, superseded=True).values_list(
            "id", flat=True
        )
    )
    assert {str(i) for i in superseded} == {
        meta["user_message_id"],
        meta["message_id"],
        second_meta["user_message_id"],
        second_meta["message_id"],
    }
    live = Message.objects.filter(conversation_id=conversation_id, superseded=False)
    assert [(m.role, m.content) for m in live.order_by("created_at")] == [
        ("user", "I need to book a train [[mock:echo]]"),
        ("assistant", edited.text()),
    ]
    assert Reservation.objects.filter(user=user, status="held").count() == 0


def test_superseded_messages_never_reach_the_model(daphne_factory, transactional_db, alice):
    _, token, context = alice
    with FakeOpenAIServer() as fake:
        server = daphne_factory(**fake.daphne_env("sk-test-steering"))
        fake.push(OpenAIScript(tokens=["FIRST-", "ANSWER"]))
        first = first_turn(server, token, context, text="ORIGINAL-QUESTION")
        meta = first.first("metadata").data
        fake.push(OpenAIScript(tokens=["SECOND-", "ANSWER"]))
        again = steer(server, token, "regenerate", meta["message_id"])
        assert again.names()[-1] == "done" and again.text() == "SECOND-ANSWER"
        fake.push(OpenAIScript(tokens=["THIRD-", "ANSWER"]))
        edited = steer(
            server, token, "edit", meta["user_message_id"], {"content": "EDITED-QUESTION"}
        )
        assert edited.names()[-1] == "done" and edited.text() == "THIRD-ANSWER"
        fake.push(OpenAIScript(tokens=["FOURTH"]))
        follow = next_turn(server, token, meta["conversation_id"], "FOLLOW-UP")
        assert follow.names()[-1] == "done"

        streamed = [r.body for r in fake.requests if r.body.get("stream")]
        assert len(streamed) == 4
        seen = [" ".join(str(m["content"]) for m in body["messages"]) for body in streamed]
        # Regenerate: the question again, never the replaced answer.
        assert "ORIGINAL-QUESTION" in seen[1] and "FIRST-ANSWER" not in seen[1]
        # Edit: the new question only.
        assert "EDITED-QUESTION" in seen[2]
        assert "ORIGINAL-QUESTION" not in seen[2] and "SECOND-ANSWER" not in seen[2]
        # Later turns: only what was not superseded.
        assert "EDITED-QUESTION" in seen[3] and "THIRD-ANSWER" in seen[3]
        for gone in ("ORIGINAL-QUESTION", "FIRST-ANSWER", "SECOND-ANSWER"):
            assert gone not in seen[3]


def test_regenerate_and_edit_over_the_websocket(server, alice):
    _, token, context = alice
    with token_socket(server, token) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "context_id": str(context.id),
                    "messages": [{"role": "user", "content": "I need to call Anna"}],
                }
            )
        )
        first = stream_events(read_stream(ws))
        meta = first[0]
        assert meta["type"] == "metadata"
        ws.send(json.dumps({"type": "regenerate", "message_id": meta["message_id"]}))
        again = stream_events(read_stream(ws))
        assert again[0]["type"] == "metadata" and again[-1]["type"] == "done"
        assert again[0]["user_message_id"] == meta["user_message_id"]
        assert again[0]["message_id"] != meta["message_id"]
        ws.send(
            json.dumps(
                {
                    "type": "edit",
                    "message_id": meta["user_message_id"],
                    "content": "Call Bob [[mock:echo]]",
                }
            )
        )
        edited = stream_events(read_stream(ws))
        assert text_of(edited) == "Call Bob [[mock:echo]]"
        ws.send(json.dumps({"type": "regenerate", "message_id": meta["message_id"]}))
        refused = recv(ws)
        assert refused["type"] == "error" and refused["code"] == "message_superseded"
        assert refused["status"] == 409 and "id" not in refused
    assert Message.objects.get(pk=meta["message_id"]).superseded
    assert Message.objects.get(pk=again[0]["message_id"]).superseded


# --- titles ----------------------------------------------------------------------------------


def test_the_first_reply_names_the_conversation_with_a_title_event(server, alice):
    _, token, context = alice
    text = "I need to plan the team offsite in Lisbon next month"
    first = first_turn(server, token, context, text=text)
    names = first.names()
    assert names[-3:] == ["flows_extracted", "title", "done"]
    title = first.first("title").data
    expected = mock_title(f'<message role="user">\n{text}\n</message>')
    assert title == {
        "type": "title",
        "conversation_id": first.first("metadata").data["conversation_id"],
        "title": expected,
    }
    assert Conversation.objects.get(pk=title["conversation_id"]).title == expected
    # The flow extraction named it in the same call: no title call, one line for both.
    lines = UsageRecord.objects.filter(conversation_id=title["conversation_id"])
    assert sorted(lines.values_list("purpose", flat=True)) == ["extraction", "reply"]
    assert lines.get(purpose="extraction").tokens_charged > 0
    # A resume replays the same events, the title included, at the same ids.
    message_id = first.first("metadata").data["message_id"]
    replay = stream("GET", f"{server.url}/api/v1/messages/{message_id}/stream", token=token)
    assert [(e.id, e.event) for e in replay.events][-3:] == [(e.id, e.event) for e in first.events][
        -3:
    ]
    assert replay.first("title").data == title
    # Later turns do not rename it.
    later = next_turn(server, token, title["conversation_id"], "What else?")
    assert "title" not in later.names()


def test_a_title_the_user_set_is_never_overwritten(server, alice):
    _, token, context = alice
    part = first_turn(
        server, token, context, text="[[mock:slow:30]] [[mock:long:40]] plan", stop_after=4
    )
    meta = part.first("metadata").data
    patched = httpx.patch(
        f"{server.url}/api/v1/conversations/{meta['conversation_id']}/",
        headers={"Authorization": f"Token {token}"},
        json={"title": "My own title"},
        timeout=30,
    )
    assert patched.status_code == 200
    rest = stream(
        "GET",
        f"{server.url}/api/v1/messages/{meta['message_id']}/stream",
        token=token,
        headers={"Last-Event-ID": part.events[-1].id},
    )
    assert rest.names()[-1] == "done" and "title" not in rest.names()
    conversation = Conversation.objects.get(pk=meta["conversation_id"])
    assert conversation.title == "My own title" and conversation.title_set_by_user


def test_a_failed_title_call_is_not_the_turns_error(server, alice):
    _, token, context = alice
    first = first_turn(server, token, context, text="Plan a trip [[mock:title-fail]]")
    assert first.names()[-1] == "done" and "title" not in first.names()
    conversation_id = first.first("metadata").data["conversation_id"]
    line = UsageRecord.objects.get(conversation_id=conversation_id, purpose="title")
    assert line.outcome == "failed" and line.error_code == "ai_unavailable"
    # The call ran: no title is due any more, and the next turn makes no title call.
    assert not Conversation.objects.get(pk=conversation_id).title_pending
    later = next_turn(server, token, conversation_id, "And then?")
    assert "title" not in later.names()
    assert UsageRecord.objects.filter(conversation_id=conversation_id, purpose="title").count() == 1


def test_through_the_openai_sdk_the_extraction_names_the_conversation_or_a_title_call_does(
    daphne_factory, transactional_db, alice
):
    _, token, context = alice
    with FakeOpenAIServer() as fake:
        server = daphne_factory(**fake.daphne_env("sk-test-titles"))
        # A model that answers the titled schema: one structured call names it.
        fake.push(OpenAIScript(tokens=["Sure, ", "let's plan."]))
        answer = {"flows": [], "updated": [], "title": '"Lisbon offsite planning."'}
        fake.push(OpenAIScript(content=json.dumps(answer), prompt_tokens=300))
        first = first_turn(server, token, context, text="Help me plan the Lisbon offsite")
        assert first.names()[-3:] == ["flows_extracted", "title", "done"]
        assert first.first("title").data["title"] == "Lisbon offsite planning"  # cleaned
        calls = [r.body for r in fake.requests if not r.body.get("stream")]
        assert len(calls) == 1
        format_ = calls[0]["response_format"]["json_schema"]
        assert format_["name"] == "flows_extraction"
        assert "title" in format_["schema"]["required"]
        assert "3. title:" in calls[0]["messages"][0]["content"]
        conversation_id = first.first("metadata").data["conversation_id"]
        lines = UsageRecord.objects.filter(conversation_id=conversation_id)
        assert sorted(lines.values_list("purpose", flat=True)) == ["extraction", "reply"]
        assert lines.get(purpose="extraction").input_tokens == 300

        # A model that leaves the title out: a title call of its own, after the extraction.
        fake.requests.clear()
        fake.push(OpenAIScript(tokens=["Noted."]))
        fake.push(OpenAIScript(content=json.dumps({"flows": [], "updated": []})))
        fake.push(OpenAIScript(content=json.dumps({"title": "Dentist appointment"})))
        second = first_turn(server, token, context, text="I need to call the dentist")
        assert second.first("title").data["title"] == "Dentist appointment"
        calls = [r.body for r in fake.requests if not r.body.get("stream")]
        names = [c["response_format"]["json_schema"]["name"] for c in calls]
        assert names == ["flows_extraction", "conversation_title"]
        conversation_id = second.first("metadata").data["conversation_id"]
        purposes = UsageRecord.objects.filter(conversation_id=conversation_id).values_list(
            "purpose", flat=True
        )
        assert sorted(purposes) == ["extraction", "reply", "title"]

        # A later turn asks for flows only.
        fake.requests.clear()
        fake.push(OpenAIScript(tokens=["Ok."]))
        later = next_turn(server, token, conversation_id, "Tomorrow morning")
        assert "title" not in later.names()
        (call,) = [r.body for r in fake.requests if not r.body.get("stream")]
        assert "title" not in call["response_format"]["json_schema"]["schema"]["properties"]


# --- Idempotency-Key -------------------------------------------------------------------------


def test_a_retried_post_with_the_same_key_follows_the_first_turn(server, alice):
    user, token, context = alice
    key = {"Idempotency-Key": "order-42"}
    first = first_turn(server, token, context, headers=key)
    retry = first_turn(server, token, context, headers=key)
    assert retry.first("metadata").data["message_id"] == first.first("metadata").data["message_id"]
    assert retry.text() == first.text()  # replayed from the store: the same text, ...
    assert (
        [(e.id, e.event) for e in retry.events][-4:]
        == [  # ... the same trailing events
            (e.id, e.event) for e in first.events
        ][-4:]
    )
    assert Message.objects.filter(user=user, role="assistant").count() == 1
    assert Conversation.objects.filter(user=user).count() == 1
    assert IdempotencyKey.objects.filter(user=user, key="order-42").count() == 1

    json_retry = httpx.post(
        f"{server.url}/api/v1/conversations/stream",
        headers={"Authorization": f"Token {token}", "Accept": "application/json", **key},
        json={
            "context_id": str(context.id),
            "messages": [{"role": "user", "content": "I need to book a flight to Rome"}],
        },
        timeout=30,
    )
    assert json_retry.status_code == 200
    assert json_retry.json()["message"]["id"] == first.first("metadata").data["message_id"]

    other_body = httpx.post(
        f"{server.url}/api/v1/conversations/stream",
        headers={"Authorization": f"Token {token}", **key},
        json={"context_id": str(context.id), "messages": [{"role": "user", "content": "Else"}]},
        timeout=30,
    )
    assert other_body.status_code == 422
    assert other_body.json()["code"] == "idempotency_key_reused"
    bad = httpx.post(
        f"{server.url}/api/v1/conversations/stream",
        headers={"Authorization": f"Token {token}", "Idempotency-Key": "x" * 300},
        json={"context_id": str(context.id), "messages": [{"role": "user", "content": "Hi"}]},
        timeout=30,
    )
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()["errors"]
    # Another user's same key is another key.
    bob = factories.make_user("bob")
    bob_turn = first_turn(
        server, factories.make_token(bob), factories.make_context(bob), headers=key
    )
    assert bob_turn.names()[-1] == "done"
    assert (
        bob_turn.first("metadata").data["message_id"] != first.first("metadata").data["message_id"]
    )


def test_the_same_key_on_regenerate_starts_one_new_reply(server, alice):
    user, token, context = alice
    first = first_turn(server, token, context)
    old_id = first.first("metadata").data["message_id"]
    key = {"Idempotency-Key": "regen-1"}
    one = steer(server, token, "regenerate", old_id, headers=key)
    two = steer(server, token, "regenerate", old_id, headers=key)
    assert one.first("metadata").data["message_id"] == two.first("metadata").data["message_id"]
    assert Message.objects.filter(user=user, role="assistant").count() == 2


def test_an_expired_key_is_free_again(server, alice, settings):
    user, token, context = alice
    key = {"Idempotency-Key": "old-key"}
    first = first_turn(server, token, context, headers=key)
    IdempotencyKey.objects.filter(user=user).update(
        created_at=IdempotencyKey.objects.get(user=user).created_at - datetime.timedelta(hours=25)
    )
    second = first_turn(server, token, context, headers=key)
    assert second.first("metadata").data["message_id"] != first.first("metadata").data["message_id"]


def race(servers: list[DaphneServer], token: str, context: Any, attempt: int) -> list[Any]:
    """The same request with the same key sent to two processes at the same moment."""
    key = {"Idempotency-Key": f"race-{attempt}"}
    results: list[Any] = [None, None]
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = first_turn(servers[i], token, context, text=f"Race {attempt}", headers=key)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_the_same_key_at_two_processes_at_once_starts_one_turn(alice, transactional_db):
    user, token, context = alice
    servers = [
        DaphneServer({"MOCK_TOKEN_DELAY_MS": "5", "WORKER_TAG": str(i)}).start() for i in range(2)
    ]
    try:
        for attempt in range(5):
            results = race(servers, token, context, attempt)
            ids = set()
            for result in results:
                assert result is not None
                if result.status_code == 200:
                    ids.add(result.first("metadata").data["message_id"])
                else:  # lost the race inside the database: told to retry, nothing started
                    assert result.status_code == 409, result.body
            assert len(ids) == 1
            assert (
                Message.objects.filter(user=user, role="user", content=f"Race {attempt}").count()
                == 1
            )
    finally:
        for server in servers:
            server.stop()
    assert wait_for(lambda: not Message.objects.filter(user=user, status="streaming").exists())
