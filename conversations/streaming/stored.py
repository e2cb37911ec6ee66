"""Following a reply from the database: a finished reply, or one that another process runs.

The stored text is always a prefix of the reply (checkpoints save the text so far), so
the event ids of :mod:`.events` hold here too: a finished reply replays exactly what the
client missed; one still streaming elsewhere is followed live through the channel layer
(:mod:`.remote`) when processes share one, else by polling its checkpoints until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings

from ai.providers.base import Usage
from ai.quota.selectors import quota_snapshot
from conversations.models import Message
from conversations.streaming.events import (
    KEEPALIVE_EVENT,
    TYPING_START_ID,
    TYPING_STOP,
    Cursor,
    Event,
    Trailing,
    trailing_events,
)
from conversations.streaming.live import WORKER_ID
from conversations.streaming.remote import RelayLost, follow_remote, relay_enabled
from core.db import db_run
from flows.selectors import flow_updates_of_message, flows_of_message
from flows.serializers import flow_to_dict

POLL_SECONDS = 0.25
logger = logging.getLogger("conversations.relay")


def _runs_elsewhere(message: Message) -> bool:
    return relay_enabled() and bool(message.worker) and message.worker != WORKER_ID


def stored_metadata(message: Message) -> dict[str, Any]:
    """The ``metadata`` event of a stored reply."""
    conversation = message.conversation
    user_message = (
        Message.objects.filter(pk=message.reply_to_id).only("id").first()
        if message.reply_to_id
        else None
    ) or (
        Message.objects.filter(
            conversation=conversation, role=Message.Role.USER, created_at__lte=message.created_at
        )
        .order_by("-created_at", "-id")
        .first()
    )
    return {
        "conversation_id": str(conversation.id),
        "context_id": str(conversation.context_id),
        "user_message_id": str(user_message.id) if user_message else None,
        "message_id": str(message.id),
        "provider": message.provider,
        "model": message.model,
        "quota": quota_snapshot(user=message.user),
        "resume_url": f"/api/v1/messages/{message.id}/stream",
    }


def _stored_usage(message: Message) -> Usage:
    """A finished reply's usage as stored (its tokens by kind and its cost)."""
    return Usage(
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        estimated=message.usage_estimated,
        cache_read_tokens=message.cache_read_tokens,
        cache_write_tokens=message.cache_write_tokens,
        cost=message.cost,
        currency=message.currency,
    )


def stored_trailing(message: Message) -> list[Trailing]:
    """The trailing events of a finished reply, as its generation sent them."""
    if message.status == Message.Status.COMPLETE:
        flows = [flow_to_dict(flow) for flow in flows_of_message(message_id=message.id)]
        updated = flow_updates_of_message(message_id=message.id)
    else:
        flows, updated = [], []
    return [
        TYPING_STOP,
        *trailing_events(
            message_id=str(message.id),
            status=message.status,
            finish_reason=message.finish_reason,
            usage=_stored_usage(message),
            error_code=message.error_code or "internal_error",
            error_retryable=message.error_retryable or not message.error_code,
            flows=flows,
            quota=quota_snapshot(user=message.user),
            provider=message.provider,
            model=message.model,
            updated=updated,
            title=message.generated_title,
            conversation_id=str(message.conversation_id),
        ),
    ]


def _load(message_id: Any, with_metadata: bool) -> tuple[Message, dict | None, list | None]:
    message = Message.objects.select_related("conversation", "user").get(pk=message_id)
    metadata = stored_metadata(message) if with_metadata else None
    trailing = stored_trailing(message) if message.status != Message.Status.STREAMING else None
    return message, metadata, trailing


async def follow_stored(message: Message, *, last_event_id: int) -> AsyncIterator[Event]:
    """A stored reply's events from after ``last_event_id``; followed while it streams."""
    cursor = Cursor(last_event_id)
    message, metadata, trailing = await db_run(_load, message.id, last_event_id < 1)
    for event in cursor.preamble(metadata or {}):
        yield event
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    relayed = False
    while True:
        content = message.content
        if (event := cursor.text(0, content)) is not None:
            yield event
            last_sent = loop.time()
        if trailing is None and not relayed and _runs_elsewhere(message):
            relayed = True  # live from the owner; the database again if it goes quiet
            try:
                async for event in follow_remote(
                    message_id=message.id,
                    worker=message.worker,
                    cursor=cursor,
                    with_failovers=last_event_id < TYPING_START_ID,
                ):
                    yield event
                return
            except RelayLost:
                logger.info("relay.lost", extra={"message_id": str(message.id)})
        if trailing is not None:
            if message.status == Message.Status.INTERRUPTED:
                cursor.text_lost(len(content))
            for event in cursor.trailing(len(content), trailing):
                yield event
            return
        await asyncio.sleep(POLL_SECONDS)
        if loop.time() - last_sent >= settings.CHAT_KEEPALIVE_SECONDS:
            yield KEEPALIVE_EVENT
            last_sent = loop.time()
        try:
            message, _, trailing = await db_run(_load, message.id, False)
        except Message.DoesNotExist:  # deleted meanwhile
            return
