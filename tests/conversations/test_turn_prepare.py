"""turn_prepare: what the model sees, and what the turn stores before it streams."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from ai.models import Reservation
from ai.prompts import model_prompt, system_prompt_for
from ai.providers.base import estimate_messages_tokens
from conversations.models import Conversation, Message
from conversations.streaming.turn import prepare_turn
from tests import factories

pytestmark = pytest.mark.django_db


def test_server_history_is_the_last_messages_ending_with_the_new_one(user, settings):
    settings.CHAT_HISTORY_LIMIT = 3
    conversation = factories.make_conversation(factories.make_context(user))
    start = timezone.now() - timedelta(minutes=10)
    for i, (role, content) in enumerate(
        [("user", "one"), ("assistant", "two"), ("user", "three"), ("assistant", "four")]
    ):
        factories.make_message(conversation, role, content, created_at=start + timedelta(seconds=i))
    # Neither a reply still streaming nor an empty one is history.
    factories.make_message(
        conversation, "assistant", "", status=Message.Status.FAILED, created_at=start
    )
    turn, _provider = prepare_turn(
        user=user, payload={"conversation_id": str(conversation.id), "message": "five"}
    )
    assert [(m.role, m.content) for m in turn.history] == [
        ("user", "three"),
        ("assistant", "four"),
        ("user", "five"),
    ]
    # Both new messages are stored, the reply as streaming, the reservation held.
    stored = list(conversation.messages.order_by("-created_at")[:2])
    assert [(m.role, m.status) for m in stored] == [
        ("assistant", Message.Status.STREAMING),
        ("user", Message.Status.COMPLETE),
    ]
    assert stored[0].id == turn.assistant_message.id and stored[1].id == turn.user_message.id
    reservation = Reservation.objects.get(pk=turn.reservation_id)
    assert turn.reserved == (reservation.tokens, reservation.period_started_at, reservation.cost)
    conversation.refresh_from_db()
    assert conversation.updated_at >= turn.user_message.created_at - timedelta(seconds=1)


def test_history_limit_one_is_only_the_new_message(user, settings):
    settings.CHAT_HISTORY_LIMIT = 1
    conversation = factories.make_conversation(factories.make_context(user))
    factories.make_message(conversation, "user", "earlier")
    turn, _provider = prepare_turn(
        user=user, payload={"conversation_id": str(conversation.id), "message": "now"}
    )
    assert [(m.role, m.content) for m in turn.history] == [("user", "now")]


def test_a_context_alone_starts_a_conversation_titled_by_the_message(user):
    context = factories.make_context(user)
    turn, _provider = prepare_turn(
        user=user,
        payload={
            "context_id": str(context.id),
            "messages": [{"role": "user", "content": "Plan   the\nweek"}],
        },
    )
    conversation = Conversation.objects.get(pk=turn.conversation_id)
    assert conversation.title == "Plan the week" and conversation.context_id == context.id
    assert [(m.role, m.content) for m in turn.history] == [("user", "Plan   the\nweek")]


def test_the_reservation_is_for_the_prompt_the_model_sees(user, settings):
    """A client's system message reaches the model relabelled, with the server's rule
    added to the system prompt: the reservation counts that, not the history as sent."""
    settings.AI_MAX_OUTPUT_TOKENS = 100
    settings.FLOWS_EXTRACTION_ENABLED = False  # its share: see test_charging.py
    settings.CHAT_TITLES_ENABLED = False  # its share: see test_charging.py
    context = factories.make_context(user, instructions="Be brief.")
    client_context = "The user is on a phone. " * 20
    turn, _provider = prepare_turn(
        user=user,
        payload={
            "context_id": str(context.id),
            "messages": [
                {"role": "system", "content": client_context},
                {"role": "user", "content": "Plan my week"},
            ],
        },
    )
    assert turn.system == system_prompt_for(context_name=context.name, instructions="Be brief.")
    model_system, model_history = model_prompt(turn.system, turn.history)
    seen = estimate_messages_tokens(model_history, model_system)
    as_sent = estimate_messages_tokens(turn.history, turn.system)
    assert seen > as_sent
    reservation = Reservation.objects.get(pk=turn.reservation_id)
    assert reservation.tokens == seen + 100
