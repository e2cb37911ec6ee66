"""Running generations: their text in memory, and the followers that stream it.

A :class:`Generation` is one assistant reply being produced. It runs to its end (or its
cancel, or its timeout) whether or not anyone reads it; any number of followers read it
through :func:`follow`, each from where it left off.

Event ids let a client resume exactly (contract 3.3). They are integers that encode the
position in the reply, so a replay that merges several missed chunks into one stays exact:

- ``1`` ``metadata``, ``2`` ``typing`` start;
- a ``chunk`` ending at character offset ``n`` of the reply has id ``2 + n``;
- the trailing events (``typing`` stop, ``flows_extracted``, ``done`` or ``error``) of a
  reply of length ``L`` have ids ``2 + L + 1``, ``2 + L + 2``, ... They are added one by
  one after the text ends (``typing`` stop at once, the rest after extraction).

A client that sends ``Last-Event-ID: k`` with ``3 <= k <= 2 + L`` has the first ``k - 2``
characters and receives the rest as one chunk, then live chunks. Offsets count Python
characters (code points); clients never compute them, they only echo the id.
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
from typing import Any, TypeVar

from django.conf import settings

from conversations.streaming.sse import KEEPALIVE, encode_chunk, encode_event, retry_line

logger = logging.getLogger(__name__)

METADATA_ID = 1
TYPING_START_ID = 2
TEXT_BASE = 2

#: This process, as stored on the messages it generates (also a channel-name-safe token).
WORKER_ID = "{}.{}.{}".format(
    re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40], os.getpid(), uuid.uuid4().hex[:8]
)

T = TypeVar("T")
TrailingEvent = tuple[str, dict[str, Any]]
#: ``(event id, event name, data)`` as :func:`iter_events` yields them.
Event = tuple[int, str, Any]

#: The event names :func:`iter_events` yields without a dict (compared with ``is``).
CHUNK = "chunk"
KEEP_ALIVE = "keep-alive"


class Generation:
    """One reply in progress: its text so far, its trailing events when it ends."""

    def __init__(self, *, message_id: uuid.UUID, user_id: int, metadata: dict[str, Any]) -> None:
        self.message_id = message_id
        self.user_id = user_id
        self.metadata = metadata
        self.parts: list[str] = []
        self.length = 0
        self.trailing: list[TrailingEvent] = []
        self.closed = False
        self.cancel_requested = False
        self.task: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[Any] | None = None
        self.ended = asyncio.Event()
        self.result: dict[str, Any] = {}
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


def parse_last_event_id(raw: str | None) -> int:
    """The client's ``Last-Event-ID`` as an int (0 when missing or malformed)."""
    if not raw:
        return 0
    try:
        value = int(raw.strip())
    except ValueError:
        return 0
    return max(value, 0)


def trailing_event_id(length: int, position: int) -> int:
    """The id of the trailing event at ``position`` after a reply of ``length`` characters."""
    return TEXT_BASE + length + 1 + position


def preamble_events(metadata: dict[str, Any], last_event_id: int) -> list[Event]:
    """``metadata`` and ``typing`` start as ``(id, event, data)``, unless the client has them."""
    events: list[Event] = []
    if last_event_id < METADATA_ID:
        events.append((METADATA_ID, "metadata", metadata))
    if last_event_id < TYPING_START_ID:
        events.append((TYPING_START_ID, "typing", {"status": "start"}))
    return events


def preamble(metadata: dict[str, Any], last_event_id: int) -> list[bytes]:
    """``metadata`` and ``typing`` start, SSE-encoded, unless the client has them."""
    return [encode_event(*event) for event in preamble_events(metadata, last_event_id)]


async def iter_events(generation: Generation, *, last_event_id: int = 0) -> AsyncIterator[Event]:
    """A generation's events from after ``last_event_id``, as ``(id, event, data)``.

    The event order and ids of every transport (SSE, WebSocket) come from here. ``data`` is
    a dict, except for ``chunk`` (the text delta itself, a ``str``: no dict on the hot
    path) and :data:`KEEP_ALIVE` (``None``, id ``0``: the generation was silent for
    ``CHAT_KEEPALIVE_SECONDS``; a transport may drop it). Chunks that arrived while the
    follower was busy come as one chunk. Ends when the generation is closed; cancelling the
    caller stops only this follower (what a disconnect means is the transport's choice).
    """
    for event in preamble_events(generation.metadata, last_event_id):
        yield event
    offset = max(0, last_event_id - TEXT_BASE)
    index = 0
    if offset:
        text = generation.text()
        index = len(generation.parts)
        if offset < len(text):
            yield TEXT_BASE + len(text), CHUNK, text[offset:]
        offset = len(text)
    parts = generation.parts
    sent = 0
    while True:
        count = len(parts)
        if index < count:
            piece = parts[index] if count - index == 1 else "".join(parts[index:count])
            index = count
            offset += len(piece)
            yield TEXT_BASE + offset, CHUNK, piece
            continue
        trailing = generation.trailing
        while sent < len(trailing):
            event_id = trailing_event_id(generation.length, sent)
            if event_id > last_event_id:
                yield event_id, *trailing[sent]
            sent += 1
        if generation.closed:
            return
        seen = generation.keepalive_seq
        await generation.changed()
        if generation.keepalive_seq != seen and len(parts) == index:
            yield 0, KEEP_ALIVE, None


async def follow(
    generation: Generation, *, last_event_id: int = 0, primary: bool = False
) -> AsyncIterator[bytes]:
    """Stream a generation's events to one SSE client, from after ``last_event_id``.

    The SSE encoding of :func:`iter_events`. A client that disconnects stops only its own
    stream, unless ``CHAT_CANCEL_ON_DISCONNECT`` is set and this is the turn's own
    response (``primary``).
    """
    try:
        yield retry_line(settings.CHAT_SSE_RETRY_MS)
        async with contextlib.aclosing(
            iter_events(generation, last_event_id=last_event_id)
        ) as events:
            async for event_id, event, data in events:
                if event is CHUNK:
                    yield encode_chunk(event_id, data)
                elif event is KEEP_ALIVE:
                    yield KEEPALIVE
                else:
                    yield encode_event(event_id, event, data)
    except (asyncio.CancelledError, GeneratorExit):
        if primary and settings.CHAT_CANCEL_ON_DISCONNECT:
            generation.request_cancel()
        raise
