"""Writes for contexts, conversations and the chat turn's messages."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from ai.models import UsageRecord
from ai.prompts import model_prompt_tokens, system_prompt_for
from ai.providers.base import ChatMessage, Usage
from ai.quota.selectors import quota_as_dict, quota_snapshot
from ai.quota.services import quota_lock, quota_reserve_locked, reservation_close_locked
from ai.services import usage_record_build, usage_records_create
from conversations.models import Context, Conversation, Message
from conversations.selectors import history_for_model
from core import sql
from core.errors import Conflict, InvalidRequest, NotFound, ServiceError
from flows.extraction import FlowDraft
from flows.models import Flow
from flows.services import flows_store

logger = logging.getLogger("conversations.turn")

_NAME_TAKEN = "You already have a context with this name."


def context_create(
    *, user: AbstractBaseUser, name: str, description: str = "", instructions: str = ""
) -> Context:
    """Create a context; a duplicate name answers 400 naming ``name``."""
    try:
        with transaction.atomic():
            return Context.objects.create(
                user=user, name=name, description=description, instructions=instructions
            )
    except IntegrityError as exc:
        raise InvalidRequest({"name": [_NAME_TAKEN]}) from exc


def context_update(*, context: Context, data: dict[str, Any]) -> Context:
    """Update name, description or instructions."""
    for field in ("name", "description", "instructions"):
        if field in data:
            setattr(context, field, data[field])
    try:
        with transaction.atomic():
            context.save()
    except IntegrityError as exc:
        raise InvalidRequest({"name": [_NAME_TAKEN]}) from exc
    return context


def _delete_unless_streaming(
    *, owner: AbstractBaseUser, messages: QuerySet[Message], obj: Any
) -> None:
    """Delete ``obj`` unless one of ``messages`` (its messages) is a reply streaming.

    The check and the delete are one transaction, ordered with a turn's start by the
    owner's quota lock (the lock :func:`turn_prepare` takes first): a turn starting in
    ``obj`` meanwhile either committed before the check (409 ``conversation_busy``) or
    starts after the delete (404). Never a reply, and a held reservation, left in a
    conversation that no longer exists.
    """
    with transaction.atomic():
        quota_lock(user=owner)
        if messages.filter(status=Message.Status.STREAMING).exists():
            raise Conflict(
                "A reply is streaming; cancel it or wait for it to finish.",
                code="conversation_busy",
            )
        obj.delete()


def context_delete(*, context: Context) -> None:
    """Delete a context with its conversations and flows (409 while a reply streams)."""
    _delete_unless_streaming(
        owner=context.user,
        messages=Message.objects.filter(conversation__context=context),
        obj=context,
    )


def conversation_update(*, conversation: Conversation, title: str) -> Conversation:
    conversation.title = title
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation and its messages (409 while a reply streams)."""
    _delete_unless_streaming(
        owner=conversation.user,
        messages=Message.objects.filter(conversation=conversation),
        obj=conversation,
    )


# --- The chat turn's writes ----------------------------------------------------------------
# Each function is one transactional unit, called from the async turn through db_run.


@dataclass(slots=True)
class PreparedTurn:
    """What the turn needs after its pre-stream checks and first writes."""

    user_id: int
    context_id: uuid.UUID
    context_name: str
    #: The server's system prompt for this turn (the context's name and instructions).
    system: str
    conversation_id: uuid.UUID
    user_message: Message
    assistant_message: Message
    reservation_id: uuid.UUID
    history: list[ChatMessage]
    quota: dict[str, Any]
    #: The reservation's tokens and quota period, as made (settling needs not read it back).
    reserved: tuple[int, datetime] | None = None


#: The context's fields a turn reads (the system prompt, the metadata event).
_TURN_CONTEXT = ("id", "user", "name", "instructions")


def _resolve_conversation(
    *,
    user: AbstractBaseUser,
    context_id: uuid.UUID | None,
    conversation_id: uuid.UUID | None,
    first_text: str,
) -> tuple[Context, Conversation, bool]:
    """The turn's context and conversation (created when only a context is given), and
    whether the conversation was created. Plain SQL (every turn runs it): the context is
    loaded with the fields a turn uses (the others are deferred)."""
    if conversation_id:
        found = sql.select(Conversation, {"id": conversation_id, "user": user.pk})
        if not found:
            raise NotFound("Conversation not found.")
        conversation = found[0]
        if context_id and conversation.context_id != context_id:
            raise InvalidRequest({"context_id": ["Does not match the conversation's context."]})
        context = sql.select(Context, {"id": conversation.context_id}, fields=_TURN_CONTEXT)[0]
        conversation.context = context
        return context, conversation, False
    found = sql.select(Context, {"id": context_id, "user": user.pk}, fields=_TURN_CONTEXT)
    if not found:
        raise NotFound("Context not found.")
    context = found[0]
    title = " ".join(first_text.split())[:80]
    conversation = Conversation(user=user, context=context, title=title)
    sql.insert([conversation])
    return context, conversation, True


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """A validated chat body (either shape), and who generates the reply."""

    context_id: uuid.UUID | None
    conversation_id: uuid.UUID | None
    #: The new user message.
    content: str
    #: The history the client sent, ending with the new message; ``None``: the stored one.
    client_history: list[ChatMessage] | None
    provider: str
    model: str
    worker: str


def turn_reservation_tokens(system: str, history: list[ChatMessage]) -> int:
    """Tokens a turn reserves: the prompt the model will see, plus the longest reply."""
    return model_prompt_tokens(system, history) + settings.AI_MAX_OUTPUT_TOKENS


def turn_prepare(*, user: AbstractBaseUser, request: TurnRequest) -> PreparedTurn:
    """Check and start a turn in one transaction (docs/api.md#checks-before-the-stream).

    Ownership (404), a reply already streaming into the conversation (409
    ``conversation_busy``), too many open streams (429 ``too_many_streams``, past
    ``CHAT_MAX_CONCURRENT_STREAMS``) and quota (429 ``quota_exceeded``) are checked; then
    the user message is stored, the assistant message is stored as ``streaming`` and quota
    is reserved for the prompt the model will see (the context's system prompt, built here
    once, and the last ``CHAT_HISTORY_LIMIT`` messages), all or nothing. The quota row is
    locked first, so one user's concurrent turns are serialized here. Nine to eleven
    statements, BEGIN and COMMIT included, in plain SQL (:mod:`core.sql`: the ORM's
    query building cost more CPU than the statements themselves); with
    :func:`turn_finish`, most of a turn's fixed cost.
    """
    content = request.content
    history_limit = settings.CHAT_HISTORY_LIMIT
    max_streams = settings.CHAT_MAX_CONCURRENT_STREAMS
    with transaction.atomic():
        quota = quota_lock(user=user)
        context, conversation, created = _resolve_conversation(
            user=user,
            context_id=request.context_id,
            conversation_id=request.conversation_id,
            first_text=content,
        )
        streaming = sql.select_values(
            Message, "conversation", {"user": user.pk, "status": Message.Status.STREAMING}
        )
        if conversation.id in streaming:
            raise Conflict(
                "A reply is already streaming into this conversation.", code="conversation_busy"
            )
        if len(streaming) >= max_streams:
            raise ServiceError(
                f"You have {max_streams} replies streaming; wait for one to finish.",
                code="too_many_streams",
                status_code=429,
                headers={"Retry-After": "5"},
            )
        now = timezone.now()
        if request.client_history is not None:
            history = request.client_history
        else:  # the stored history, then the message being sent (it is the newest)
            earlier = history_for_model(conversation=conversation, limit=max(history_limit - 1, 0))
            history = [
                *(ChatMessage(m.role, m.content) for m in earlier),  # type: ignore[arg-type]
                ChatMessage(Message.Role.USER, content),
            ][-history_limit:]
        user_message = Message(
            user=user,
            conversation=conversation,
            role=Message.Role.USER,
            content=content,
            created_at=now,
        )
        assistant_message = Message(
            user=user,
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            provider=request.provider,
            model=request.model,
            worker=request.worker,
            created_at=now + timedelta(microseconds=1),
        )
        sql.insert([user_message, assistant_message])  # one INSERT
        system = system_prompt_for(context_name=context.name, instructions=context.instructions)
        reservation = quota_reserve_locked(
            quota=quota,
            tokens=turn_reservation_tokens(system, history),
            message_id=assistant_message.id,
            now=now,
        )
        if not created:  # a new conversation's updated_at is already now
            sql.update(Conversation, {"updated_at": now}, {"id": conversation.pk})
        return PreparedTurn(
            user_id=user.pk,
            context_id=context.id,
            context_name=context.name,
            system=system,
            conversation_id=conversation.id,
            user_message=user_message,
            assistant_message=assistant_message,
            reservation_id=reservation.pk,
            reserved=(reservation.tokens, reservation.period_started_at),
            history=history,
            quota=quota_as_dict(quota),
        )


def replies_checkpoint(*, texts: dict[uuid.UUID, str]) -> set[uuid.UUID]:
    """Save the text so far of several streaming replies in one transaction.

    Also their heartbeat (``updated_at``). Returns the replies that should stop: gone, no
    longer streaming, or cancelled from another process.
    """
    now = timezone.now()
    stopped: set[uuid.UUID] = set()
    with transaction.atomic():
        for message_id, content in texts.items():
            updated = sql.update(
                Message,
                {"content": content, "updated_at": now},
                {"id": message_id, "status": Message.Status.STREAMING, "cancel_requested": False},
            )
            if not updated:
                stopped.add(message_id)
    return stopped


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


def reply_tokens_charged(outcome: ReplyOutcome) -> int:
    """Tokens a reply counts against the quota (docs/api.md#quota).

    A complete or cancelled reply counts what the provider used; a failed one only the
    output that was delivered (nothing when it failed before any output).
    """
    if outcome.status in (Message.Status.COMPLETE, Message.Status.CANCELLED):
        return outcome.usage.total
    return outcome.usage.output_tokens if outcome.content else 0


def turn_finish(
    *,
    turn: PreparedTurn,
    outcome: ReplyOutcome,
    drafts: list[FlowDraft],
    extraction_usage: Usage | None,
    extraction_error: str = "",
) -> tuple[list[Flow], dict[str, Any]]:
    """The turn's last write, in one transaction: the reply's final text, status and usage,
    the extracted flows, the quota settled, and the usage ledger.

    A request is consumed only by a complete reply; tokens for the reply and extraction
    (see :func:`reply_tokens_charged`). The ledger says what was really charged: nothing
    when the reservation was closed already or taken in an earlier quota period. Returns
    the stored flows and the quota afterwards.

    The reply is finished only if it is still ``streaming``: one the stale-reply sweeper
    marked ``interrupted`` meanwhile (its heartbeat stalled) keeps that verdict, and one
    that was deleted stays deleted (see :func:`_turn_lost`; ``outcome`` then says what
    is stored).
    """
    message = turn.assistant_message
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
                "usage_estimated": outcome.usage.estimated,
                "updated_at": timezone.now(),
            },
            {"id": message.pk, "status": Message.Status.STREAMING},
        )
        if not finished:
            return [], _turn_lost(
                turn=turn,
                outcome=outcome,
                extraction_usage=extraction_usage,
                extraction_error=extraction_error,
            )
        flows = flows_store(
            user_id=message.user_id,
            context_id=turn.context_id,
            conversation_id=message.conversation_id,
            source_message_id=message.id,
            drafts=drafts,
        )
        extraction = _extraction_used(extraction_usage, extraction_error)
        tokens = reply_tokens_charged(outcome) + (extraction.total if extraction else 0)
        settled = reservation_close_locked(
            user=message.user,
            reservation_id=turn.reservation_id,
            reserved=turn.reserved,
            requests=1 if outcome.status == Message.Status.COMPLETE else 0,
            tokens=tokens,
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
            )
        )
        return flows, settled.quota if settled is not None else quota_snapshot(user=message.user)


def _extraction_used(usage: Usage | None, error: str) -> Usage | None:
    """The extraction's usage if one ran (an error counts as one that used nothing)."""
    return usage or Usage() if usage is not None or error else None


def _ledger_lines(
    *,
    turn: PreparedTurn,
    outcome: ReplyOutcome,
    reply_outcome: str,
    extraction: Usage | None,
    extraction_error: str,
    charged: bool,
    links: tuple[Context | None, Conversation | None, Message | None],
) -> list[UsageRecord]:
    """The usage ledger's lines of a turn: the reply's and, if one ran, the extraction's;
    ``charged`` says whether their tokens were counted against the quota."""
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
        usage_record_build(
            **common,
            purpose="reply",
            input_tokens=outcome.usage.input_tokens,
            output_tokens=outcome.usage.output_tokens,
            estimated=outcome.usage.estimated,
            tokens_charged=reply_tokens_charged(outcome) if charged else 0,
            outcome=reply_outcome,
            error_code=outcome.error_code,
            duration_ms=outcome.duration_ms,
        )
    ]
    if extraction is not None:
        lines.append(
            usage_record_build(
                **common,
                purpose="extraction",
                input_tokens=extraction.input_tokens,
                output_tokens=extraction.output_tokens,
                estimated=extraction.estimated,
                tokens_charged=extraction.total if charged else 0,
                outcome="failed" if extraction_error else "complete",
                error_code=extraction_error,
            )
        )
    return lines


def _turn_lost(
    *,
    turn: PreparedTurn,
    outcome: ReplyOutcome,
    extraction_usage: Usage | None,
    extraction_error: str,
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


def message_request_cancel(*, message_id: uuid.UUID) -> bool:
    """Ask the process running a reply to stop it (it sees this at its next checkpoint)."""
    return (
        Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
            cancel_requested=True
        )
        == 1
    )
