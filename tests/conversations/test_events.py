"""Event ids and resume arithmetic, without a server: the one ``events`` module, and the
three sources that use it (a live generation, the database, another process through the
channel layer) giving the same events for the same reply.

Reply used throughout: "Hello world" (11 characters), so ``metadata`` is 1, ``typing``
start 2, a chunk ending at offset n is 2 + n (the whole text: 13), and the trailing events
are 14 (``typing`` stop), 15 (``flows_extracted``), 16 (``done``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from channels.layers import get_channel_layer

from ai.providers.base import Usage
from conversations.models import Message
from conversations.streaming.events import (
    CHUNK,
    KEEPALIVE_EVENT,
    TYPING_STOP,
    Cursor,
    Event,
    error_data,
    parse_last_event_id,
    trailing_events,
)
from conversations.streaming.live import Generation, iter_events, registry
from conversations.streaming.remote import RelayLost, follow_remote, group_name, listen
from conversations.streaming.remote import worker_channel as worker_channel_name
from conversations.streaming.stored import follow_stored, stored_metadata, stored_trailing
from core.db import db_run
from core.errors import CATALOG
from tests import factories

TEXT = "Hello world"
PARTS = ["Hel", "lo ", "wor", "ld"]
METADATA = {"message_id": "m"}
TRAILING = [
    TYPING_STOP,
    *trailing_events(
        message_id="m",
        status="complete",
        finish_reason="stop",
        usage=Usage(3, 4),
        error_code="",
        error_retryable=None,
        flows=[],
        quota={},
    ),
]


def reply_events(last_event_id: int, text: str = TEXT, start: int = 0) -> list[Event]:
    """What a cursor makes of a finished reply fed as one piece at ``start``."""
    cursor = Cursor(last_event_id)
    events = cursor.preamble(METADATA)
    if (chunk := cursor.text(start, text[start:])) is not None:
        events.append(chunk)
    return events + cursor.trailing(len(text), TRAILING)


def ids(events: list[Event]) -> list[int]:
    return [event.id for event in events]


# --- the arithmetic ------------------------------------------------------------------------


def test_a_new_client_gets_everything_in_order():
    events = reply_events(0)
    assert [(e.id, e.name) for e in events] == [
        (1, "metadata"),
        (2, "typing"),
        (13, "chunk"),
        (14, "typing"),
        (15, "flows_extracted"),
        (16, "done"),
    ]
    assert events[2].data == TEXT and events[3].data == {"status": "stop"}


@pytest.mark.parametrize(
    ("last_event_id", "expected"),
    [(0, [1, 2, 13, 14, 15, 16]), (1, [2, 13, 14, 15, 16]), (2, [13, 14, 15, 16])],
)
def test_the_preamble_is_skipped_as_far_as_the_client_has_it(last_event_id, expected):
    assert ids(reply_events(last_event_id)) == expected


def test_a_resume_mid_text_gets_the_rest_as_one_chunk_then_the_trailing_events():
    events = reply_events(2 + 5)  # the client has "Hello"
    assert [(e.id, e.name, e.data) for e in events[:1]] == [(13, "chunk", " world")]
    assert ids(events) == [13, 14, 15, 16]


def test_a_resume_exactly_at_the_end_of_the_text_gets_only_the_trailing_events():
    assert ids(reply_events(2 + len(TEXT))) == [14, 15, 16]


@pytest.mark.parametrize(("last_event_id", "expected"), [(14, [15, 16]), (15, [16]), (16, [])])
def test_a_resume_among_the_trailing_events_gets_the_ones_after(last_event_id, expected):
    assert ids(reply_events(last_event_id)) == expected


def test_pieces_overlapping_what_the_client_has_are_cut_and_ids_are_end_offsets():
    cursor = Cursor(2 + 4)  # has "Hell"
    assert cursor.text(0, "Hel") is None  # all of it already sent
    assert cursor.text(3, "lo ") == Event(2 + 6, CHUNK, "o ")
    assert cursor.text(6, "world") == Event(2 + 11, CHUNK, "world")
    assert cursor.offset == 11


def test_text_lost_in_a_crash_still_gets_every_trailing_event():
    cursor = Cursor(2 + 11)  # saw "Hello world", the crash saved only "Hello"
    cursor.text_lost(5)
    assert ids(cursor.trailing(5, [TYPING_STOP, ("error", error_data("internal_error"))])) == [
        8,
        9,
    ]


def test_last_event_id_parsing():
    assert [parse_last_event_id(raw) for raw in (None, "", " 7 ", "x", "-3")] == [0, 0, 7, 0, 0]


def test_error_payloads_come_from_the_catalog():
    assert error_data("ai_error") == {
        "code": "ai_error",
        "message": CATALOG["ai_error"].message,
        "retryable": False,
    }
    assert error_data("ai_error", True)["retryable"] is True  # a cut stream
    assert error_data("no_such_code")["code"] == "internal_error"


# --- three sources, one sequence ----------------------------------------------------------


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    out = []
    async with contextlib.aclosing(events):
        async for event in events:
            out.append(event)
    return out


def finished_generation(message: Message, metadata: dict, trailing: list) -> Generation:
    generation = Generation(message_id=message.id, user_id=message.user_id, metadata=metadata)
    for part in PARTS:
        generation.append(part)
    for event in trailing:
        generation.add_trailing(*event)
    generation.close()
    return generation


async def follow_from_elsewhere(
    message: Message, generation: Generation, settings, last_event_id: int
) -> list[Event]:
    """The events of ``message`` as a client of this process gets them while another
    process runs ``generation``: the database holds no text yet, the owner relays it all."""
    settings.REDIS_URL = "redis://relay-enabled-for-this-test"
    await Message.objects.filter(pk=message.pk).aupdate(
        status=Message.Status.STREAMING, content="", worker="owner-elsewhere"
    )
    registry.add(generation)
    owner = asyncio.create_task(listen("owner-elsewhere"))
    try:
        return await asyncio.wait_for(
            collect(follow_stored(message, last_event_id=last_event_id)), 10
        )
    finally:
        owner.cancel()
        registry.discard(generation)


@pytest.fixture
def reply(transactional_db, user) -> Message:
    conversation = factories.make_conversation(factories.make_context(user))
    factories.make_message(conversation, "user", "Hi")
    return factories.make_message(
        conversation,
        "assistant",
        TEXT,
        status=Message.Status.COMPLETE,
        finish_reason="stop",
        input_tokens=3,
        output_tokens=4,
    )


def _expected(message: Message) -> tuple[dict, list]:
    return stored_metadata(message), stored_trailing(message)


@pytest.mark.parametrize("last_event_id", [0, 1, 2, 7, 13, 14, 16])
async def test_live_stored_and_remote_give_the_same_events(reply, settings, last_event_id):
    message = await Message.objects.select_related("conversation", "user").aget(pk=reply.pk)
    metadata, trailing = await db_run(_expected, message)

    stored = await collect(follow_stored(message, last_event_id=last_event_id))

    generation = finished_generation(message, metadata, trailing)
    live = await collect(iter_events(generation, last_event_id=last_event_id))

    remote = await follow_from_elsewhere(message, generation, settings, last_event_id)

    assert live == stored == remote
    assert "".join(e.data for e in live if e.name == CHUNK) == TEXT[max(0, last_event_id - 2) :]
    assert ids(live) == ids(reply_events(last_event_id))


async def test_live_chunks_arrive_as_they_are_appended_with_end_offset_ids():
    generation = Generation(message_id=uuid.uuid4(), user_id=1, metadata=METADATA)
    follower = iter_events(generation, last_event_id=2 + 2)  # has "He"
    first = asyncio.ensure_future(follower.__anext__())
    generation.append("Hel")
    assert await first == Event(2 + 3, CHUNK, "l")
    generation.append("lo")
    assert await follower.__anext__() == Event(2 + 5, CHUNK, "lo")
    for event in TRAILING[:1]:
        generation.add_trailing(*event)
    generation.close()
    assert await collect(follower) == [Event(2 + 5 + 1, "typing", {"status": "stop"})]


async def test_remote_pieces_with_a_gap_ask_for_the_whole_text_again(settings):
    """A follower that missed a piece (its ``start`` is past what it has) asks the owner
    for a snapshot and takes only what it lacks from it: no gap, no duplicate."""
    settings.CHAT_KEEPALIVE_SECONDS = 5
    layer = get_channel_layer()
    message_id = uuid.uuid4()
    owner_channel = worker_channel_name("owner-elsewhere")
    group = group_name(message_id)

    def update(start: int, text: str, trailing_from: int = 0, trailing=(), closed=False):
        return {
            "type": "reply.update",
            "start": start,
            "text": text,
            "trailing_from": trailing_from,
            "trailing": [list(event) for event in trailing],
            "length": start + len(text),
            "closed": closed,
        }

    async def owner() -> list[dict]:
        requests = [await layer.receive(owner_channel)]  # the first follow (snapshot)
        await layer.group_send(group, update(0, "Hello"))
        await layer.group_send(group, update(8, "rld"))  # " wo" was lost
        requests.append(await layer.receive(owner_channel))  # asks for a snapshot
        await layer.group_send(group, update(0, TEXT, 0, TRAILING, closed=True))
        return requests

    owner_task = asyncio.create_task(owner())
    cursor = Cursor(2)
    events = await asyncio.wait_for(
        collect(follow_remote(message_id=message_id, worker="owner-elsewhere", cursor=cursor)), 10
    )
    requests = await owner_task
    assert [r.get("snapshot") for r in requests] == [True, True]
    assert [(e.id, e.data) for e in events[:2]] == [(7, "Hello"), (13, " world")]
    assert ids(events) == [7, 13, 14, 15, 16]
    assert (cursor.offset, cursor.last_event_id) == (11, 16)


async def test_a_silent_owner_hands_the_cursor_back_to_the_database(settings):
    settings.CHAT_KEEPALIVE_SECONDS = 0.05
    settings.CHAT_STALE_SECONDS = 0.2
    cursor = Cursor(2 + 3)
    with pytest.raises(RelayLost):
        await collect(follow_remote(message_id=uuid.uuid4(), worker="nobody-home", cursor=cursor))
    assert (cursor.offset, cursor.last_event_id) == (3, 5)


# --- failover events (docs/api.md#routing) ---------------------------------------------------

FAILOVER = {
    "from": {"provider": "openai", "model": "gpt-4o-mini"},
    "to": {"provider": "anthropic", "model": "claude-sonnet-4-6"},
    "code": "ai_rate_limited",
}


async def _next(events: AsyncIterator[Event]) -> Event:
    """The next event that is not a keep-alive."""
    while (event := await events.__anext__()) is KEEPALIVE_EVENT:
        pass
    return event


async def test_a_failover_reaches_live_followers_before_the_text_with_id_2():
    generation = Generation(message_id=uuid.uuid4(), user_id=1, metadata=METADATA)
    follower = iter_events(generation)
    assert [(e.id, e.name) for e in [await _next(follower) for _ in range(2)]] == [
        (1, "metadata"),
        (2, "typing"),
    ]
    pending = asyncio.ensure_future(_next(follower))
    generation.add_failover(FAILOVER)
    assert await pending == Event(2, "failover", FAILOVER)
    generation.append("Hi")
    assert await _next(follower) == Event(2 + 2, CHUNK, "Hi")
    await follower.aclose()

    # Joining later: from the start it is in the preamble; from id 2 the client has it.
    fresh = iter_events(generation)
    assert [(e.id, e.name) for e in [await _next(fresh) for _ in range(4)]] == [
        (1, "metadata"),
        (2, "typing"),
        (2, "failover"),
        (4, "chunk"),
    ]
    await fresh.aclose()
    resumed = iter_events(generation, last_event_id=2)
    assert await _next(resumed) == Event(4, CHUNK, "Hi")
    await resumed.aclose()


@pytest.mark.parametrize("last_event_id", [0, 1, 2])
async def test_a_reply_followed_from_another_process_has_its_failover(
    reply, settings, last_event_id
):
    message = await Message.objects.select_related("conversation", "user").aget(pk=reply.pk)
    metadata, trailing = await db_run(_expected, message)
    generation = Generation(message_id=message.id, user_id=message.user_id, metadata=metadata)
    generation.add_failover(FAILOVER)
    for part in PARTS:
        generation.append(part)
    for event in trailing:
        generation.add_trailing(*event)
    generation.close()
    live = await collect(iter_events(generation, last_event_id=last_event_id))

    remote = await follow_from_elsewhere(message, generation, settings, last_event_id)
    assert remote == live
    names = [event.name for event in live]
    if last_event_id < 2:
        assert names[names.index("typing") + 1] == "failover"
        assert names.index("failover") < names.index("chunk")
    else:
        assert "failover" not in names
