"""Resuming and cancelling one reply, the same over SSE and the WebSocket.

A reply is followed from this process's :class:`~.live.Generation` when it runs here,
else from the database (and the channel layer) by :func:`~.stored.follow_stored`; a cancel
reaches a generation here at once, one elsewhere through the database flag and the
channel layer (docs/api.md#resume-cancel-disconnect).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from django.conf import settings

from conversations.models import Message
from conversations.services import message_request_cancel
from conversations.streaming.events import Event
from conversations.streaming.live import Generation, followers, iter_events, registry
from conversations.streaming.remote import request_remote_cancel
from conversations.streaming.stored import follow_stored
from core import metrics
from core.db import db_run
from core.errors import ServiceError

logger = logging.getLogger("conversations.turn")


def reply_follow(
    *, user_pk: int, message: Message, last_event_id: int, transport: str
) -> AsyncIterator[Event]:
    """The events of ``message`` that a client with ``last_event_id`` lacks, live or
    stored, counted as one of the user's resumed streams until they end.

    Raises 400 ``not_a_reply`` (a user message), 429 ``too_many_streams`` (past
    ``CHAT_MAX_FOLLOWERS`` in this process).
    """
    if message.role != Message.Role.ASSISTANT:
        raise ServiceError("Only assistant replies can be streamed.", code="not_a_reply")
    if not followers.acquire(user_pk):
        raise ServiceError(
            f"At most {settings.CHAT_MAX_FOLLOWERS} resumed streams per user.",
            code="too_many_streams",
            headers={"Retry-After": "5"},
        )
    generation = registry.get(message.id)
    metrics.RESUMES.labels("live" if generation is not None else "stored").inc()
    logger.info(
        "turn.resume",
        extra={
            "message_id": str(message.id),
            "last_event_id": last_event_id,
            "live": generation is not None,
            "transport": transport,
        },
    )
    if generation is not None:
        events = iter_events(generation, last_event_id=last_event_id)
    else:
        events = follow_stored(message, last_event_id=last_event_id)
    return followers.hold(user_pk, events)


async def reply_cancel(*, message: Message, transport: str) -> Generation | None:
    """Ask for ``message`` to stop; its generation when it runs in this process.

    The stream of the reply then ends with ``done`` / ``cancelled``; the partial text
    stays stored. A reply that no longer streams is left as it is.
    """
    generation = registry.get(message.id)
    metrics.CANCELS.inc()
    logger.info(
        "turn.cancel",
        extra={"message_id": str(message.id), "local": bool(generation), "transport": transport},
    )
    if generation is not None:
        generation.request_cancel()
    elif message.status == Message.Status.STREAMING:
        await db_run(message_request_cancel, message_id=message.id)
        await request_remote_cancel(message_id=message.id, worker=message.worker)
    return generation
