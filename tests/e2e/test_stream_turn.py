"""The streaming chat turn end to end: a real daphne, a real SSE client.

See docs/api.md#the-streaming-turn.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from ai.models import Quota, Reservation, UsageRecord
from ai.quota.services import quota_get_or_create
from conversations.models import Message
from flows.models import Flow
from tests import factories
from tests.sse_client import raw_post, stream

pytestmark = pytest.mark.e2e

EXPECTED_ORDER_HEAD = ["metadata", "typing"]
EXPECTED_ORDER_TAIL = ["typing", "flows_extracted", "title", "done"]


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return user, factories.make_token(user), factories.make_context(user, name="Work")


def chat_url(server) -> str:
    return f"{server.url}/api/v1/conversations/stream"


def body_for(context, text: str) -> dict:
    return {"context_id": str(context.id), "messages": [{"role": "user", "content": text}]}


def test_event_order_ids_persistence_quota_and_flows(daphne, alice):
    user, token, context = alice
    before = quota_get_or_create(user=user)
    result = stream(
        "POST",
        chat_url(daphne),
        token=token,
        json_body=body_for(context, "I need to book a flight and call the client"),
    )
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-accel-buffering"] == "no"

    names = result.names()
    assert names[:2] == EXPECTED_ORDER_HEAD
    assert names[-4:] == EXPECTED_ORDER_TAIL
    assert set(names[2:-4]) == {"chunk"} and len(names) > 8
    assert result.events[1].data["status"] == "start"
    assert result.events[-4].data["status"] == "stop"
    ids = [int(e.id) for e in result.events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(e.data["type"] == e.event for e in result.events)

    meta = result.first("metadata").data
    message = Message.objects.get(pk=meta["message_id"])
    assert meta["user_message_id"] and meta["provider"] == "mock"
    assert meta["resume_url"] == f"/api/v1/messages/{message.id}/stream"
    assert message.status == "complete" and message.finish_reason == "stop"
    assert message.content == result.text() and "Work" in message.content
    assert message.output_tokens > 0 and message.input_tokens > 0
    user_message = Message.objects.get(pk=meta["user_message_id"])
    assert user_message.content == "I need to book a flight and call the client"
    assert user_message.created_at < message.created_at

    done = result.last().data
    assert done["finish_reason"] == "stop" and done["message_id"] == str(message.id)
    assert done["usage"] == {
        "input_tokens": message.input_tokens,
        "output_tokens": message.output_tokens,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "estimated": message.usage_estimated,
        "cost": "0.00000000",  # the mock provider has no price
        "currency": "USD",
    }
    after = Quota.objects.get(user=user)
    assert after.requests_used == before.requests_used + 1
    assert after.tokens_used > before.tokens_used
    assert after.requests_reserved == 0 and after.tokens_reserved == 0
    assert done["quota"]["requests_used"] == after.requests_used
    assert not Reservation.objects.filter(status="held").exists()
    # The extraction named the new conversation in the same call (docs/api.md#titles).
    assert set(UsageRecord.objects.values_list("purpose", flat=True)) == {"reply", "extraction"}

    flows = result.first("flows_extracted").data["flows"]
    assert sorted(f["title"] for f in flows) == ["Book a flight", "Call the client"]
    stored = Flow.objects.filter(context=context, source_message=message)
    assert sorted(stored.values_list("title", flat=True)) == ["Book a flight", "Call the client"]


def test_text_with_newlines_quotes_emoji_and_sse_lookalikes_survives(daphne, alice):
    _, token, context = alice
    text = (
        'line one\nline "two"\r\ndata: not an event\nevent: done\n\nid: 99 🎉 ünïcødé [[mock:echo]]'
    )
    result = stream("POST", chat_url(daphne), token=token, json_body=body_for(context, text))
    assert result.text() == text
    assert Message.objects.get(pk=result.last().data["message_id"]).content == text


def test_server_kept_history_shape(daphne, alice):
    _, token, context = alice
    first = stream("POST", chat_url(daphne), token=token, json_body=body_for(context, "hello"))
    conversation_id = first.first("metadata").data["conversation_id"]
    second = stream(
        "POST",
        chat_url(daphne),
        token=token,
        json_body={"conversation_id": conversation_id, "message": "and again"},
    )
    assert second.last().event == "done"
    assert second.first("metadata").data["conversation_id"] == conversation_id
    assert Message.objects.filter(conversation_id=conversation_id).count() == 4


def test_chunks_arrive_incrementally_with_keepalives(daphne_factory, alice, transactional_db):
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="1", CHAT_KEEPALIVE_SECONDS="0.2")
    _, token, context = alice
    body = json.dumps(body_for(context, "[[mock:slow:60]] [[mock:long:20]] tell me")).encode()
    read = raw_post(
        chat_url(server),
        body,
        {
            "Authorization": f"Token {token}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        },
    )
    assert b" 200 " in read.head.split(b"\r\n")[0]
    text = read.body.decode()
    assert text.startswith("retry: ")
    chunk_times = [t for t, piece in read.pieces if b"event: chunk" in piece]
    assert len(chunk_times) >= 10
    # 20 deltas 60 ms apart: the first arrives long before the last (not buffered).
    assert chunk_times[-1] - chunk_times[0] > 0.6


def test_keepalive_comment_during_silence(daphne_factory, alice, transactional_db):
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="1", CHAT_KEEPALIVE_SECONDS="0.2")
    _, token, context = alice
    body = json.dumps(body_for(context, "[[mock:slow:700]] [[mock:long:2]] hi")).encode()
    read = raw_post(
        chat_url(server),
        body,
        {
            "Authorization": f"Token {token}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        },
    )
    text = read.body.decode()
    assert text.count(": keep-alive\n\n") >= 2
    assert text.rstrip().endswith("}") and "event: done" in text


def test_json_mode_without_event_stream(daphne, alice):
    _, token, context = alice
    response = httpx.post(
        chat_url(daphne),
        json=body_for(context, "I have to water the plants"),
        headers={"Authorization": f"Token {token}", "Accept": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"conversation_id", "user_message", "message", "flows", "quota"}
    assert body["message"]["status"] == "complete" and body["message"]["content"]
    assert body["user_message"]["content"] == "I have to water the plants"
    assert [f["title"] for f in body["flows"]] == ["Water the plants"]
    stored = Message.objects.get(pk=body["message"]["id"])
    assert stored.content == body["message"]["content"]


def test_alias_endpoint(daphne, alice):
    _, token, context = alice
    result = stream(
        "POST", f"{daphne.url}/api/ai/chat/stream", token=token, json_body=body_for(context, "hi")
    )
    assert result.status_code == 200 and result.last().event == "done"


@pytest.mark.parametrize(
    ("code", "retryable"),
    [("ai_rate_limited", True), ("ai_unavailable", True), ("ai_error", False)],
)
def test_provider_error_before_first_token(daphne, alice, code, retryable):
    user, token, context = alice
    result = stream(
        "POST",
        chat_url(daphne),
        token=token,
        json_body=body_for(context, f"[[mock:error:{code}]] hi"),
    )
    assert result.names() == ["metadata", "typing", "typing", "error"]
    error = result.last().data
    assert error["code"] == code and error["retryable"] is retryable
    assert "Traceback" not in error["message"]
    message = Message.objects.get(pk=result.first("metadata").data["message_id"])
    assert message.status == "failed" and message.content == "" and message.error_code == code
    assert Message.objects.filter(role="user", content__contains="hi").exists()
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.tokens_used) == (0, 0)
    assert (quota.requests_reserved, quota.tokens_reserved) == (0, 0)


def test_stream_cut_midway_keeps_partial_reply_as_failed(daphne, alice):
    user, token, context = alice
    result = stream(
        "POST",
        chat_url(daphne),
        token=token,
        json_body=body_for(context, "[[mock:fail-midway]] tell me"),
    )
    assert result.last().event == "error"
    assert result.last().data["retryable"] is True
    assert "done" not in result.names()
    partial = result.text()
    assert partial
    message = Message.objects.get(pk=result.first("metadata").data["message_id"])
    assert message.status == "failed" and message.content == partial
    quota = Quota.objects.get(user=user)
    assert quota.requests_used == 0 and quota.requests_reserved == 0
    assert quota.tokens_reserved == 0


def test_generation_timeout_ends_with_stream_timeout(daphne_factory, alice, transactional_db):
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="1", CHAT_STREAM_TIMEOUT_SECONDS="0.5")
    user, token, context = alice
    result = stream(
        "POST",
        chat_url(server),
        token=token,
        json_body=body_for(context, "[[mock:slow:100]] [[mock:long:50]] go"),
    )
    assert result.last().event == "error"
    assert result.last().data["code"] == "stream_timeout"
    message = Message.objects.get(pk=result.first("metadata").data["message_id"])
    assert message.status == "failed" and message.content == result.text()
    assert Quota.objects.get(user=user).requests_reserved == 0


def test_extraction_failure_still_ends_with_done(daphne, alice):
    _, token, context = alice
    result = stream(
        "POST",
        chat_url(daphne),
        token=token,
        json_body=body_for(context, "I need to call Bob [[mock:extract-fail]]"),
    )
    assert result.names()[-3:] == ["flows_extracted", "title", "done"]
    assert result.first("flows_extracted").data["flows"] == []
    assert UsageRecord.objects.filter(purpose="extraction", outcome="failed").exists()


def test_disconnect_mid_reply_keeps_generating_and_settles(daphne_factory, alice, transactional_db):
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="1")
    user, token, context = alice
    partial = stream(
        "POST",
        chat_url(server),
        token=token,
        stop_after=5,
        json_body=body_for(context, "[[mock:slow:20]] [[mock:long:40]] go"),
    )
    message_id = partial.first("metadata").data["message_id"]
    resumed = stream(
        "GET",
        f"{server.url}/api/v1/messages/{message_id}/stream",
        token=token,
        headers={"Last-Event-ID": partial.events[-1].id},
    )
    message = Message.objects.get(pk=message_id)
    assert message.status == "complete"
    assert partial.text() + resumed.text() == message.content
    assert resumed.last().event == "done"
    assert Quota.objects.get(user=user).requests_reserved == 0


def test_more_concurrent_turns_than_quota_allows(daphne_factory, alice, transactional_db):
    server = daphne_factory(MOCK_TOKEN_DELAY_MS="5", CHAT_MAX_CONCURRENT_STREAMS="50")
    user, token, _ = alice
    quota = quota_get_or_create(user=user)
    Quota.objects.filter(pk=quota.pk).update(requests_limit=3)
    contexts = [factories.make_context(user, name=f"C{i}") for i in range(8)]
    results: list = [None] * 8

    def run(i: int) -> None:
        results[i] = stream(
            "POST",
            chat_url(server),
            token=token,
            json_body=body_for(contexts[i], "[[mock:long:30]] go"),
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(ok) == 3 and len(refused) == 5
    assert all(r.body["code"] == "quota_exceeded" for r in refused)
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
    assert all(r.last().event == "done" for r in ok)
    quota.refresh_from_db()
    assert quota.requests_used == 3 and quota.requests_reserved == 0
