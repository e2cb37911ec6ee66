"""The stale-reply sweeper's work, one round at a time (docs/api.md#resume-cancel-disconnect).

A generation touches its message at least every few seconds (its checkpoints are its
heartbeat). A message still ``streaming`` with no heartbeat for ``CHAT_STALE_SECONDS``
belongs to a process that died: it is marked ``interrupted``, keeping its text, and its
quota reservation is released. Generations this process runs are never touched, nor are
those of live processes (they keep beating). Each server process runs the sweeper from
its first request on (:mod:`.background`), so a restarted server cleans up after the one
that died.

The sweeper also releases any reservation still ``held`` long after every reply could
have ended whose reply is not streaming (a turn that died between its writes, a reply
removed behind the API's back): the safety net that keeps a leak from lasting forever.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ai.quota.services import reservations_release_stale
from conversations.models import Message

logger = logging.getLogger("conversations.recovery")


def messages_interrupt_stale(*, stale_after: timedelta, keep: Iterable[uuid.UUID] = ()) -> int:
    """Mark stale ``streaming`` replies ``interrupted`` and release their reservations.

    The replies are locked as they are chosen, skipping any a finishing turn holds: a
    reply is either finished by its turn or interrupted here, never both, and only the
    reservations of the replies interrupted here are released. Returns how many.
    """
    cutoff = timezone.now() - stale_after
    with transaction.atomic():
        ids = list(
            Message.objects.select_for_update(skip_locked=True)
            .filter(status=Message.Status.STREAMING, updated_at__lt=cutoff)
            .exclude(pk__in=list(keep))
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        if not ids:
            return 0
        Message.objects.filter(pk__in=ids, status=Message.Status.STREAMING).update(
            status=Message.Status.INTERRUPTED,
            finish_reason=Message.FinishReason.INTERRUPTED,
            error_code="internal_error",
            error_retryable=True,
            updated_at=timezone.now(),
        )
        reservations_release_stale(message_ids=ids)
    logger.warning("recovery.interrupted", extra={"messages": len(ids)})
    return len(ids)


def reservation_max_age() -> timedelta:
    """How long a reservation may be held at most by a turn that is still running: its
    generation's timeout, then the flow extraction's, with the stale bound as margin."""
    return timedelta(
        seconds=settings.CHAT_STREAM_TIMEOUT_SECONDS
        + settings.AI_TIMEOUT_SECONDS
        + 2 * settings.CHAT_STALE_SECONDS
    )


def sweep(*, stale_after: timedelta, keep: Iterable[uuid.UUID] = ()) -> tuple[int, int]:
    """One round of the sweeper: stale replies interrupted, then leaked reservations (held
    past :func:`reservation_max_age`, their reply not streaming) released. Returns both
    counts."""
    interrupted = messages_interrupt_stale(stale_after=stale_after, keep=keep)
    leaked = reservations_release_stale(older_than=reservation_max_age())
    if leaked:
        logger.warning("recovery.reservations_released", extra={"reservations": leaked})
    return interrupted, leaked
