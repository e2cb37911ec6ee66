"""The REST API (docs/api.md#rest-endpoints): happy paths, field-named 400s, 404 for others' ids."""

from __future__ import annotations

import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.authtoken.models import Token

from conversations.models import Context, Conversation
from flows.models import Flow
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def data(user, other_user):
    context = factories.make_context(user, name="Work")
    conversation = factories.make_conversation(context, title="Planning")
    factories.make_message(conversation, "user", "first")
    factories.make_message(conversation, "assistant", "second")
    flow = factories.make_flow(context, "Book a flight", conversation=conversation)
    foreign_context = factories.make_context(other_user, name="Work")
    foreign_conversation = factories.make_conversation(foreign_context)
    foreign_message = factories.make_message(foreign_conversation, "assistant", "secret")
    foreign_flow = factories.make_flow(foreign_context, "Secret task")
    return {
        "context": context,
        "conversation": conversation,
        "flow": flow,
        "foreign_context": foreign_context,
        "foreign_conversation": foreign_conversation,
        "foreign_message": foreign_message,
        "foreign_flow": foreign_flow,
    }


def test_contexts_crud(api, data):
    listing = api.get("/api/v1/contexts/").json()
    assert listing["count"] == 1 and listing["results"][0]["name"] == "Work"
    created = api.post(
        "/api/v1/contexts/", {"name": "Trip", "instructions": "Be brief"}, format="json"
    )
    assert created.status_code == 201 and created.json()["instructions"] == "Be brief"
    context_id = created.json()["id"]
    assert api.get(f"/api/v1/contexts/{context_id}/").json()["name"] == "Trip"
    patched = api.patch(f"/api/v1/contexts/{context_id}/", {"description": "Rome"}, format="json")
    assert patched.status_code == 200 and patched.json()["description"] == "Rome"
    assert api.delete(f"/api/v1/contexts/{context_id}/").status_code == 204
    assert not Context.objects.filter(pk=context_id).exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "\u000b \t"}, "name"),
        # Whitespace to Python's strip() though not to JSON Schema's \s (the fuzzer's find).
        ({"name": "\u001c\u0085\u001f"}, "name"),
        ({"name": "x" * 101}, "name"),
        ({}, "name"),
        ({"name": "Work"}, "name"),
        ({"name": "ok", "instructions": "x" * 4001}, "instructions"),
        # Whitespace-only text that may be blank is still held to its length limit.
        ({"name": "ok", "instructions": "\r" * 4001}, "instructions"),
    ],
)
def test_context_validation_names_the_field(api, data, body, field):
    response = api.post("/api/v1/contexts/", body, format="json")
    assert response.status_code == 400
    assert response.json()["code"] == "invalid" and field in response.json()["errors"]


def test_not_blank_pattern_is_exactly_what_trimming_keeps(api, data):
    """The schema's pattern and the server agree on every code point: a one-character
    name is refused exactly when the pattern does not match it."""
    import re
    import sys

    from core.fields import NOT_BLANK_PATTERN

    pattern = re.compile(NOT_BLANK_PATTERN)
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:
            continue
        assert (pattern.search(char) is None) == (char.strip() == ""), hex(code)
    # A character JSON Schema counts as whitespace but Python does not is kept, as the
    # pattern says (no "schema-invalid but accepted" either way that matters here).
    kept = api.post("/api/v1/contexts/", {"name": "\ufeffPlans"}, format="json")
    assert kept.status_code == 201


def test_same_context_name_for_two_users_is_fine(other_api, data):
    response = other_api.post("/api/v1/contexts/", {"name": "Trip"}, format="json")
    assert response.status_code == 201


def test_conversations_and_messages(api, data):
    conversation = data["conversation"]
    listing = api.get("/api/v1/conversations/").json()
    assert [c["id"] for c in listing["results"]] == [str(conversation.id)]
    filtered = api.get(f"/api/v1/conversations/?context_id={data['context'].id}").json()
    assert filtered["count"] == 1 and filtered["results"][0]["context_id"] == str(
        data["context"].id
    )
    assert api.get(f"/api/v1/conversations/?context_id={uuid.uuid4()}").json()["count"] == 0
    bad = api.get("/api/v1/conversations/?context_id=nope")
    assert bad.status_code == 400 and "context_id" in bad.json()["errors"]
    detail = api.get(f"/api/v1/conversations/{conversation.id}/").json()
    assert detail["title"] == "Planning"
    assert (
        api.patch(
            f"/api/v1/conversations/{conversation.id}/", {"title": "New"}, format="json"
        ).json()["title"]
        == "New"
    )
    messages = api.get(f"/api/v1/conversations/{conversation.id}/messages/").json()
    assert [m["content"] for m in messages["results"]] == ["first", "second"]
    first = messages["results"][0]
    assert set(first) >= {
        "id",
        "conversation_id",
        "role",
        "content",
        "status",
        "finish_reason",
        "usage",
        "provider",
        "model",
        "created_at",
    }
    assert api.delete(f"/api/v1/conversations/{conversation.id}/").status_code == 204
    assert not Conversation.objects.filter(pk=conversation.id).exists()


def test_deleting_a_conversation_while_streaming_is_409(api, data):
    factories.make_message(data["conversation"], "assistant", "", status="streaming")
    response = api.delete(f"/api/v1/conversations/{data['conversation'].id}/")
    assert response.status_code == 409 and response.json()["code"] == "conversation_busy"


def test_flows(api, data):
    flow = data["flow"]
    listing = api.get("/api/v1/flows/").json()
    assert [f["title"] for f in listing["results"]] == ["Book a flight"]
    assert api.get("/api/v1/flows/?status=done").json()["count"] == 0
    assert api.get("/api/v1/flows/?priority=medium").json()["count"] == 1
    assert api.get(f"/api/v1/flows/?context_id={data['context'].id}").json()["count"] == 1
    for query, field in (
        ("status=maybe", "status"),
        ("priority=urgent", "priority"),
        ("context_id=1", "context_id"),
    ):
        response = api.get(f"/api/v1/flows/?{query}")
        assert response.status_code == 400 and field in response.json()["errors"]
    nested = api.get(f"/api/v1/contexts/{data['context'].id}/flows/?status=open").json()
    assert nested["count"] == 1
    done = api.patch(f"/api/v1/flows/{flow.id}/", {"status": "done"}, format="json")
    assert done.status_code == 200 and done.json()["status"] == "done"
    assert api.get(f"/api/v1/contexts/{data['context'].id}/flows/?status=open").json()["count"] == 0
    bad = api.patch(f"/api/v1/flows/{flow.id}/", {"priority": "urgent"}, format="json")
    assert bad.status_code == 400 and "priority" in bad.json()["errors"]
    bad = api.patch(f"/api/v1/flows/{flow.id}/", {"due_date": "next week"}, format="json")
    assert bad.status_code == 400 and "due_date" in bad.json()["errors"]
    assert (
        api.patch(f"/api/v1/flows/{flow.id}/", {"due_date": "2026-12-01"}, format="json").json()[
            "due_date"
        ]
        == "2026-12-01"
    )
    assert api.delete(f"/api/v1/flows/{flow.id}/").status_code == 204
    assert not Flow.objects.filter(pk=flow.id).exists()


def test_flow_title_clash_with_open_flow_is_400(api, data):
    other = factories.make_flow(data["context"], "Call the client")
    response = api.patch(f"/api/v1/flows/{other.id}/", {"title": "book a FLIGHT"}, format="json")
    assert response.status_code == 400 and "title" in response.json()["errors"]


def test_another_users_ids_are_404_everywhere(api, data):
    ids = {
        k: data[k].id
        for k in ("foreign_context", "foreign_conversation", "foreign_message", "foreign_flow")
    }
    urls = [
        f"/api/v1/contexts/{ids['foreign_context']}/",
        f"/api/v1/contexts/{ids['foreign_context']}/flows/",
        f"/api/v1/conversations/{ids['foreign_conversation']}/",
        f"/api/v1/conversations/{ids['foreign_conversation']}/messages/",
        f"/api/v1/messages/{ids['foreign_message']}/",
        f"/api/v1/flows/{ids['foreign_flow']}/",
        "/api/v1/contexts/not-a-uuid/",
        f"/api/v1/flows/{uuid.uuid4()}/",
    ]
    for url in urls:
        for method in ("get", "patch", "delete"):
            if method != "get" and ("messages" in url or url.endswith("flows/")):
                continue
            response = getattr(api, method)(url, {}, format="json")
            assert response.status_code == 404, (method, url)
            assert response.json()["code"] == "not_found"
    # List filters never show another user's rows.
    assert (
        api.get(f"/api/v1/conversations/?context_id={ids['foreign_context']}").json()["count"] == 0
    )
    assert api.get(f"/api/v1/flows/?context_id={ids['foreign_context']}").json()["count"] == 0
    assert Context.objects.filter(pk=ids["foreign_context"]).exists()


def test_anonymous_is_401(anon_api, data):
    for url in (
        "/api/v1/contexts/",
        "/api/v1/conversations/",
        "/api/v1/flows/",
        "/api/v1/quota/",
        f"/api/v1/contexts/{data['context'].id}/",
    ):
        response = anon_api.get(url)
        assert response.status_code == 401, url
        assert response.json()["code"] == "not_authenticated"


def test_pagination(api, user):
    context = factories.make_context(user)
    for i in range(60):
        factories.make_conversation(context, title=f"c{i}")
    first = api.get("/api/v1/conversations/").json()
    assert first["count"] == 60 and len(first["results"]) == 50 and first["next"]
    assert len(api.get(first["next"]).json()["results"]) == 10


def test_schema_and_docs(api, client):
    schema = api.get("/api/v1/schema/?format=json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert "/api/v1/contexts/" in paths and "/api/v1/quota/" in paths
    # Whitespace-only text is trimmed and refused: the schema says so with a pattern.
    context_name = schema.json()["components"]["schemas"]["ContextRequest"]["properties"]["name"]
    assert context_name["minLength"] == 1
    # drf-spectacular spells \x0b as \u000b; the pattern means the same on every character.
    import re
    import sys

    from core.fields import NOT_BLANK_PATTERN

    ours, published = re.compile(NOT_BLANK_PATTERN), re.compile(context_name["pattern"])
    for code in (*range(0x3001), 0xFEFF, sys.maxunicode):
        char = chr(code)
        assert (ours.search(char) is None) == (published.search(char) is None), hex(code)
    assert client.get("/api/v1/docs/").status_code in (200, 401)


def test_health(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {
        "database": True,
        "channel_layer": True,
    }


def test_issue_token_command(user, capsys):
    call_command("issue_token", "alice")
    assert capsys.readouterr().out.strip() == Token.objects.get(user=user).key
    with pytest.raises(CommandError, match="--create"):
        call_command("issue_token", "nobody")
    call_command("issue_token", "newbie", "--create")
    assert Token.objects.filter(user__username="newbie").exists()


def test_demo_setup_is_idempotent(capsys):
    call_command("demo_setup")
    call_command("demo_setup")
    out = capsys.readouterr().out
    assert "curl -N" in out and "demo-chat-2026" in out
    assert Context.objects.filter(user__username="demo").count() == 1


def test_admin_pages_render(admin_client, data):
    for url in (
        "/admin/conversations/context/",
        "/admin/conversations/conversation/",
        "/admin/conversations/message/",
        "/admin/flows/flow/",
        f"/admin/conversations/conversation/{data['conversation'].id}/change/",
    ):
        assert admin_client.get(url).status_code == 200, url
    page = admin_client.get(f"/admin/conversations/conversation/{data['conversation'].id}/change/")
    assert b"second" in page.content  # messages inline
