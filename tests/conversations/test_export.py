"""Export (docs/api.md#export): a conversation as a Markdown or JSON download, streamed."""

from __future__ import annotations

import json
import tracemalloc
from datetime import timedelta

import pytest
from django.test import AsyncClient
from django.utils import timezone

from conversations.export import EXPORT_PAGE_SIZE
from conversations.models import Message
from tests import factories


def url(conversation) -> str:
    return f"/api/v1/conversations/{conversation.id}/export"


@pytest.fixture
def conversation(user):
    context = factories.make_context(user, name="Trip")
    conversation = factories.make_conversation(context, title="Trip to Rome, day 1")
    start = timezone.now() - timedelta(hours=1)
    first = factories.make_message(
        conversation, content="Plan **three** days in Rome", created_at=start
    )
    factories.make_message(
        conversation,
        role="assistant",
        content="Old answer",
        superseded=True,
        reply_to=first,
        created_at=start + timedelta(seconds=1),
        model="gpt-test",
    )
    factories.make_message(
        conversation,
        role="assistant",
        content="Day 1: the Colosseum.",
        reply_to=first,
        created_at=start + timedelta(seconds=2),
        model="gpt-test",
        finish_reason="stop",
    )
    return conversation


def body(response) -> bytes:
    return b"".join(response.streaming_content)


@pytest.mark.django_db
def test_json_export_is_one_document_with_superseded_messages_marked(api, conversation):
    response = api.get(url(conversation), {"format": "json"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "application/json"
    disposition = response["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "trip-to-rome-day-1-" in disposition and disposition.endswith('.json"')
    document = json.loads(body(response))
    assert document["conversation"]["id"] == str(conversation.id)
    assert document["conversation"]["title"] == "Trip to Rome, day 1"
    assert document["context"] == {"id": str(conversation.context_id), "name": "Trip"}
    messages = document["messages"]
    assert [m["content"] for m in messages] == [
        "Plan **three** days in Rome",
        "Old answer",
        "Day 1: the Colosseum.",
    ]
    assert [m["superseded"] for m in messages] == [False, True, False]
    assert messages[2]["reply_to_id"] == messages[0]["id"]
    assert messages[2]["usage"]["input_tokens"] == 0
    assert messages[2]["model"] == "gpt-test"


@pytest.mark.django_db
def test_markdown_export_reads_as_the_conversation_now(api, conversation):
    response = api.get(url(conversation), {"format": "md"})
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"].endswith('.md"')
    text = body(response).decode()
    assert text.startswith("# Trip to Rome, day 1\n")
    assert "- Context: Trip" in text
    assert "Plan **three** days in Rome" in text
    assert "Day 1: the Colosseum." in text
    assert "Old answer" not in text  # superseded: only in the JSON export
    assert text.index("### User") < text.index("### Assistant")
    # Without format: Markdown.

    def without_export_time(markdown: str) -> list[str]:
        return [line for line in markdown.splitlines() if not line.startswith("- Exported:")]

    default = api.get(url(conversation))
    assert default["Content-Type"] == "text/markdown; charset=utf-8"
    assert without_export_time(body(default).decode()) == without_export_time(text)


@pytest.mark.django_db
def test_an_untitled_conversation_gets_a_filename_from_its_id(api, user):
    conversation = factories.make_conversation(factories.make_context(user), title="")
    response = api.get(url(conversation), {"format": "json"})
    assert f'filename="conversation-{conversation.id}-' in response["Content-Disposition"]
    assert json.loads(body(response))["messages"] == []


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["pdf", "MD", "json;", "html"])
def test_unknown_format_answers_400_naming_it(api, conversation, fmt):
    response = api.get(url(conversation), {"format": fmt})
    assert response.status_code == 400
    assert "format" in response.json()["errors"]


@pytest.mark.django_db
def test_another_users_conversation_is_not_found(other_api, conversation, anon_api):
    response = other_api.get(url(conversation), {"format": "json"})
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert anon_api.get(url(conversation)).status_code == 401


# --- a long conversation, as daphne serves it ---------------------------------------------

MESSAGES = 2_000
SHORT = 500
CONTENT_CHARS = 3_000


def _fill(conversation, count: int) -> None:
    start = timezone.now() - timedelta(days=1)
    Message.objects.bulk_create(
        [
            Message(
                user=conversation.user,
                conversation=conversation,
                role="user" if i % 2 == 0 else "assistant",
                content=f"{i:05d} " + "x" * (CONTENT_CHARS - 6),
                created_at=start + timedelta(seconds=i),
            )
            for i in range(count)
        ],
        batch_size=500,
    )


@pytest.fixture
def long_conversation(transactional_db):
    """A 2,000-message conversation (about 6 MB of text), a 500-message one, a token."""
    user = factories.make_user("longtalker")
    context = factories.make_context(user)
    long = factories.make_conversation(context, title="Long")
    short = factories.make_conversation(context, title="Short")
    _fill(long, MESSAGES)
    _fill(short, SHORT)
    return long, short, factories.make_token(user)


async def _export(conversation, token: str, fmt: str) -> tuple[int, int, int, bytes]:
    """Peak traced memory, bytes, chunks and the last bytes of one export, read as daphne
    reads it (chunk by chunk, nothing kept)."""
    tracemalloc.start()
    try:
        response = await AsyncClient().get(
            url(conversation), {"format": fmt}, headers={"authorization": f"Token {token}"}
        )
        assert response.status_code == 200
        assert response.is_async  # an async iterator: daphne never gathers it in a list
        chunks = size = 0
        tail = b""
        async for chunk in response.streaming_content:
            chunks += 1
            size += len(chunk)
            tail = (tail + chunk)[-64:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, size, chunks, tail


@pytest.mark.parametrize("fmt", ["json", "md"])
async def test_a_long_export_streams_page_by_page_in_bounded_memory(long_conversation, fmt):
    long, short, token = long_conversation
    # Once before measuring: the first request imports modules and fills caches.
    await _export(short, token, fmt)

    short_peak, short_size, _, _ = await _export(short, token, fmt)
    peak, size, chunks, tail = await _export(long, token, fmt)

    assert size > MESSAGES * CONTENT_CHARS
    # Head, one chunk per page of messages, tail.
    assert chunks >= MESSAGES // EXPORT_PAGE_SIZE + 2
    # Four times the conversation, not more memory: what is held is a page (read,
    # rendered, encoded), never the conversation (measured: about 2 MB for both here).
    assert size > 3.5 * short_size
    # (An export built in memory grows with it: about 4x for 4x the messages.)
    assert peak < 2 * short_peak, (peak, short_peak)
    # Less than the export itself (an export built in memory peaks at several times its
    # size: 29 MB for this one). On PostgreSQL the driver's fixed buffers put the peak of
    # both exports near 4-5 MB; on SQLite it is about 2 MB.
    assert peak < size, (peak, size)
    if fmt == "json":
        assert tail.endswith(b"}]}\n")


@pytest.mark.django_db(transaction=True)
async def test_a_long_json_export_is_valid_json_in_order(long_conversation):
    long, _short, token = long_conversation
    response = await AsyncClient().get(
        url(long), {"format": "json"}, headers={"authorization": f"Token {token}"}
    )
    data = b"".join([chunk async for chunk in response.streaming_content])
    messages = json.loads(data)["messages"]
    assert len(messages) == MESSAGES
    assert [int(m["content"][:5]) for m in messages] == list(range(MESSAGES))
