"""Every "check, then write" on quota and streaming state, raced (real threads, each with
its own database connection): delete during a turn, sweep during finish, cancel during
finish, a turn whose conversation vanished. Afterwards the invariant must hold: nothing
``held``, reserved counters at zero, used counters equal to the reservations' charges and
to the usage ledger.

Runs on SQLite (writers serialized by ``BEGIN IMMEDIATE``) and, with ``DATABASE_URL`` set
to PostgreSQL, on row locks and READ COMMITTED, where the interleavings are real.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from ai.models import Quota, Reservation, UsageRecord
from ai.providers.base import Usage
from conversations.models import Context, Conversation, Message
from conversations.services import context_delete, conversation_delete, message_request_cancel
from conversations.streaming.recovery import messages_interrupt_stale
from conversations.streaming.turn import prepare_turn
from conversations.turn_finish import ReplyOutcome, turn_finish
from conversations.turn_start import PreparedTurn
from core.errors import Conflict, NotFound, ServiceError
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

USAGE = Usage(input_tokens=40, output_tokens=12)
STALE = timedelta(seconds=30)


def assert_invariant(user: AbstractBaseUser) -> None:
    """Nothing held; the quota's counters equal the reservations' charges and the ledger."""
    assert not Reservation.objects.filter(user=user, status="held").exists()
    quota = Quota.objects.get(user=user)
    assert (quota.requests_reserved, quota.tokens_reserved) == (0, 0)
    reservations = Reservation.objects.filter(user=user).aggregate(
        requests=Sum("requests_charged"), tokens=Sum("tokens_charged")
    )
    ledger = UsageRecord.objects.filter(user=user).aggregate(tokens=Sum("tokens_charged"))
    assert quota.requests_used == (reservations["requests"] or 0)
    assert quota.tokens_used == (reservations["tokens"] or 0) == (ledger["tokens"] or 0)


def start_turn(user: AbstractBaseUser, **target: uuid.UUID) -> PreparedTurn:
    """A turn's pre-stream unit (the real one), into a conversation or a new one."""
    payload: dict[str, Any] = {key: str(value) for key, value in target.items()}
    payload["messages"] = [{"role": "user", "content": "Plan the week"}]
    turn, _provider = prepare_turn(user=user, payload=payload)
    return turn


def finish(turn: PreparedTurn, status: str = Message.Status.COMPLETE) -> ReplyOutcome:
    """The turn's last unit (the real one) with a finished reply; returns the outcome."""
    outcome = ReplyOutcome(
        status=status, finish_reason="stop", content="Monday: plan.", usage=USAGE
    )
    turn_finish(turn=turn, outcome=outcome, drafts=[], extraction_usage=None)
    return outcome


def race(*fns: Callable[[], Any]) -> list[Any]:
    """Run each function in its own thread, released together; exceptions are returned."""
    barrier = threading.Barrier(len(fns))

    def run(fn: Callable[[], Any]) -> Any:
        try:
            barrier.wait(timeout=30)
            return fn()
        except Exception as exc:  # the outcome under test
            return exc
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=len(fns)) as pool:
        return list(pool.map(run, fns))


def hold_open(unit: Callable[[], Any], seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Run ``unit`` in a thread inside a transaction that stays open ``seconds`` after it
    (its locks held, its writes uncommitted); the event is set once ``unit`` has run."""
    ran = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with transaction.atomic():
                unit()
                ran.set()
                time.sleep(seconds)
        except BaseException as exc:  # reported by the caller's assertion
            errors.append(exc)
            ran.set()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread, ran


def make_stale(turn: PreparedTurn) -> None:
    """Make the reply look abandoned: no heartbeat for longer than the stale bound."""
    Message.objects.filter(pk=turn.assistant_message.pk).update(
        updated_at=timezone.now() - 2 * STALE
    )


# --- delete during a turn ------------------------------------------------------------------


@pytest.mark.parametrize("what", ["conversation", "context"])
def test_delete_while_a_turn_is_starting_waits_for_it_and_answers_409(what: str) -> None:
    """The delete's check ("nothing streams") and its delete are one unit ordered with the
    turn's start (the user's quota lock): a turn starting meanwhile is seen, not orphaned."""
    user = factories.make_user("deleter")
    context = factories.make_context(user)
    conversation = factories.make_conversation(context)
    started: list[PreparedTurn] = []
    thread, ran = hold_open(
        lambda: started.append(start_turn(user, conversation_id=conversation.id)), seconds=1.0
    )
    assert ran.wait(10)
    try:
        with pytest.raises(Conflict) as refused:
            if what == "conversation":
                conversation_delete(conversation=conversation)
            else:
                context_delete(context=Context.objects.get(pk=context.pk))
        assert refused.value.code == "conversation_busy"
    finally:
        thread.join(15)
    assert not thread.errors  # type: ignore[attr-defined]
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    finish(started[0])
    assert_invariant(user)
    conversation_delete(conversation=conversation)  # once the reply ended, it goes
    assert not Conversation.objects.filter(pk=conversation.pk).exists()


def test_concurrent_streams_and_deletes_leave_nothing_held() -> None:
    """Fifteen pairs of "start a turn and finish it" and "delete its context", raced."""
    pairs = []
    for i in range(15):
        user = factories.make_user(f"pair{i}")
        pairs.append((user, factories.make_context(user)))

    def turn_of(user: AbstractBaseUser, context: Context) -> Callable[[], str]:
        def run() -> str:
            turn = start_turn(user, context_id=context.id)
            return finish(turn).status

        return run

    def delete_of(context: Context) -> Callable[[], str]:
        def run() -> str:
            context_delete(context=Context.objects.get(pk=context.pk))
            return "deleted"

        return run

    fns = []
    for user, context in pairs:
        fns += [turn_of(user, context), delete_of(context)]
    outcomes = race(*fns)
    for outcome in outcomes:
        # A turn either ran or found its context gone; a delete either ran or met the reply.
        if isinstance(outcome, ServiceError):
            assert isinstance(outcome, NotFound | Conflict), outcome
        else:
            assert outcome in ("complete", "deleted"), outcome
    for user, _context in pairs:
        assert_invariant(user)


def test_a_turn_whose_conversation_vanished_releases_its_reservation() -> None:
    """Removed behind the API's back (the admin, a cascade): the finish stores nothing,
    charges nothing and leaves nothing held, instead of failing on a foreign key."""
    user = factories.make_user("vanished")
    context = factories.make_context(user)
    turn = start_turn(user, context_id=context.id)
    Conversation.objects.filter(pk=turn.conversation_id).delete()

    outcome = finish(turn)

    assert outcome.status == Message.Status.INTERRUPTED
    assert Reservation.objects.get(pk=turn.reservation_id).status == "released"
    line = UsageRecord.objects.get(user=user)
    assert (line.message_id, line.conversation_id, line.tokens_charged) == (None, None, 0)
    assert (line.input_tokens, line.output_tokens) == (USAGE.input_tokens, USAGE.output_tokens)
    assert_invariant(user)


# --- sweep during finish -------------------------------------------------------------------


def test_a_reply_the_sweeper_interrupted_is_not_rewritten_by_its_finish() -> None:
    """A live reply whose heartbeat stalled is released by another process's sweeper; its
    finish then keeps the sweeper's verdict: still ``interrupted``, nothing charged twice
    or resurrected, the ledger saying what was charged (nothing)."""
    user = factories.make_user("stalled")
    context = factories.make_context(user)
    turn = start_turn(user, context_id=context.id)
    Message.objects.filter(pk=turn.assistant_message.pk).update(content="Mon")
    make_stale(turn)
    assert messages_interrupt_stale(stale_after=STALE) == 1

    outcome = finish(turn)

    message = Message.objects.get(pk=turn.assistant_message.pk)
    assert (message.status, message.content) == ("interrupted", "Mon")
    assert (outcome.status, outcome.content, outcome.error_code) == (
        "interrupted",
        "Mon",
        "internal_error",
    )
    assert Reservation.objects.get(pk=turn.reservation_id).status == "released"
    line = UsageRecord.objects.get(user=user)
    assert (line.outcome, line.tokens_charged, line.message_id) == ("interrupted", 0, message.pk)
    assert_invariant(user)


def test_a_sweep_while_the_finish_is_writing_leaves_the_finished_reply_alone() -> None:
    """The finish holds the reply (uncommitted) when the sweeper looks: the sweeper must
    neither interrupt it nor release its reservation; the reply ends complete and billed."""
    user = factories.make_user("finisher")
    context = factories.make_context(user)
    turn = start_turn(user, context_id=context.id)
    make_stale(turn)
    thread, ran = hold_open(lambda: finish(turn), seconds=1.0)
    assert ran.wait(10)
    try:
        interrupted = messages_interrupt_stale(stale_after=STALE)
    finally:
        thread.join(15)
    assert not thread.errors  # type: ignore[attr-defined]
    assert interrupted == 0
    assert Message.objects.get(pk=turn.assistant_message.pk).status == "complete"
    reservation = Reservation.objects.get(pk=turn.reservation_id)
    assert (reservation.status, reservation.tokens_charged) == ("settled", USAGE.total)
    assert_invariant(user)


def test_sweeps_racing_finishes_keep_the_counters_equal_to_the_ledger() -> None:
    """Twelve stalled replies finishing while two sweepers run: each reply ends either
    complete and charged, or interrupted and free, never complete and free."""
    users = [factories.make_user(f"sweep{i}") for i in range(12)]
    turns = [start_turn(u, context_id=factories.make_context(u).id) for u in users]
    for turn in turns:
        make_stale(turn)
    sweep = lambda: messages_interrupt_stale(stale_after=STALE)  # noqa: E731
    outcomes = race(*(lambda t=t: finish(t).status for t in turns), sweep, sweep)
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    for user, turn, status in zip(users, turns, outcomes, strict=False):
        message = Message.objects.get(pk=turn.assistant_message.pk)
        assert message.status == status in ("complete", "interrupted")
        charged = UsageRecord.objects.get(message=message).tokens_charged
        assert charged == (USAGE.total if status == "complete" else 0)
        assert_invariant(user)


# --- cancel during finish ------------------------------------------------------------------


def test_cancels_racing_finishes_keep_the_counters_equal_to_the_ledger() -> None:
    users = [factories.make_user(f"cancel{i}") for i in range(10)]
    turns = [start_turn(u, context_id=factories.make_context(u).id) for u in users]
    outcomes = race(
        *(lambda t=t: finish(t).status for t in turns),
        *(lambda t=t: message_request_cancel(message_id=t.assistant_message.pk) for t in turns),
    )
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    for user, turn in zip(users, turns, strict=True):
        # A cancel that arrives as the reply ends changes nothing: it ended complete.
        assert Message.objects.get(pk=turn.assistant_message.pk).status == "complete"
        assert_invariant(user)
