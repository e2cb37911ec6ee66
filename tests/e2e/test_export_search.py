"""A real daphne serves the export as a chunked stream and answers searches.

The in-process tests (tests/conversations/test_export.py) measure the export's memory;
here the same async iterator goes through daphne: no ``Content-Length``, chunked transfer,
one valid JSON document of every message.
"""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from conversations.models import Message
from tests import factories

MESSAGES = 2_000


@pytest.fixture
def long_talk(transactional_db):
    user = factories.make_user("alice")
    conversation = factories.make_conversation(factories.make_context(user), title="Long talk")
    start = timezone.now() - timedelta(days=1)
    Message.objects.bulk_create(
        [
            Message(
                user=user,
                conversation=conversation,
                role="user" if i % 2 == 0 else "assistant",
                content=f"{i:05d} quokka " + "y" * 1_000,
                created_at=start + timedelta(seconds=i),
            )
            for i in range(MESSAGES)
        ],
        batch_size=500,
    )
    return conversation, factories.make_token(user)


def test_export_streams_chunked_through_daphne(daphne, long_talk):
    conversation, token = long_talk
    url = f"{daphne.url}/api/v1/conversations/{conversation.id}/export"
    headers = {"Authorization": f"Token {token}"}
    with httpx.stream("GET", url, params={"format": "json"}, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["content-disposition"].startswith('attachment; filename="long-talk-')
        assert "content-length" not in r.headers
        assert r.headers.get("transfer-encoding") == "chunked"
        data = b"".join(r.iter_bytes())
    messages = json.loads(data)["messages"]
    assert len(messages) == MESSAGES
    assert [int(m["content"][:5]) for m in messages] == list(range(MESSAGES))

    markdown = httpx.get(url, params={"format": "md"}, headers=headers, timeout=60)
    assert markdown.status_code == 200
    assert markdown.text.startswith("# Long talk\n")
    assert markdown.text.count("### ") == MESSAGES

    refused = httpx.get(url, params={"format": "pdf"}, headers=headers, timeout=10)
    assert refused.status_code == 400
    assert "format" in refused.json()["errors"]


def test_search_through_daphne(daphne, long_talk):
    conversation, token = long_talk
    headers = {"Authorization": f"Token {token}"}
    answer = httpx.get(
        f"{daphne.url}/api/v1/search/", params={"q": "quokkas"}, headers=headers, timeout=30
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["count"] == MESSAGES
    first = body["results"][0]
    assert first["conversation_id"] == str(conversation.id)
    assert [first["snippet"][a:b] for a, b in first["highlights"]] == ["quokka"]
