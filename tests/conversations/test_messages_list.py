"""The messages list leaves superseded messages out unless asked (docs/api.md#rest-endpoints)."""

from __future__ import annotations

import pytest

from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(user):
    conversation = factories.make_conversation(factories.make_context(user))
    first = factories.make_message(conversation, content="question")
    factories.make_message(
        conversation, role="assistant", content="old reply", superseded=True, reply_to=first
    )
    factories.make_message(conversation, role="assistant", content="new reply", reply_to=first)
    return conversation


def url(conversation) -> str:
    return f"/api/v1/conversations/{conversation.id}/messages/"


def test_superseded_messages_are_left_out(api, conversation):
    body = api.get(url(conversation)).json()
    assert body["count"] == 2
    assert [m["content"] for m in body["results"]] == ["question", "new reply"]
    assert [m["superseded"] for m in body["results"]] == [False, False]


@pytest.mark.parametrize("value", ["true", "True", "1"])
def test_include_superseded_shows_them_marked(api, conversation, value):
    body = api.get(url(conversation), {"include_superseded": value}).json()
    assert [(m["content"], m["superseded"]) for m in body["results"]] == [
        ("question", False),
        ("old reply", True),
        ("new reply", False),
    ]


@pytest.mark.parametrize("value", ["false", "0", ""])
def test_include_superseded_false_is_the_default(api, conversation, value):
    body = api.get(url(conversation), {"include_superseded": value}).json()
    assert body["count"] == 2


@pytest.mark.parametrize("value", ["yes", "2", "truee", "null"])
def test_a_bad_include_superseded_answers_400_naming_it(api, conversation, value):
    response = api.get(url(conversation), {"include_superseded": value})
    assert response.status_code == 400
    assert "include_superseded" in response.json()["errors"]


def test_the_message_resource_carries_superseded(api, conversation):
    old = conversation.messages.get(content="old reply")
    body = api.get(f"/api/v1/messages/{old.id}/").json()
    assert body["superseded"] is True


def test_another_users_conversation_is_not_found(other_api, conversation):
    response = other_api.get(url(conversation), {"include_superseded": "true"})
    assert response.status_code == 404
