"""A conversation's generated title stays due until a title call ran (docs/api.md#titles):
the real turn units (``prepare_turn`` and ``turn_finish``) on the real database.

A turn that ended while its process was too busy to call (the call skipped: no
``TitleCall``) leaves the title due, and the conversation's next turn makes the call;
a call that ran, whatever it answered, settles it; a title the user set is never due.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser

from ai.models import UsageRecord
from ai.providers.base import Usage
from ai.providers.mock import MockProvider
from conversations.models import Conversation
from conversations.streaming import turn as turn_module
from conversations.streaming.turn import prepare_turn
from conversations.turn_finish import ReplyOutcome, TitleCall, turn_finish
from conversations.turn_start import PreparedTurn
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


def turn(user: AbstractBaseUser, **where: Any) -> PreparedTurn:
    text = "Plan the team offsite in Lisbon"
    payload = (
        {**where, "message": text}
        if "conversation_id" in where
        else {**where, "messages": [{"role": "user", "content": text}]}
    )
    prepared, _provider = prepare_turn(user=user, payload=payload)
    assert isinstance(prepared, PreparedTurn)
    return prepared


def finish(prepared: PreparedTurn, title_call: TitleCall | None) -> ReplyOutcome:
    outcome = ReplyOutcome(
        status="complete", finish_reason="stop", content="Sure.", usage=Usage(10, 3)
    )
    turn_finish(
        turn=prepared, outcome=outcome, drafts=[], extraction_usage=None, title_call=title_call
    )
    return outcome


def test_a_skipped_title_call_is_made_by_the_next_turn(user):
    context = factories.make_context(user)
    first = turn(user, context_id=str(context.id))
    assert first.needs_title
    outcome = finish(first, None)  # the process was saturated: no call
    conversation = Conversation.objects.get(pk=first.conversation_id)
    assert conversation.title_pending and outcome.title == ""
    assert conversation.title == "Plan the team offsite in Lisbon"  # the interim title

    second = turn(user, conversation_id=str(first.conversation_id))
    assert second.needs_title, "still due"
    outcome = finish(second, TitleCall(title="Lisbon offsite", usage=Usage(50, 4)))
    conversation.refresh_from_db()
    assert outcome.title == "Lisbon offsite" and conversation.title == "Lisbon offsite"
    assert not conversation.title_pending
    assert UsageRecord.objects.filter(purpose="title", message=second.assistant_message).exists()

    third = turn(user, conversation_id=str(first.conversation_id))
    assert not third.needs_title
    finish(third, None)
    assert Conversation.objects.get(pk=first.conversation_id).title == "Lisbon offsite"


def test_a_failed_title_call_settles_it(user):
    first = turn(user, context_id=str(factories.make_context(user).id))
    outcome = finish(first, TitleCall(error="ai_unavailable"))
    conversation = Conversation.objects.get(pk=first.conversation_id)
    assert outcome.title == "" and not conversation.title_pending
    assert conversation.title == "Plan the team offsite in Lisbon"
    assert not turn(user, conversation_id=str(first.conversation_id)).needs_title


def test_a_title_the_user_set_is_never_due(user):
    first = turn(user, context_id=str(factories.make_context(user).id))
    finish(first, None)
    Conversation.objects.filter(pk=first.conversation_id).update(
        title="Mine", title_set_by_user=True
    )
    assert not turn(user, conversation_id=str(first.conversation_id)).needs_title


def test_without_titles_nothing_is_due(user, settings):
    settings.CHAT_TITLES_ENABLED = False
    first = turn(user, context_id=str(factories.make_context(user).id))
    assert not first.needs_title


class _Stalled(MockProvider):
    """A provider whose structured calls never answer."""

    async def extract_structured(self, **kwargs: Any) -> Any:  # type: ignore[override]
        await asyncio.sleep(30)


async def test_a_stalled_extraction_or_title_call_ends_at_ai_timeout_seconds(user, settings):
    """Both calls are bounded by ``AI_TIMEOUT_SECONDS``: past it the turn goes on without
    flows or title (``internal_error`` on the ledger line), it never hangs."""
    settings.AI_TIMEOUT_SECONDS = 0.2
    context = await sync_to_async(factories.make_context)(user)
    prepared = await sync_to_async(turn)(user, context_id=str(context.id))
    provider = _Stalled(token_delay_ms=0)
    started = time.monotonic()
    extracted, usage, error = await turn_module._extract(
        prepared, provider, "Sure.", "complete", title=True
    )
    titled = await turn_module._title(prepared, provider, "Sure.")
    assert time.monotonic() - started < 2
    assert (extracted.drafts, extracted.title, usage, error) == ([], "", None, "internal_error")
    assert (titled.title, titled.usage, titled.error) == ("", None, "internal_error")
