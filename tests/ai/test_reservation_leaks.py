"""A held reservation never outlives its turn: the sweeper's safety net and the finish's
fallback release what nothing else would."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.db import DatabaseError
from django.utils import timezone

from ai.models import Quota, Reservation
from ai.providers import get_provider
from ai.providers.base import Usage
from conversations.models import Message
from conversations.streaming import turn as turn_module
from conversations.streaming.background import sweep_forever
from conversations.streaming.recovery import reservation_max_age, sweep
from conversations.streaming.turn import prepare_turn
from conversations.turn_finish import ReplyOutcome
from conversations.turn_start import PreparedTurn
from tests import factories
from tests.ai.quota_turns import reserve

pytestmark = pytest.mark.django_db(transaction=True)

STALE = timedelta(seconds=30)


def start_turn(user) -> PreparedTurn:  # type: ignore[no-untyped-def]
    context = factories.make_context(user)
    payload = {"context_id": str(context.id), "messages": [{"role": "user", "content": "Hi"}]}
    return prepare_turn(user=user, payload=payload)[0]


def age(reservation_id, by: timedelta) -> None:  # type: ignore[no-untyped-def]
    Reservation.objects.filter(pk=reservation_id).update(created_at=timezone.now() - by)


def test_the_sweep_releases_leaked_reservations_and_leaves_live_ones_held(user) -> None:
    old = reservation_max_age() + timedelta(minutes=1)
    # Leaked: the reply was deleted behind the API's back (the reservation lost its link).
    gone = start_turn(user)
    Message.objects.filter(pk=gone.assistant_message.pk).delete()
    age(gone.reservation_id, old)
    # Leaked: the reply ended, its turn died before settling.
    ended = start_turn(user)
    Message.objects.filter(pk=ended.assistant_message.pk).update(status="complete")
    age(ended.reservation_id, old)
    # Live: a long reply still beating (the heartbeat check owns it, however old).
    live = start_turn(user)
    age(live.reservation_id, old)
    # Young: a turn between its writes, not yet past the bound.
    young = reserve(user, 7)

    # 2, unless a daphne left running by an end-to-end test of this session swept first:
    # what counts is the state afterwards.
    interrupted, released = sweep(stale_after=STALE)
    assert interrupted == 0 and released <= 2

    statuses = dict(Reservation.objects.values_list("pk", "status"))
    assert statuses == {
        gone.reservation_id: "released",
        ended.reservation_id: "released",
        live.reservation_id: "held",
        young.pk: "held",
    }
    quota = Quota.objects.get(user=user)
    assert quota.requests_reserved == 2 and quota.requests_used == 0
    assert quota.tokens_reserved == Reservation.objects.get(pk=live.reservation_id).tokens + 7
    assert sweep(stale_after=STALE) == (0, 0)  # idempotent


def test_the_bound_outlasts_any_running_turn(settings) -> None:
    settings.CHAT_STREAM_TIMEOUT_SECONDS = 120
    settings.AI_TIMEOUT_SECONDS = 30
    settings.CHAT_STALE_SECONDS = 30
    assert reservation_max_age() > timedelta(seconds=120 + 30)


async def test_the_running_sweeper_applies_the_safety_net(user, settings) -> None:
    """The loop each server runs calls the safety net (it used never to be called)."""
    settings.CHAT_STALE_SECONDS = 0.6
    settings.CHAT_STREAM_TIMEOUT_SECONDS = 1
    settings.AI_TIMEOUT_SECONDS = 1
    leaked = await asyncio.to_thread(reserve, user, 5)
    await asyncio.to_thread(age, leaked.pk, timedelta(minutes=5))
    task = asyncio.create_task(sweep_forever())
    try:
        for _ in range(50):
            status = (
                await Reservation.objects.filter(pk=leaked.pk)
                .values_list("status", flat=True)
                .aget()
            )
            if status != "held":
                break
            await asyncio.sleep(0.1)
    finally:
        task.cancel()
    assert status == "released"


async def test_a_finish_that_fails_releases_the_reservation_at_once(user, monkeypatch) -> None:
    """If the finish's transaction fails (here: the database refuses it), the hold is
    released now instead of waiting for a sweeper that may never find it."""
    turn = await asyncio.to_thread(start_turn, user)

    def refused(**_: object) -> None:
        raise DatabaseError("could not serialize access")

    monkeypatch.setattr(turn_module, "turn_finish", refused)
    outcome = ReplyOutcome(
        status="complete", finish_reason="stop", content="Hello", usage=Usage(3, 2)
    )
    flows, _quota, _updated = await turn_module._store(turn, get_provider(), outcome, log={})
    assert flows == [] and outcome.status == "failed" and outcome.error_code == "internal_error"
    reservation = await Reservation.objects.aget(pk=turn.reservation_id)
    assert reservation.status == "released"
    quota = await Quota.objects.aget(user=user)
    assert (quota.requests_reserved, quota.tokens_reserved, quota.tokens_used) == (0, 0, 0)
