"""Nothing free by accident (docs/api.md#quota): what a finished turn charges.

The real turn units (``prepare_turn`` and ``turn_finish``) on the real database: a reply
cancelled after its first chunk consumes a request, one that delivered nothing consumes
nothing, and a reply that settles after its quota period rolled over is charged to the
new period (counters and ledger alike). The turn's reservation holds the flow
extraction call as well as the reply.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Sum
from django.utils import timezone

from ai.models import Quota, Reservation, UsageRecord
from ai.prompts import model_prompt_tokens
from ai.providers import anthropic as anthropic_adapter
from ai.providers import openai as openai_adapter
from ai.providers.base import ChatMessage, Usage
from ai.titles import (
    TITLE_MAX_OUTPUT_TOKENS,
    TITLE_SYSTEM_PROMPT,
    render_title_transcript,
    title_reservation_tokens,
)
from conversations.models import Message
from conversations.streaming.turn import prepare_turn
from conversations.turn_finish import ReplyOutcome, turn_finish
from conversations.turn_start import PreparedTurn
from flows.extraction import (
    EXTRACTION_MAX_OUTPUT_TOKENS,
    FLOW_EXTRACTION_TITLED_SCHEMA,
    extraction_system_prompt,
    render_transcript,
)
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

USAGE = Usage(input_tokens=40, output_tokens=12)


def start_turn(user: AbstractBaseUser) -> PreparedTurn:
    """The real pre-stream unit: reserves a request and the turn's tokens."""
    payload: dict[str, Any] = {
        "context_id": str(factories.make_context(user).id),
        "messages": [{"role": "user", "content": "Plan the week"}],
    }
    turn, _provider = prepare_turn(user=user, payload=payload)
    return turn


def finish(turn: PreparedTurn, status: str, content: str) -> None:
    """The real finish unit with the given outcome (the provider used :data:`USAGE`)."""
    usage = Usage(input_tokens=USAGE.input_tokens, output_tokens=USAGE.output_tokens)
    outcome = ReplyOutcome(status=status, finish_reason="stop", content=content, usage=usage)
    turn_finish(turn=turn, outcome=outcome, drafts=[], extraction_usage=None)


def used(user: AbstractBaseUser) -> tuple[int, int, int, int]:
    """requests_used, tokens_used, requests_reserved, tokens_reserved."""
    quota = Quota.objects.get(user=user)
    return (
        quota.requests_used,
        quota.tokens_used,
        quota.requests_reserved,
        quota.tokens_reserved,
    )


def ledger_tokens(user: AbstractBaseUser) -> int:
    return UsageRecord.objects.filter(user=user).aggregate(t=Sum("tokens_charged"))["t"] or 0


@pytest.mark.parametrize(
    ("status", "content", "requests", "tokens"),
    [
        ("complete", "Monday: plan.", 1, USAGE.total),
        ("cancelled", "Mon", 1, USAGE.total),  # after its first chunk: not free
        ("cancelled", "", 0, 0),  # before any chunk: nothing delivered, nothing consumed
        ("failed", "", 0, 0),  # failed before any output
        ("failed", "Mon", 0, USAGE.output_tokens),  # the output that was delivered
    ],
    ids=["complete", "cancelled-after-chunk", "cancelled-before-chunk", "failed", "failed-late"],
)
def test_what_a_reply_consumes(status: str, content: str, requests: int, tokens: int) -> None:
    user = factories.make_user("charge")
    turn = start_turn(user)
    finish(turn, status, content)
    assert used(user) == (requests, tokens, 0, 0)
    reservation = Reservation.objects.get(pk=turn.reservation_id)
    assert (reservation.requests_charged, reservation.tokens_charged) == (requests, tokens)
    line = UsageRecord.objects.get(message_id=turn.assistant_message.pk, purpose="reply")
    assert (line.outcome, line.tokens_charged) == (status, tokens)
    assert Message.objects.get(pk=turn.assistant_message.pk).status == status


def test_a_reply_that_settles_after_its_period_rolled_over_is_charged() -> None:
    """Reserve, roll the period over (its start moved a day back and its reset into the
    past, as if midnight fell during the reply), finish: the lazy reset runs, then the new
    period's counters and the ledger both carry the reply's real use."""
    user = factories.make_user("rollover")
    turn = start_turn(user)
    assert turn.reserved is not None
    reserved_tokens, period, reserved_cost = turn.reserved
    earlier = period - timedelta(days=1)
    Quota.objects.filter(user=user).update(
        requests_used=5, tokens_used=500, period_started_at=earlier, resets_at=timezone.now()
    )
    Reservation.objects.filter(pk=turn.reservation_id).update(period_started_at=earlier)
    turn.reserved = (reserved_tokens, earlier, reserved_cost)

    finish(turn, "complete", "Monday: plan.")

    quota = Quota.objects.get(user=user)
    assert quota.period_started_at > earlier  # the period started over
    # The old period's 5 and 500 are gone; the reply is charged to the new one.
    assert used(user) == (1, USAGE.total, 0, 0)
    line = UsageRecord.objects.get(message_id=turn.assistant_message.pk, purpose="reply")
    assert line.tokens_charged == USAGE.total
    assert ledger_tokens(user) == quota.tokens_used
    reservation = Reservation.objects.get(pk=turn.reservation_id)
    assert (reservation.status, reservation.tokens_charged) == ("settled", USAGE.total)


# --- the extraction call is reserved with the reply ------------------------------------


def real_tokens(text: str) -> int:
    """``text``'s tokens in cl100k_base (bpe-openai, offline): the stricter of OpenAI's
    encodings for the scripts used here."""
    bpe_openai = pytest.importorskip("bpe_openai")
    return len(bpe_openai.get_encoding("cl100k_base").encode(text))


def test_the_reservation_holds_the_reply_and_the_flow_extraction(settings) -> None:
    """Every call that can spend tokens is reserved before it is made: the turn's hold
    covers the reply at its longest and then the extraction call over the transcript with
    that reply in it, at its longest output, counted with a real tokenizer."""
    settings.FLOWS_EXTRACTION_ENABLED = True
    user = factories.make_user("extract")
    turn = start_turn(user)
    assert turn.reserved is not None
    longest = settings.AI_MAX_OUTPUT_TOKENS
    reply = " word" * longest  # exactly AI_MAX_OUTPUT_TOKENS tokens
    assert real_tokens(reply) == longest
    transcript = render_transcript([*turn.history, ChatMessage("assistant", reply)])
    extraction_prompt = extraction_system_prompt(turn.context_name, timezone.now().date())
    reply_call = real_tokens(turn.system) + sum(real_tokens(m.content) for m in turn.history)
    extraction_call = real_tokens(extraction_prompt) + real_tokens(transcript)
    worst = reply_call + longest + extraction_call + EXTRACTION_MAX_OUTPUT_TOKENS
    assert turn.reserved[0] >= worst
    held = Quota.objects.get(user=user).tokens_reserved
    assert held == turn.reserved[0]


def test_a_first_turn_reserves_the_titled_extraction_and_a_title_call_after_it(
    settings,
) -> None:
    """A new conversation's extraction also asks for its title (a longer prompt and
    schema), and a title call of its own may follow it: both at their longest are held,
    counted with a real tokenizer."""
    settings.FLOWS_EXTRACTION_ENABLED = True
    user = factories.make_user("titled")
    turn = start_turn(user)
    assert turn.reserved is not None and turn.needs_title
    longest = settings.AI_MAX_OUTPUT_TOKENS
    reply = " word" * longest
    history = [*turn.history, ChatMessage("assistant", reply)]
    today = timezone.now().date()
    titled_prompt = extraction_system_prompt(turn.context_name, today, title=True)
    schema = json.dumps(FLOW_EXTRACTION_TITLED_SCHEMA, separators=(",", ":"))
    reply_call = real_tokens(turn.system) + sum(real_tokens(m.content) for m in turn.history)
    extraction_call = (
        real_tokens(titled_prompt) + real_tokens(schema) + real_tokens(render_transcript(history))
    )
    exchange = [turn.history[-1], ChatMessage("assistant", reply)]
    title_call = real_tokens(TITLE_SYSTEM_PROMPT) + real_tokens(render_title_transcript(exchange))
    worst = (
        reply_call
        + longest
        + extraction_call
        + EXTRACTION_MAX_OUTPUT_TOKENS
        + title_call
        + TITLE_MAX_OUTPUT_TOKENS
    )
    assert turn.reserved[0] >= worst


def test_without_extraction_only_the_reply_and_the_title_are_reserved(settings) -> None:
    settings.FLOWS_EXTRACTION_ENABLED = False
    user = factories.make_user("noextract")
    turn = start_turn(user)
    assert turn.reserved is not None and turn.needs_title  # a new conversation's first turn
    expected = model_prompt_tokens(turn.system, turn.history) + settings.AI_MAX_OUTPUT_TOKENS
    title = title_reservation_tokens(turn.history, reply_max_tokens=settings.AI_MAX_OUTPUT_TOKENS)
    assert turn.reserved[0] == expected + title


def test_without_titles_only_the_reply_is_reserved(settings) -> None:
    settings.FLOWS_EXTRACTION_ENABLED = False
    settings.CHAT_TITLES_ENABLED = False
    user = factories.make_user("notitle")
    turn = start_turn(user)
    assert turn.reserved is not None and not turn.needs_title
    expected = model_prompt_tokens(turn.system, turn.history) + settings.AI_MAX_OUTPUT_TOKENS
    assert turn.reserved[0] == expected


def test_the_adapters_cap_extraction_output_at_what_is_reserved() -> None:
    assert openai_adapter._EXTRACTION_MAX_TOKENS <= EXTRACTION_MAX_OUTPUT_TOKENS
    assert anthropic_adapter._EXTRACTION_MAX_TOKENS <= EXTRACTION_MAX_OUTPUT_TOKENS
