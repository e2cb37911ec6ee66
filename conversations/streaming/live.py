"""Replies this process generates: their text in memory, and the followers that read it.

A :class:`Generation` is one assistant reply being produced. It runs to its end (or its
cancel, or its timeout) whether or not anyone reads it; any number of followers read it
through :func:`iter_events`, each from where its client left off (the ids and the resume
arithmetic are :mod:`.events`'). :data:`followers` caps the resumed streams per user.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import uuid
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings

from conversations.streaming.events import (
    FAILOVER_ID,
    KEEPALIVE_EVENT,
    Cursor,
    Event,
    Trailing,
)
from conversations.turn_finish import ReplyOutcome

logger = logging.getLogger(__name__)

#: This process, as stored on the messages it generates (also a channel-name-safe token).
WORKER_ID = "{}.{}.{}".format(
    re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40], os.getpid(), uuid.uuid4().hex[:8]
)

T = TypeVar("T")


@dataclass(slots=True)
class TurnResult:
    """How a turn ended, for the JSON answer of a client that waited for all of it."""

    outcome: ReplyOutcome
    flows: list[dict[str, Any]]
    quota: dict[str, Any]
    #: ``flows_extracted``'s ``updated``: the flows the turn's extraction changed.
    updated: list[dict[str, Any]] = field(default_factory=list)


class Generation:
    """One reply in progress: its text so far, its trailing events when it ends."""

    def __init__(self, *, message_id: uuid.UUID, user_id: int, metadata: dict[str, Any]) -> None:
        self.message_id = message_id
        self.user_id = user_id
        self.metadata = metadata
        self.parts: list[str] = []
        self.length = 0
        self.trailing: list[Trailing] = []
        #: ``failover`` events' data, in order (all before the first text).
        self.failovers: list[dict[str, Any]] = []
        self.closed = False
        self.cancel_requested = False
        self.task: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[Any] | None = None
        self.ended = asyncio.Event()
        self.result: TurnResult | None = None
        self.keepalive_seq = 0
        self.first_token_at: float | None = None
        self._loop = asyncio.get_running_loop()
        # What the checkpoint loop last saved (for the heartbeat and "changed?").
        self.saved_length = 0
        self.saved_at = self._loop.time()
        self.relay: asyncio.Task[None] | None = None
        self.relay_snapshot = False
        self._waiters: list[asyncio.Future[None]] = []
        self.last_event_at = self._loop.time()
        self._keepalive_handle: asyncio.TimerHandle | None = None
        self._schedule_keepalive(settings.CHAT_KEEPALIVE_SECONDS)

    # --- producing -------------------------------------------------------------------
    def append(self, text: str) -> None:
        """Add a text delta and wake the followers (the per-token path: no I/O here)."""
        parts = self.parts
        if not parts:
            self.first_token_at = self._loop.time()
        parts.append(text)
        self.length += len(text)
        self.last_event_at = self._loop.time()
        if self._waiters:
            self._notify()

    def add_failover(self, data: dict[str, Any]) -> None:
        """The turn moved to another route before any text (docs/api.md#routing)."""
        self.failovers.append(data)
        self.last_event_at = self._loop.time()
        self._notify()

    def text(self) -> str:
        """The reply so far."""
        return "".join(self.parts)

    def add_trailing(self, event: str, data: dict[str, Any]) -> None:
        """Add an event after the text (the text is final from now on)."""
        self.trailing.append((event, data))
        self.last_event_at = self._loop.time()
        self._notify()

    def close(self) -> None:
        """No more events: followers send what is left and end."""
        self.closed = True
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
        self._notify()
        self.ended.set()

    def client_gone(self) -> None:
        """The client of the turn's own stream went away: the reply runs on (it can be
        resumed), unless ``CHAT_CANCEL_ON_DISCONNECT`` says to stop it."""
        if settings.CHAT_CANCEL_ON_DISCONNECT:
            self.request_cancel()

    def request_cancel(self) -> None:
        """Stop the generation promptly; it ends with ``done`` / ``cancelled``."""
        if self.cancel_requested or self.trailing:
            return
        self.cancel_requested = True
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()

    # --- waiting ---------------------------------------------------------------------
    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # a follower that went away cancelled its own
                waiter.set_result(None)

    def changed(self) -> asyncio.Future[None]:
        """A future of the caller's own that resolves on the next delta, the end, or a
        keep-alive tick (one per follower, so one follower's cancel touches no other)."""
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def _schedule_keepalive(self, delay: float) -> None:
        self._keepalive_handle = self._loop.call_later(max(delay, 0.01), self._keepalive_tick)

    def _keepalive_tick(self) -> None:
        if self.closed:
            return
        interval = settings.CHAT_KEEPALIVE_SECONDS
        silent_for = self._loop.time() - self.last_event_at
        if silent_for >= interval:
            self.keepalive_seq += 1
            self.last_event_at = self._loop.time()
            self._notify()
            self._schedule_keepalive(interval)
        else:
            self._schedule_keepalive(interval - silent_for)


class GenerationRegistry:
    """The generations this process runs, by message id."""

    def __init__(self) -> None:
        self._by_message: dict[uuid.UUID, Generation] = {}

    def add(self, generation: Generation) -> None:
        self._by_message[generation.message_id] = generation

    def get(self, message_id: uuid.UUID) -> Generation | None:
        return self._by_message.get(message_id)

    def discard(self, generation: Generation) -> None:
        if self._by_message.get(generation.message_id) is generation:
            del self._by_message[generation.message_id]

    def __len__(self) -> int:
        return len(self._by_message)

    def all(self) -> list[Generation]:
        return list(self._by_message.values())


registry = GenerationRegistry()


class FollowerLimit:
    """Resumed streams (SSE ``GET .../stream`` and WebSocket ``resume``) open per user in
    this process, at most ``CHAT_MAX_FOLLOWERS`` each: past it a resume answers 429
    ``too_many_streams`` instead of holding one more stream open."""

    def __init__(self) -> None:
        self._open: dict[int, int] = {}

    def acquire(self, user_id: int) -> bool:
        """Count one more follower of ``user_id``; ``False`` (not counted) past the limit."""
        count = self._open.get(user_id, 0)
        if count >= settings.CHAT_MAX_FOLLOWERS:
            return False
        self._open[user_id] = count + 1
        return True

    def release(self, user_id: int) -> None:
        """One follower of ``user_id`` ended."""
        count = self._open.get(user_id, 0) - 1
        if count > 0:
            self._open[user_id] = count
        else:
            self._open.pop(user_id, None)

    def hold(self, user_id: int, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """``stream``, releasing the follower acquired for ``user_id`` once: when it ends,
        or when it is dropped without ever being iterated (a client gone before the first
        byte)."""
        released = False

        def release_once() -> None:
            nonlocal released
            if not released:
                released = True
                self.release(user_id)

        async def run() -> AsyncIterator[T]:
            try:
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for item in stream:
                        yield item
            finally:
                release_once()

        held = run()
        weakref.finalize(held, release_once)
        return held


followers = FollowerLimit()


async def iter_events(generation: Generation, *, last_event_id: int = 0) -> AsyncIterator[Event]:
    """A generation's events from after ``last_event_id``.

    Chunks that arrived while the follower was busy come as one chunk;
    :data:`~.events.KEEPALIVE_EVENT` when the generation was silent for
    ``CHAT_KEEPALIVE_SECONDS``. Ends when the generation is closed; cancelling the caller
    stops only this follower (what a disconnect means is the transport's choice).
    """
    cursor = Cursor(last_event_id)
    failovers = generation.failovers
    preamble = cursor.preamble(generation.metadata, failovers)
    failovers_sent = len(failovers)  # counted before yielding: one may come meanwhile
    for event in preamble:
        yield event
    parts = generation.parts
    index = position = 0
    if cursor.offset:  # a resume: what the client lacks of the text so far, as one chunk
        text = generation.text()
        index, position = len(parts), len(text)
        if (event := cursor.text(0, text)) is not None:
            yield event
    sent = 0
    while True:
        if failovers_sent < len(failovers):  # a failover (only before any text)
            for data in failovers[failovers_sent:]:
                yield Event(FAILOVER_ID, "failover", data)
            failovers_sent = len(failovers)
        count = len(parts)
        if index < count:  # the per-token path
            piece = parts[index] if count - index == 1 else "".join(parts[index:count])
            index = count
            event = cursor.text(position, piece)
            position += len(piece)
            if event is not None:
                yield event
            continue
        trailing = generation.trailing
        if sent < len(trailing):
            for event in cursor.trailing(generation.length, trailing[sent:], sent):
                yield event
            sent = len(trailing)
        if generation.closed:
            return
        seen = generation.keepalive_seq
        await generation.changed()
        if generation.keepalive_seq != seen and len(parts) == index:
            yield KEEPALIVE_EVENT
