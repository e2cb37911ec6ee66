"""The chat turn's last transaction: store how the reply ended, its flows and usage, and
settle the quota reservation, only if the reply is still streaming (docs/api.md#persistence)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone

from ai.models import UsageRecord
from ai.pricing import priced
from ai.providers.base import Usage
from ai.quota.selectors import quota_snapshot
from ai.quota.services import reservation_close_locked
from ai.services import usage_record_build, usage_records_create
from conversations.models import Context, Conversation, Message
from conversations.turn_start import PreparedTurn
from core import sql
from flows.extraction import FlowDraft, FlowUpdate
from flows.services import AppliedFlows, flows_apply_extraction

logger = logging.getLogger("conversations.turn")


@dataclass(slots=True)
class ReplyOutcome:
    """How a reply ended, as stored."""

    status: str
    finish_reason: str
    content: str
    usage: Usage
    error_code: str = ""
    error_retryable: bool = False
    duration_ms: int = 0
    #: The route that served the reply (or failed last); empty: the one it started with.
    provider: str = ""
    model: str = ""
    #: Routes that failed before the first text (docs/api.md#routing): (provider, model,
    #: code, usage the provider reported or ``None``).
    failed_attempts: list[tuple[str, str, str, Usage | None]] = field(default_factory=list)
    #: The route of the flow extraction (``AI_SYSTEM_ROUTE``); ``None``: the reply's.
    extraction_route: tuple[str, str] | None = None
    #: The title the turn gave its conversation, as stored (docs/api.md#titles); "" if none.
    title: str = ""


@dataclass(slots=True)
class TitleCall:
    """How a conversation's first turn named it: the title proposed (\"\" for none), and,
    for a title call of its own, its usage and its error code if it failed (a title that
    came with the flow extraction has no usage here: the extraction's line carries it)."""

    title: str = ""
    usage: Usage | None = None
    error: str = ""


def reply_tokens_charged(outcome: ReplyOutcome) -> int:
    """Tokens a reply counts against the quota (docs/api.md#quota).

    A complete reply, or one cancelled after its first chunk, counts what the provider
    used; a failed one only the output that was delivered; a reply that delivered nothing
    (cancelled before its first chunk, failed before any output) counts nothing.
    """
    if outcome.status == Message.Status.COMPLETE:
        return outcome.usage.total
    if outcome.status == Message.Status.CANCELLED:
        return outcome.usage.total if outcome.content else 0
    return outcome.usage.output_tokens if outcome.content else 0


def reply_requests_charged(outcome: ReplyOutcome) -> int:
    """Requests a reply counts against the quota (docs/api.md#quota): one for every reply
    that delivered output to the user, a complete one or one cancelled after its first
    chunk (cancelling just before the end must not make a reply free); none for a reply
    cancelled before any chunk, or one that failed or was interrupted."""
    if outcome.status == Message.Status.COMPLETE:
        return 1
    return 1 if outcome.status == Message.Status.CANCELLED and outcome.content else 0


def turn_finish(
    *,
    turn: PreparedTurn,
    outcome: ReplyOutcome,
    drafts: list[FlowDraft],
    extraction_usage: Usage | None,
    extraction_error: str = "",
    updates: Sequence[FlowUpdate] = (),
    title_call: TitleCall | None = None,
) -> tuple[AppliedFlows, dict[str, Any]]:
    """The turn's last write, in one transaction: the reply's final text, status and usage,
    the extracted flows and the changes to the context's flows (each with its event, source
    the reply: docs/api.md#flow-history), the quota settled, and the usage ledger.

    A request is consumed by a reply that delivered output (see
    :func:`reply_requests_charged`); tokens for the reply and extraction (see
    :func:`reply_tokens_charged`), in the quota's current period even if the reservation
    was taken in an earlier one. The ledger says what was really charged: nothing when the
    reservation was closed already. Returns the stored and changed flows and the quota
    afterwards.

    A ``title_call`` (a conversation's first turn) names the conversation, unless its user
    set a title meanwhile (docs/api.md#titles), and is charged and recorded as its own
    ledger line; ``outcome.title`` says what was stored.

    The reply is finished only if it is still ``streaming``: one the stale-reply sweeper
    marked ``interrupted`` meanwhile (its heartbeat stalled) keeps that verdict, and one
    that was deleted stays deleted (see :func:`_turn_lost`; ``outcome`` then says what
    is stored).
    """
    message = turn.assistant_message
    if outcome.provider:  # the route that served it (docs/api.md#routing)
        message.provider, message.model = outcome.provider, outcome.model
    now = timezone.now()  # each call priced at the price valid today (docs/api.md#cost)
    priced(outcome.usage, provider=message.provider, model=message.model, at=now)
    extractor = outcome.extraction_route or (message.provider, message.model)
    if extraction_usage is not None:
        priced(extraction_usage, provider=extractor[0], model=extractor[1], at=now)
    for provider, model, _code, usage in outcome.failed_attempts:
        if usage is not None:
            priced(usage, provider=provider, model=model, at=now)
    if title_call is not None and title_call.usage is not None:
        priced(title_call.usage, provider=extractor[0], model=extractor[1], at=now)
    with transaction.atomic():
        finished = sql.update(
            Message,
            {
                "content": outcome.content,
                "status": outcome.status,
                "finish_reason": outcome.finish_reason,
                "error_code": outcome.error_code,
                "error_retryable": outcome.error_retryable,
                "input_tokens": outcome.usage.input_tokens,
                "output_tokens": outcome.usage.output_tokens,
                "cache_read_tokens": outcome.usage.cache_read_tokens,
                "cache_write_tokens": outcome.usage.cache_write_tokens,
                "usage_estimated": outcome.usage.estimated,
                "cost": outcome.usage.cost,
                "currency": outcome.usage.currency,
                "provider": message.provider,
                "model": message.model,
                "updated_at": now,
            },
            {"id": message.pk, "status": Message.Status.STREAMING},
        )
        if not finished:
            return AppliedFlows(), _turn_lost(
                turn=turn,
                outcome=outcome,
                extraction_usage=extraction_usage,
                extraction_error=extraction_error,
                title_call=title_call,
            )
        flows = flows_apply_extraction(
            user_id=message.user_id,
            context_id=turn.context_id,
            conversation_id=message.conversation_id,
            source_message_id=message.id,
            drafts=drafts,
            updates=updates,
        )
        extraction = _extraction_used(extraction_usage, extraction_error)
        titling = _title_used(title_call)
        if title_call is not None:
            title = title_call.title if outcome.status == "complete" else ""
            outcome.title = _title_store(turn, title, now)
        tokens = (
            reply_tokens_charged(outcome)
            + (extraction.total if extraction else 0)
            + (titling.total if titling else 0)
        )
        # The real cost of the calls: the ledger's cost lines of the turn, summed.
        cost = (
            outcome.usage.cost
            + (extraction.cost if extraction else 0)
            + (titling.cost if titling else 0)
        )
        settled = reservation_close_locked(
            user=message.user,
            reservation_id=turn.reservation_id,
            reserved=turn.reserved,
            requests=reply_requests_charged(outcome),
            tokens=tokens,
            cost=cost,
        )
        charged = settled is not None and settled.tokens_charged == tokens
        usage_records_create(  # one INSERT for the reply and the extraction
            _ledger_lines(
                turn=turn,
                outcome=outcome,
                reply_outcome=outcome.status,
                extraction=extraction,
                extraction_error=extraction_error,
                charged=charged,
                links=(message.conversation.context, message.conversation, message),
                title_call=title_call,
            )
        )
        return flows, settled.quota if settled is not None else quota_snapshot(user=message.user)


def _title_used(title_call: TitleCall | None) -> Usage | None:
    """The title call's usage if one ran (an error counts as one that used nothing)."""
    if title_call is None:
        return None
    return _extraction_used(title_call.usage, title_call.error)


def _title_store(turn: PreparedTurn, title: str, now: Any) -> str:
    """Name the conversation ``title`` unless its user set one (in the turn's finish
    transaction); the reply keeps it for its ``title`` event. Returns what was stored.
    A title call ran either way: no title is due any more (an empty ``title``: the call
    failed or answered nothing usable)."""
    if not title:
        sql.update(Conversation, {"title_pending": False}, {"id": turn.conversation_id})
        return ""
    named = sql.update(
        Conversation,
        {"title": title, "updated_at": now, "title_pending": False},
        {"id": turn.conversation_id, "title_set_by_user": False},
    )
    if not named:
        return ""
    sql.update(Message, {"generated_title": title}, {"id": turn.assistant_message.pk})
    return title


def _extraction_used(usage: Usage | None, error: str) -> Usage | None:
    """The extraction's usage if one ran (an error counts as one that used nothing)."""
    return usage or Usage() if usage is not None or error else None


def _call_line(
    common: dict[str, Any],
    route: tuple[str, str] | None,
    *,
    purpose: str,
    usage: Usage,
    outcome: str,
    error_code: str = "",
    tokens_charged: int = 0,
    duration_ms: int = 0,
) -> UsageRecord:
    """One ledger line: a call's ``usage`` on ``route`` (default: the reply's)."""
    where = common if route is None else {**common, "provider": route[0], "model": route[1]}
    return usage_record_build(
        **where,
        purpose=purpose,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        estimated=usage.estimated,
        cost=usage.cost,
        currency=usage.currency,
        tokens_charged=tokens_charged,
        outcome=outcome,
        error_code=error_code,
        duration_ms=duration_ms,
    )


def _ledger_lines(
    *,
    turn: PreparedTurn,
    outcome: ReplyOutcome,
    reply_outcome: str,
    extraction: Usage | None,
    extraction_error: str,
    charged: bool,
    links: tuple[Context | None, Conversation | None, Message | None],
    title_call: TitleCall | None = None,
) -> list[UsageRecord]:
    """The usage ledger's lines of a turn: the reply's, failed routes' attempts, and, if
    they ran, the extraction's and the title's (both on the system route); ``charged``
    says whether their tokens were counted against the quota."""
    message = turn.assistant_message
    context, conversation, stored = links
    common = {
        "user": message.user,
        "context": context,
        "conversation": conversation,
        "message": stored,
        "provider": message.provider,
        "model": message.model,
    }
    lines = [
        _call_line(
            common,
            None,
            purpose="reply",
            usage=outcome.usage,
            outcome=reply_outcome,
            error_code=outcome.error_code,
            tokens_charged=reply_tokens_charged(outcome) if charged else 0,
            duration_ms=outcome.duration_ms,
        )
    ]
    # A failed route's attempt is never the user's charge; one that reported nothing
    # has nothing to record.
    lines.extend(
        _call_line(
            common,
            (provider, model),
            purpose="reply",
            usage=usage,
            outcome="failed",
            error_code=code,
        )
        for provider, model, code, usage in outcome.failed_attempts
        if usage is not None
    )
    system = outcome.extraction_route or (message.provider, message.model)
    if extraction is not None:
        lines.append(
            _call_line(
                common,
                system,
                purpose="extraction",
                usage=extraction,
                outcome="failed" if extraction_error else "complete",
                error_code=extraction_error,
                tokens_charged=extraction.total if charged else 0,
            )
        )
    titling = _title_used(title_call)
    if title_call is not None and titling is not None:
        lines.append(
            _call_line(
                common,
                system,
                purpose="title",
                usage=titling,
                outcome="failed" if title_call.error else "complete",
                error_code=title_call.error,
                tokens_charged=titling.total if charged else 0,
            )
        )
    return lines


def _turn_lost(
    *,
    turn: PreparedTurn,
    outcome: ReplyOutcome,
    extraction_usage: Usage | None,
    extraction_error: str,
    title_call: TitleCall | None = None,
) -> dict[str, Any]:
    """Finish a turn whose reply is no longer ``streaming`` (in the caller's transaction);
    the quota afterwards.

    Interrupted by the sweeper: its reservation was released with it, so nothing is
    charged now (neither twice nor after the release). Deleted with its conversation:
    the reservation, if still held, is released. Either way nothing is stored over the
    reply, no flows are kept, and the ledger records the calls with nothing charged, so
    the counters still equal the ledger. ``outcome`` is set to what is stored (for a reply
    that is gone: ``interrupted``), so the client hears what a resume would replay.
    """
    message = turn.assistant_message
    found = sql.select(Message, {"id": message.pk}, fields=_REPLY_END)
    if found:
        stored = found[0]
        outcome.status, outcome.finish_reason = stored.status, stored.finish_reason
        outcome.error_code, outcome.error_retryable = stored.error_code, stored.error_retryable
        outcome.content = stored.content
        links: tuple[Context | None, Conversation | None, Message | None] = (
            message.conversation.context,
            message.conversation,
            stored,
        )
    else:
        outcome.status = Message.Status.INTERRUPTED
        outcome.finish_reason = Message.FinishReason.INTERRUPTED
        outcome.error_code, outcome.error_retryable = "internal_error", True
        conversation = sql.select(Conversation, {"id": turn.conversation_id}, fields=("id",))
        context = sql.select(Context, {"id": turn.context_id}, fields=("id",))
        links = (context[0] if context else None, conversation[0] if conversation else None, None)
    released = reservation_close_locked(
        user=message.user, reservation_id=turn.reservation_id, requests=0, tokens=0
    )
    reply_outcome = (
        outcome.status
        if outcome.status in UsageRecord.Outcome.values
        else UsageRecord.Outcome.INTERRUPTED
    )
    usage_records_create(
        _ledger_lines(
            turn=turn,
            outcome=outcome,
            reply_outcome=reply_outcome,
            extraction=_extraction_used(extraction_usage, extraction_error),
            extraction_error=extraction_error,
            charged=False,
            links=links,
            title_call=title_call,
        )
    )
    logger.warning(
        "turn.finish_lost",
        extra={
            "message_id": str(message.pk),
            "conversation_id": str(turn.conversation_id),
            "stored_status": outcome.status if found else "gone",
            "reservation_released": released is not None,
        },
    )
    return released.quota if released is not None else quota_snapshot(user=message.user)


#: The fields of a reply that say how it ended.
_REPLY_END = ("id", "content", "status", "finish_reason", "error_code", "error_retryable")
