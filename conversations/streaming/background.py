"""A server process's background work: checkpoints, the stale-reply sweeper, the relay
listener, the event loop's lag probe.

:func:`start_background` starts each once per process. daphne has no lifespan
events, so the composition root (``chatproject/asgi.py``) calls it on the first HTTP
request or WebSocket connection the process serves.

- The checkpointer saves the text of every running reply about once a second, all in one
  transaction: the text a crash would lose, and each reply's heartbeat.
- The sweeper marks replies whose process died ``interrupted`` (:mod:`.recovery`).
- The lag probe measures how late the event loop runs (:mod:`.admission` sheds turns
  when the process is saturated).
- With a shared channel layer (``REDIS_URL``), the listener lets other processes follow
  and cancel this process's replies (:mod:`.remote`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from django.conf import settings

from conversations.services import replies_checkpoint
from conversations.streaming.admission import lag_forever
from conversations.streaming.live import registry
from conversations.streaming.recovery import sweep
from conversations.streaming.remote import listen, relay_enabled
from core.db import db_run, db_run_urgent

logger = logging.getLogger("conversations.background")

_tasks: dict[str, asyncio.Task[None]] = {}


async def checkpoint_forever() -> None:
    """Save the text of every running reply about once a second, all in one transaction.

    A reply whose text did not change is still touched every fifth round: its heartbeat
    (see :mod:`.recovery`). One write per second for the whole process, not one per reply
    or per token. A reply found stopped (cancelled from another process, or gone) is
    cancelled here.
    """
    interval = settings.CHAT_CHECKPOINT_SECONDS
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        due = [
            g
            for g in registry.all()
            if not g.closed
            and (g.length != g.saved_length or now - g.saved_at >= 5 * interval - 0.001)
        ]
        if not due:
            continue
        texts = {g.message_id: g.text() for g in due}
        try:
            stopped = await db_run_urgent(replies_checkpoint, texts=texts)
        except Exception:
            logger.warning("turn.checkpoint_failed", extra={"replies": len(texts)})
            continue
        for generation in due:
            generation.saved_length = len(texts[generation.message_id])
            generation.saved_at = now
            if generation.message_id in stopped:
                generation.request_cancel()


async def sweep_forever() -> None:
    """Run the sweeper every few seconds, sparing this process's own replies."""
    stale_after = timedelta(seconds=settings.CHAT_STALE_SECONDS)
    interval = max(0.5, min(10.0, settings.CHAT_STALE_SECONDS / 3))
    while True:
        try:
            keep = [generation.message_id for generation in registry.all()]
            await db_run(sweep, stale_after=stale_after, keep=keep)
        except Exception:
            logger.warning("recovery.sweep_failed", exc_info=True)
        await asyncio.sleep(interval)


def _ensure(name: str, loop_forever: Callable[[], Coroutine[Any, Any, None]]) -> None:
    task = _tasks.get(name)
    if task is None or task.done():
        _tasks[name] = asyncio.get_running_loop().create_task(loop_forever())


def start_background() -> None:
    """Start this process's checkpointer, sweeper, lag probe and (with ``REDIS_URL``) relay
    listener, each once; one that ended is started again. Call it from the event loop."""
    _ensure("checkpointer", checkpoint_forever)
    _ensure("sweeper", sweep_forever)
    _ensure("lag", lag_forever)
    if relay_enabled():
        _ensure("listener", listen)


def stop_background() -> list[asyncio.Task[None]]:
    """Cancel the background tasks (tests); returns them, to be awaited by the caller."""
    tasks = list(_tasks.values())
    _tasks.clear()
    for task in tasks:
        task.cancel()
    return tasks
