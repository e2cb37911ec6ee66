"""Following a reply that another server process generates, through the channel layer.

Only used with a shared channel layer (``REDIS_URL``). The process that runs a generation
listens on its worker channel (``chat.worker.<WORKER_ID>``). A follower on another process
joins the reply's group, then asks the owner to ``follow``; from then on the owner
publishes the reply to the group: first the whole text so far, then what is new, each
piece with its absolute character offset, then the trailing events. Followers drop what
they already have by offset, so there is no gap and no duplicate, and the owner pays
nothing for replies that nobody follows remotely.

When the owner goes quiet (it died, or Redis is down), the follower falls back to the
database: the stored text is a prefix of the reply, and the final state is authoritative.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from conversations.streaming.generations import (
    KEEPALIVE,
    TEXT_BASE,
    WORKER_ID,
    Generation,
    registry,
    trailing_event_id,
)
from conversations.streaming.sse import encode_chunk, encode_event

logger = logging.getLogger("conversations.relay")

PUBLISH_INTERVAL = 0.02
FOLLOW_RENEW_SECONDS = 10.0
_listener: asyncio.Task[None] | None = None


def relay_enabled() -> bool:
    """True when processes share a channel layer (Redis)."""
    return bool(settings.REDIS_URL)


def group_name(message_id: uuid.UUID | str) -> str:
    return f"chat.reply.{uuid.UUID(str(message_id)).hex}"


def worker_channel(worker_id: str) -> str:
    return f"chat.worker.{worker_id}"


# --- the owner's side ---------------------------------------------------------------------


async def _listen() -> None:
    layer = get_channel_layer()
    channel = worker_channel(WORKER_ID)
    while True:
        try:
            message = await layer.receive(channel)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("relay.listen_failed", exc_info=True)
            await asyncio.sleep(1.0)
            continue
        try:
            generation = registry.get(uuid.UUID(str(message.get("message_id"))))
        except ValueError:
            continue
        if generation is None:
            continue
        if message.get("type") == "follow":
            start_relay(generation, snapshot=bool(message.get("snapshot")))
        elif message.get("type") == "cancel":
            generation.request_cancel()


def ensure_listener() -> None:
    """Listen on this process's worker channel (once), when a shared layer exists."""
    global _listener
    if relay_enabled() and (_listener is None or _listener.done()):
        _listener = asyncio.get_running_loop().create_task(_listen())


def start_relay(generation: Generation, *, snapshot: bool) -> None:
    """Publish ``generation`` to its group from now on (whole text first when asked)."""
    generation.relay_snapshot = generation.relay_snapshot or snapshot
    if generation.relay is None or generation.relay.done():
        generation.relay = asyncio.get_running_loop().create_task(_relay(generation))
    else:
        generation._notify()


async def _relay(generation: Generation) -> None:
    layer = get_channel_layer()
    group = group_name(generation.message_id)
    index = offset = sent_trailing = 0
    while True:
        if generation.relay_snapshot:
            generation.relay_snapshot = False
            index = offset = sent_trailing = 0
        parts = generation.parts
        count = len(parts)
        piece = "".join(parts[index:count])
        start, index = offset, count
        offset += len(piece)
        trailing = generation.trailing[sent_trailing:]
        update: dict[str, Any] = {
            "type": "reply.update",
            "start": start,
            "text": piece,
            "trailing_from": sent_trailing,
            "trailing": [list(event) for event in trailing],
            "length": generation.length,
            "closed": generation.closed,
        }
        sent_trailing += len(trailing)
        try:
            await asyncio.wait_for(layer.group_send(group, update), 5.0)
        except Exception:
            logger.warning("relay.publish_failed", extra={"message_id": str(generation.message_id)})
        if generation.closed and sent_trailing == len(generation.trailing):
            return
        if len(generation.parts) == index and len(generation.trailing) == sent_trailing:
            await generation.changed()
        await asyncio.sleep(PUBLISH_INTERVAL)


# --- the follower's side ------------------------------------------------------------------


class RelayLost(Exception):
    """The owner stopped answering; continue from the database."""


@dataclass
class Progress:
    """How far a follower got: characters of text, and the last event id it sent."""

    offset: int
    last_event_id: int


async def follow_remote(
    *, message_id: uuid.UUID, worker: str, progress: Progress
) -> AsyncIterator[bytes]:
    """Chunks and trailing events of a reply another process runs, after ``progress``.

    Raises :class:`RelayLost` when nothing arrives for ``CHAT_STALE_SECONDS`` or the layer
    fails; ``progress`` then says where the caller continues from the database.
    """
    offset = progress.offset
    layer = get_channel_layer()
    channel = await layer.new_channel()
    group = group_name(message_id)
    request = {"type": "follow", "message_id": str(message_id)}
    try:
        await layer.group_add(group, channel)
        await layer.send(worker_channel(worker), {**request, "snapshot": True})
    except Exception as exc:
        raise RelayLost from exc
    loop = asyncio.get_running_loop()
    last_heard = last_renewed = loop.time()
    trailing_seen = 0
    try:
        while True:
            try:
                update = await asyncio.wait_for(
                    layer.receive(channel), settings.CHAT_KEEPALIVE_SECONDS
                )
            except TimeoutError:
                if loop.time() - last_heard > settings.CHAT_STALE_SECONDS:
                    raise RelayLost from None
                yield KEEPALIVE
                continue
            except Exception as exc:
                raise RelayLost from exc
            now = last_heard = loop.time()
            if now - last_renewed > FOLLOW_RENEW_SECONDS:
                last_renewed = now
                with contextlib.suppress(Exception):
                    await layer.send(worker_channel(worker), request)
            start, text = update["start"], update["text"]
            end = start + len(text)
            if start > offset:  # we missed a piece: ask for the whole text again
                with contextlib.suppress(Exception):
                    await layer.send(worker_channel(worker), {**request, "snapshot": True})
                continue
            if end > offset:
                piece = text[offset - start :]
                offset = progress.offset = end
                yield encode_chunk(TEXT_BASE + offset, piece)
            trailing_from = update["trailing_from"]
            if trailing_from > trailing_seen:
                continue  # a later snapshot resends them in order
            for position, (name, data) in enumerate(update["trailing"], start=trailing_from):
                if position < trailing_seen:
                    continue
                trailing_seen = position + 1
                event_id = trailing_event_id(update["length"], position)
                if event_id > progress.last_event_id:
                    progress.last_event_id = event_id
                    yield encode_event(event_id, name, data)
            if update["closed"]:
                return
    finally:
        with contextlib.suppress(Exception):
            await layer.group_discard(group, channel)


async def request_remote_cancel(*, message_id: uuid.UUID, worker: str) -> None:
    """Tell the owner to cancel now (best effort; the database flag is the fallback)."""
    if not relay_enabled() or not worker:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            get_channel_layer().send(
                worker_channel(worker), {"type": "cancel", "message_id": str(message_id)}
            ),
            2.0,
        )
