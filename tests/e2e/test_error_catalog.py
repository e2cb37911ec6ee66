"""One error catalog on every transport: the same failure says the same ``code``,
``message`` and ``retryable`` over SSE, in the JSON answer (with the catalog's status) and
over the WebSocket; a refusal before the stream has the same status over HTTP and in the
WebSocket's ``error`` frame. (A bad key used to say ``retryable: false`` over SSE and
``true`` in the JSON answer.)"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from websockets.sync.client import connect

from core.errors import CATALOG
from tests import factories
from tests.sse_client import stream

pytestmark = pytest.mark.e2e


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return factories.make_token(user), factories.make_context(user, name="Work")


def ws_turn(server, token: str, body: dict) -> dict:
    """The last frame of a turn over the WebSocket (its ``error``, with or without id)."""
    with connect(
        server.url.replace("http://", "ws://") + "/ws/v1/chat/",
        origin=server.url,
        subprotocols=["token", token],
        proxy=None,
        open_timeout=10,
    ) as ws:
        ws.send(json.dumps({"type": "chat", **body}))
        while True:
            frame = json.loads(ws.recv(timeout=15))
            if frame["type"] == "error":
                return frame


# A bad key (ai_error: not retryable), a cut stream (ai_error, retryable: the case's own
# hint), a busy provider (retryable), and a slow one.
@pytest.mark.parametrize(
    ("hook", "code", "retryable"),
    [
        ("[[mock:error:ai_error]]", "ai_error", False),
        ("[[mock:fail-midway]]", "ai_error", True),
        ("[[mock:error:ai_rate_limited]]", "ai_rate_limited", True),
        ("[[mock:error:ai_timeout]]", "ai_timeout", True),
    ],
)
def test_a_failed_turn_says_the_same_on_sse_json_and_websocket(
    daphne, alice, hook, code, retryable
):
    token, context = alice
    url = f"{daphne.url}/api/v1/conversations/stream"

    def body() -> dict:  # a new conversation each time (one streaming reply per conversation)
        return {
            "context_id": str(context.id),
            "messages": [{"role": "user", "content": f"{hook} hi"}],
        }

    sse = stream("POST", url, token=token, json_body=body()).last()
    assert sse.event == "error"

    answer = httpx.post(
        url,
        json=body(),
        headers={"Authorization": f"Token {token}", "Accept": "application/json"},
        timeout=30,
    )
    document = answer.json()

    frame = ws_turn(daphne, token, body())
    assert "id" in frame  # the stream's error event, not a refusal

    kind = CATALOG[code]
    expected = {"code": code, "message": kind.message, "retryable": retryable}
    assert {k: sse.data[k] for k in expected} == expected
    assert {k: frame[k] for k in expected} == expected
    assert answer.status_code == kind.status
    assert (document["code"], document["detail"], document["retryable"]) == (
        code,
        kind.message,
        retryable,
    )


def test_a_refusal_has_the_same_status_over_http_and_websocket(daphne, alice):
    token, _context = alice
    body = {"conversation_id": str(uuid.uuid4()), "message": "hi"}
    answer = httpx.post(
        f"{daphne.url}/api/v1/conversations/stream",
        json=body,
        headers={"Authorization": f"Token {token}"},
        timeout=30,
    )
    frame = ws_turn(daphne, token, body)
    assert "id" not in frame  # before any stream
    assert answer.status_code == frame["status"] == CATALOG["not_found"].status
    assert answer.json()["code"] == frame["code"] == "not_found"
