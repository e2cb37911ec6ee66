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
Both sides speak :class:`~.events.Event` objects through the one :class:`~.events.Cursor`;
the owner's listener is started with the process's background work (:mod:`.background`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings

from conversations.streaming.events import FAILOVER_ID, KEEPALIVE_EVENT, Cursor, Event
from conversations.streaming.live import WORKER_ID, Generation, registry

logger = logging.getLogger("conversations.relay")

PUBLISH_INTERVAL = 0.02
FOLLOW_RENEW_SECONDS = 10.0


def relay_enabled() -> bool:
    """True when processes share a channel layer (Redis)."""
    return bool(settings.REDIS_URL)


def group_name(message_id: uuid.UUID | str) -> str:
    return f"chat.reply.{uuid.UUID(str(message_id)).hex}"


def worker_channel(worker_id: str) -> str:
    return f"chat.worker.{worker_id}"


# --- the owner's side ---------------------------------------------------------------------


async def listen(worker: str = WORKER_ID) -> None:
    """Answer other processes' ``follow`` and ``cancel`` requests for the replies this
    process runs, forever, on ``worker``'s channel (this process's: :data:`~.live.WORKER_ID`)."""
    layer = get_channel_layer()
    channel = worker_channel(worker)
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
            # All of them each time (a few small dicts, only before the first text).
            "failovers": list(generation.failovers),
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


async def follow_remote(
    *, message_id: uuid.UUID, worker: str, cursor: Cursor, with_failovers: bool = True
) -> AsyncIterator[Event]:
    """The events of a reply another process runs that the client of ``cursor`` lacks.

    ``failover`` events come before any text, as from a live generation: those made
    before the follower joined only ``with_failovers`` (the client had not reached id 2).

    Raises :class:`RelayLost` when nothing arrives for ``CHAT_STALE_SECONDS`` or the layer
    fails; ``cursor`` then says where the caller continues from the database.
    """
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
    failovers_seen: int | None = None
    try:
        while True:
            try:
                update = await asyncio.wait_for(
                    layer.receive(channel), settings.CHAT_KEEPALIVE_SECONDS
                )
            except TimeoutError:
                if loop.time() - last_heard > settings.CHAT_STALE_SECONDS:
                    raise RelayLost from None
                yield KEEPALIVE_EVENT
                continue
            except Exception as exc:
                raise RelayLost from exc
            now = last_heard = loop.time()
            if now - last_renewed > FOLLOW_RENEW_SECONDS:
                last_renewed = now
                with contextlib.suppress(Exception):
                    await layer.send(worker_channel(worker), request)
            if update["start"] > cursor.offset:  # we missed a piece: ask for all the text again
                with contextlib.suppress(Exception):
                    await layer.send(worker_channel(worker), {**request, "snapshot": True})
                continue
            failovers = update.get("failovers") or []
            if failovers_seen is None:  # the first update: those made before we joined
                failovers_seen = 0 if with_failovers else len(failovers)
            if cursor.offset == 0:  # a failover happens before any text
                for data in failovers[failovers_seen:]:
                    yield Event(FAILOVER_ID, "failover", data)
            failovers_seen = max(failovers_seen, len(failovers))
            if (event := cursor.text(update["start"], update["text"])) is not None:
                yield event
            trailing_from = update["trailing_from"]
            if trailing_from > trailing_seen:
                continue  # a later snapshot resends them in order
            fresh = update["trailing"][trailing_seen - trailing_from :]
            for event in cursor.trailing(update["length"], fresh, trailing_seen):
                yield event
            trailing_seen = max(trailing_seen, trailing_from + len(update["trailing"]))
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
