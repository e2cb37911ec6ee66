"""Flows that follow the conversation, end to end: a real daphne, a real SSE client
(docs/api.md#flow-extraction, docs/api.md#flow-history).

With the mock provider, "I booked the flight" marks the flow of "I need to book a flight"
done and "move the call to Friday" moves a due date; with the fake OpenAI server
scripted as a hostile model, changes naming another user's flow or another context's
flow change nothing.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import httpx
import pytest
from django.utils import timezone
from websockets.sync.client import connect

from flows.models import Flow, FlowEvent
from tests import factories
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript
from tests.sse_client import stream

pytestmark = pytest.mark.e2e


@pytest.fixture
def alice(transactional_db):
    user = factories.make_user("alice")
    return user, factories.make_token(user), factories.make_context(user, name="Work")


def turn(server, token: str, body: dict) -> tuple[dict, dict]:
    """One SSE turn: its metadata and its ``flows_extracted`` data."""
    result = stream(
        "POST", f"{server.url}/api/v1/conversations/stream", token=token, json_body=body
    )
    assert result.status_code == 200, result.body
    names = [name for name in result.names() if name != "title"]  # a first turn names it
    assert names[-2:] == ["flows_extracted", "done"], result.names()
    return result.first("metadata").data, result.first("flows_extracted").data


def new(context, text: str) -> dict:
    """A chat body that starts a conversation in ``context``."""
    return {"context_id": str(context.id), "messages": [{"role": "user", "content": text}]}


def rest(server, token: str, path: str) -> httpx.Response:
    return httpx.get(f"{server.url}{path}", headers={"Authorization": f"Token {token}"}, timeout=30)


def test_a_task_reported_done_is_that_flow_done_with_its_history(daphne, alice):
    _, token, context = alice
    first, extracted = turn(
        daphne,
        token,
        new(context, "I need to book a flight"),
    )
    assert [f["title"] for f in extracted["flows"]] == ["Book a flight"]
    assert extracted["updated"] == []
    flow_id = extracted["flows"][0]["id"]

    second, extracted = turn(
        daphne,
        token,
        {"conversation_id": first["conversation_id"], "message": "I booked the flight"},
    )
    assert extracted["flows"] == []
    (update,) = extracted["updated"]
    assert update["id"] == flow_id and update["changes"] == {"status": "done"}
    assert update["flow"]["status"] == "done" and update["flow"]["title"] == "Book a flight"

    flows = rest(daphne, token, f"/api/v1/flows/?context_id={context.id}").json()
    assert [(f["id"], f["status"]) for f in flows["results"]] == [(flow_id, "done")]
    events = rest(daphne, token, f"/api/v1/flows/{flow_id}/events/").json()["results"]
    assert [(e["kind"], e["actor"], e["source_message_id"]) for e in events] == [
        ("created", "extraction", first["message_id"]),
        ("done", "extraction", second["message_id"]),
    ]

    # A resumed stream replays the same flows_extracted (with the flow as it is now).
    replay = stream("GET", f"{daphne.url}{second['resume_url']}", token=token)
    assert replay.first("flows_extracted").data == extracted

    other_token = factories.make_token(factories.make_user("mallory"))
    assert rest(daphne, other_token, f"/api/v1/flows/{flow_id}/events/").status_code == 404


def test_moving_a_task_changes_its_due_date(daphne, alice):
    _, token, context = alice
    first, extracted = turn(
        daphne,
        token,
        new(context, "I need to call Anna on Monday"),
    )
    (flow,) = extracted["flows"]
    today = timezone.now().date()
    monday = today + dt.timedelta(days=(0 - today.weekday()) % 7 or 7)
    friday = today + dt.timedelta(days=(4 - today.weekday()) % 7 or 7)
    assert flow["title"] == "Call Anna" and flow["due_date"] == monday.isoformat()

    # The JSON answer: its flows list the flow as changed.
    response = httpx.post(
        f"{daphne.url}/api/v1/conversations/stream",
        json={"conversation_id": first["conversation_id"], "message": "move the call to Friday"},
        headers={"Authorization": f"Token {token}", "Accept": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"conversation_id", "user_message", "message", "flows", "quota"}
    assert [(f["id"], f["due_date"]) for f in body["flows"]] == [(flow["id"], friday.isoformat())]

    (stored,) = Flow.objects.filter(context=context)
    assert stored.due_date == friday and stored.status == "open"
    assert [(e.kind, e.changes) for e in stored.events.order_by("created_at", "id")] == [
        ("created", stored.events.earliest("created_at").changes),
        ("updated", {"due_date": friday.isoformat()}),
    ]


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as fake:
        yield fake


def test_a_hostile_model_cannot_change_other_users_or_contexts_flows(
    daphne_factory, transactional_db, fake_openai
):
    server = daphne_factory(
        # No title asked or called: the scripted extraction reply is the only structured
        # call of the turn.
        **fake_openai.daphne_env("sk-test-flow-updates", CHAT_TITLES_ENABLED="false")
    )
    alice = factories.make_user("alice")
    token = factories.make_token(alice)
    work = factories.make_context(alice, name="Work")
    mine = factories.make_flow(work, "Book a flight")
    elsewhere = factories.make_flow(factories.make_context(alice, name="Home"), "Water plants")
    foreign = factories.make_flow(
        factories.make_context(factories.make_user("mallory"), name="Work"), "Secret plan"
    )
    nulls = {"status": None, "title": None, "priority": None, "due_date": None}
    hostile = {
        "flows": [],
        "updated": [
            {"id": str(foreign.id), "changes": {**nulls, "status": "done", "title": "pwned"}},
            {"id": str(elsewhere.id), "changes": {**nulls, "status": "done"}},
            {"id": str(mine.id), "changes": {**nulls, "priority": "high", "context_id": "x"}},
        ],
    }
    fake_openai.push(OpenAIScript(tokens=["All ", "noted."]))
    fake_openai.push(OpenAIScript(content=json.dumps(hostile)))

    _, extracted = turn(
        server,
        token,
        new(work, "Mark them all done"),
    )
    assert [(u["id"], u["changes"]) for u in extracted["updated"]] == [
        (str(mine.id), {"priority": "high"})
    ]
    foreign.refresh_from_db()
    elsewhere.refresh_from_db()
    assert (foreign.status, foreign.title) == ("open", "Secret plan")
    assert elsewhere.status == "open"
    assert list(FlowEvent.objects.values_list("flow_id", "kind")) == [(mine.id, "updated")]
    assert Flow.objects.get(pk=mine.id).context_id == work.id

    # What the model was shown: the caller's flow of this context only, as data.
    extraction = next(r.body for r in fake_openai.requests if not r.body.get("stream"))
    shown = extraction["messages"][1]["content"]
    assert shown.startswith("<flows>\n") and str(mine.id) in shown
    assert str(elsewhere.id) not in shown and str(foreign.id) not in shown
    schema = extraction["response_format"]["json_schema"]["schema"]
    assert "updated" in schema["properties"]


def test_the_websocket_carries_the_changes_too(daphne, alice):
    _, token, context = alice
    url = daphne.url.replace("http://", "ws://") + "/ws/v1/chat/"
    with connect(
        url, origin=daphne.url, subprotocols=["token", token], proxy=None, open_timeout=10
    ) as ws:

        def frames(body: dict) -> list[dict]:
            ws.send(json.dumps({"type": "chat", **body}))
            events = []
            while not events or events[-1]["type"] not in ("done", "error"):
                events.append(json.loads(ws.recv(timeout=30)))
            return events

        first = frames(new(context, "remind me to renew the passport"))
        assert [e["type"] for e in first[-3:]] == ["flows_extracted", "title", "done"]
        (created,) = first[-3]["flows"]
        assert first[-3]["updated"] == []
        second = frames(
            {"conversation_id": first[0]["conversation_id"], "message": "I renewed the passport"}
        )
    extracted = second[-2]
    assert extracted["type"] == "flows_extracted" and extracted["flows"] == []
    assert [(u["id"], u["changes"]) for u in extracted["updated"]] == [
        (created["id"], {"status": "done"})
    ]
    assert Flow.objects.get(pk=created["id"]).status == "done"
