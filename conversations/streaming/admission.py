"""Admission control: a saturated process sheds a new turn before it starts
(docs/api.md#load-shedding).

Every turn this process admits costs its event loop and its database threads the same
fixed work (a start, an end, a flow extraction) and a share of the relaying. Past what
the process can serve in time, one more turn makes every turn slower (the time to the
first chunk of the last of 500 turns started at once on one process was 12 s). Instead, a
new turn is refused with 503 ``server_busy`` and ``Retry-After``, before any byte and
before any database work (the turn is not started and nothing is stored), when:

- the process already holds ``CHAT_MAX_PROCESS_STREAMS`` turns (generations running here
  plus turns being started), or
- a turn admitted now would wait longer than ``CHAT_BUSY_WAIT_SECONDS`` before its start
  runs: the database units already queued times their mean time
  (:func:`core.db.db_wait_estimate`), plus the event loop's current lag
  (:func:`loop_lag`).

Either limit at 0 is off. Both transports call :func:`turn_admission` around their turn
start (SSE: 503 JSON; WebSocket: the ``error`` frame of a refusal, ``retry_after``).

The end of an admitted turn is bounded too: at most ``CHAT_MAX_PROCESS_EXTRACTIONS`` flow
extractions, and as many conversation title calls, run at once in a process
(:func:`extraction_bounded`); a turn that ends while that many run skips its extraction
(``flows_extracted`` with no flows, logged, counted in ``chat_skipped_extractions``) and
its title call (no ``title`` event; the conversation's next turn makes it; counted in
``chat_skipped_titles``) instead of queueing behind theirs: the events keep their order
and ``done`` follows the last chunk at once. (200 title calls at the end of 200 turns
started together took the ``done`` after the last chunk from 0.26-0.37 s to 0.35-0.84 s,
``bench/saturation.py -c 200``.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from django.conf import settings

from conversations.streaming.live import registry
from core import metrics
from core.db import db_wait_estimate
from core.errors import ServiceError

logger = logging.getLogger("conversations.turn")

T = TypeVar("T")

#: Turns this process admitted whose start (the first transaction) has not finished.
_starting = [0]
#: Flow extractions, and title calls, running in this process.
_extracting = [0]
_titling = [0]
#: The event loop's lag, as last measured by :func:`lag_forever` (seconds).
_lag = [0.0]

LAG_PROBE_SECONDS = 0.25


class ServerBusy(ServiceError):
    """503 ``server_busy``: the process is saturated; retry after ``retry_after`` seconds."""

    code = "server_busy"

    def __init__(self, *, reason: str, retry_after: int) -> None:
        super().__init__(headers={"Retry-After": str(retry_after)})
        self.reason = reason


def loop_lag() -> float:
    """How late the event loop last ran a timer, in seconds (0 before the first probe)."""
    return _lag[0]


async def lag_forever() -> None:
    """Measure the event loop's lag: how late a timer of :data:`LAG_PROBE_SECONDS` fires
    (a background task of the process, :mod:`.background`)."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_PROBE_SECONDS)
        _lag[0] = max(0.0, loop.time() - before - LAG_PROBE_SECONDS)
        metrics.DB_QUEUE_WAIT.set(db_wait_estimate())


def turns_held() -> int:
    """Turns this process holds: generations running plus turns being started."""
    return len(registry) + _starting[0]


def _busy() -> ServerBusy | None:
    limit = settings.CHAT_MAX_PROCESS_STREAMS
    if limit > 0 and turns_held() >= limit:
        return ServerBusy(reason="streams", retry_after=5)
    max_wait = settings.CHAT_BUSY_WAIT_SECONDS
    if max_wait > 0:
        wait = db_wait_estimate() + loop_lag()
        if wait > max_wait:
            return ServerBusy(reason="wait", retry_after=min(60, max(1, math.ceil(wait))))
    return None


@contextlib.contextmanager
def turn_admission() -> Iterator[None]:
    """Admit one turn or raise :class:`ServerBusy` (counted in ``chat_refusals`` and
    ``chat_shed_turns``, logged); while the block runs (the turn's start), the turn counts
    in :func:`turns_held`."""
    refused = _busy()
    if refused is not None:
        metrics.REFUSALS.labels(refused.code).inc()
        metrics.SHED_TURNS.labels(refused.reason).inc()
        logger.warning(
            "turn.shed",
            extra={
                "reason": refused.reason,
                "turns_held": turns_held(),
                "db_wait_ms": int(db_wait_estimate() * 1000),
                "loop_lag_ms": int(loop_lag() * 1000),
                "retry_after": refused.headers["Retry-After"],
            },
        )
        raise refused
    _starting[0] += 1
    try:
        yield
    finally:
        _starting[0] -= 1


async def extraction_bounded(
    run: Callable[[], Awaitable[T]],
    *,
    message_id: uuid.UUID,
    skipped: T,
    purpose: str = "extraction",
) -> T:
    """``await run()`` (a turn's flow extraction, or with ``purpose="title"`` its title
    call), unless ``CHAT_MAX_PROCESS_EXTRACTIONS`` calls of that purpose are running in
    this process already: then ``skipped`` at once (logged, counted in
    ``chat_skipped_extractions`` or ``chat_skipped_titles``). Each purpose has its own
    count, so a turn's extraction never crowds out its own title. A skipped title stays
    due: the conversation's next turn makes the call (``Conversation.title_pending``)."""
    title = purpose == "title"
    running = _titling if title else _extracting
    limit = settings.CHAT_MAX_PROCESS_EXTRACTIONS
    if limit > 0 and running[0] >= limit:
        (metrics.SKIPPED_TITLES if title else metrics.SKIPPED_EXTRACTIONS).inc()
        logger.warning(
            "turn.title_skipped" if title else "turn.extraction_skipped",
            extra={"message_id": str(message_id), "calls_running": running[0]},
        )
        return skipped
    running[0] += 1
    try:
        return await run()
    finally:
        running[0] -= 1
