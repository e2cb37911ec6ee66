"""The chat turn's first transaction: check, store the user message and the empty reply,
reserve quota (docs/api.md#persistence). Called from the async turn through ``db_run``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from ai.pricing import COST_QUANTUM, MILLION, price_for
from ai.prompts import model_prompt_tokens, system_prompt_for
from ai.providers.base import ChatMessage
from ai.quota.selectors import quota_as_dict
from ai.quota.services import quota_lock, quota_reserve_locked
from ai.routing import TurnRoutes
from ai.titles import title_reservation_tokens
from conversations.models import Context, Conversation, IdempotencyKey, Message
from conversations.selectors import history_for_model
from core import sql
from core.errors import Conflict, InvalidRequest, NotFound, ServiceError
from flows.extraction import ListedFlow, extraction_reservation_tokens
from flows.selectors import flows_listed_for_extraction


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
    #: The reservation's tokens, quota period and cost, as made (settling needs not read
    #: it back).
    reserved: tuple[int, datetime, Decimal] | None = None
    #: The routes the reply may be served by, in order (docs/api.md#routing); ``None``:
    #: only the ``provider`` the turn was prepared with.
    routes: TurnRoutes | None = None
    #: The context's flows the extraction is shown (read with the turn's start, so the
    #: reservation covers them): docs/api.md#flow-extraction.
    flows: list[ListedFlow] = field(default_factory=list)
    #: Whether the turn names its conversation after the reply (its first one).
    needs_title: bool = False


@dataclass(frozen=True, slots=True)
class ExistingTurn:
    """An ``Idempotency-Key`` retry: the turn its first request started, to be followed
    (docs/api.md#idempotency). Nothing was written for the retry."""

    message_id: uuid.UUID
    conversation_id: uuid.UUID
    user_message_id: uuid.UUID | None


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
    conversation = Conversation(user=user, context=context, title=title, title_pending=True)
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
    #: Other (provider, model) pairs that may serve the turn's calls (failover routes,
    #: the system route): the cost reservation takes the dearest (docs/api.md#routing).
    also_priced: tuple[tuple[str, str], ...] = ()
    #: Regenerate: the reply to replace (its user message is answered again).
    regenerate: uuid.UUID | None = None
    #: Edit: the user message to replace (it and everything after it are superseded).
    edit: uuid.UUID | None = None
    #: ``(key, request hash)`` of an ``Idempotency-Key`` header.
    idempotency: tuple[str, str] | None = None


def _existing_turn(
    *, user: AbstractBaseUser, key: str, request_hash: str, now: datetime
) -> ExistingTurn | None:
    """The turn an earlier request with this key started (under the caller's quota lock,
    so one user's requests see each other's keys). 422 ``idempotency_key_reused`` for the
    same key with another request; an expired key is deleted and free again."""
    found = (
        IdempotencyKey.objects.filter(user=user, key=key)
        .select_related("message")
        .only("id", "request_hash", "created_at", "message")
        .first()
    )
    if found is None:
        return None
    ttl = timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS)
    if found.created_at < now - ttl or found.message is None:
        found.delete()
        return None
    if found.request_hash != request_hash:
        raise ServiceError(
            "This Idempotency-Key was used with a different request.",
            code="idempotency_key_reused",
        )
    message = found.message
    return ExistingTurn(
        message_id=message.pk,
        conversation_id=message.conversation_id,
        user_message_id=message.reply_to_id,
    )


def _steer_target(
    *, user: AbstractBaseUser, request: TurnRequest
) -> tuple[Context, Conversation, Message]:
    """The message a regenerate or an edit replaces, checked, with its conversation and
    context (docs/api.md#regenerate-and-edit). 404 for another user's message."""
    target_id = request.regenerate or request.edit
    found = (
        Message.objects.filter(pk=target_id, user=user)
        .select_related("conversation", "conversation__context")
        .first()
    )
    if found is None:
        raise NotFound("Message not found.")
    if request.regenerate and found.role != Message.Role.ASSISTANT:
        raise InvalidRequest({"message_id": ["Only assistant replies can be regenerated."]})
    if request.edit and found.role != Message.Role.USER:
        raise InvalidRequest({"message_id": ["Only user messages can be edited."]})
    if found.superseded:
        raise Conflict("This message was replaced by a newer one.", code="message_superseded")
    conversation = found.conversation
    return conversation.context, conversation, found


def _supersede(conversation: Conversation, target: Message, *, edit: bool) -> Message | None:
    """Mark what a regenerate or an edit replaces ``superseded`` (kept, never shown to the
    model again). Regenerate: the reply, which must be the conversation's last message
    (409 ``not_latest_reply``); returns the user message it answered, answered again.
    Edit: the user message and everything after it; returns ``None``."""
    later = Message.objects.filter(
        conversation=conversation, superseded=False, created_at__gt=target.created_at
    )
    if not edit:
        if later.exists():
            raise Conflict(
                "Only the conversation's last reply can be regenerated.", code="not_latest_reply"
            )
        Message.objects.filter(pk=target.pk).update(superseded=True)
        question = (
            Message.objects.filter(pk=target.reply_to_id).first() if target.reply_to_id else None
        ) or (
            Message.objects.filter(
                conversation=conversation,
                role=Message.Role.USER,
                superseded=False,
                created_at__lt=target.created_at,
            )
            .order_by("-created_at", "-id")
            .first()
        )
        if question is None:
            raise InvalidRequest({"message_id": ["This reply answers no user message."]})
        return question
    later.update(superseded=True)
    Message.objects.filter(pk=target.pk).update(superseded=True)
    return None


def turn_reservation(
    system: str,
    history: list[ChatMessage],
    *,
    context_name: str,
    provider: str,
    model: str,
    at: datetime,
    also_priced: Sequence[tuple[str, str]] = (),
    flows: Sequence[ListedFlow] = (),
    title: bool = False,
) -> tuple[int, Decimal]:
    """Tokens and cost a turn reserves before any call is made (docs/api.md#quota).

    Tokens: the prompt the model will see plus the longest reply and, when flow extraction
    is on, the most the extraction call after the reply may spend, the context's listed
    ``flows`` included (:func:`extraction_reservation_tokens`), and with ``title`` the title
    ask inside that call and a separate title call's most
    (:func:`ai.titles.title_reservation_tokens`), which follows when the extraction gave
    no title. Cost, the worst case at the model's price valid at ``at`` (0 for an unpriced
    model): the prompt at the dearer of the input and cache-write rates, and the rest at
    the dearest rate of all (the output rate for known models), so the real cost never
    passes it while the provider keeps to the estimate. With ``also_priced`` (the failover
    routes and the system route), each rate is the dearest of all those models'
    (docs/api.md#routing): a failover never passes the hold.
    """
    prompt = model_prompt_tokens(system, history)
    tokens = prompt + settings.AI_MAX_OUTPUT_TOKENS
    if settings.FLOWS_EXTRACTION_ENABLED:
        tokens += extraction_reservation_tokens(
            messages=history,
            context_name=context_name,
            today=at.date(),
            reply_max_tokens=settings.AI_MAX_OUTPUT_TOKENS,
            flows=flows,
            title=title,  # the first extraction also asks for the title
        )
    if title:  # and a title call of its own may follow when it gives none
        tokens += title_reservation_tokens(history, reply_max_tokens=settings.AI_MAX_OUTPUT_TOKENS)
    prices = [
        price
        for name, route_model in dict.fromkeys([(provider, model), *also_priced])
        if (price := price_for(name, route_model, at)) is not None
    ]
    if not prices:
        return tokens, Decimal(0).quantize(COST_QUANTUM)
    prompt_rate = max(max(p.input_per_mtok, p.cache_write_per_mtok) for p in prices)
    rest_rate = max(prompt_rate, *(p.output_per_mtok for p in prices))
    cost = (prompt * prompt_rate + (tokens - prompt) * rest_rate) / MILLION
    # Rounded up to the stored precision: the hold never falls short of the worst case.
    return tokens, cost.quantize(COST_QUANTUM, rounding=ROUND_CEILING)


def turn_prepare(*, user: AbstractBaseUser, request: TurnRequest) -> PreparedTurn | ExistingTurn:
    """Check and start a turn in one transaction (docs/api.md#checks-before-the-stream).

    Ownership (404), a reply already streaming into the conversation (409
    ``conversation_busy``), too many open streams (429 ``too_many_streams``, past
    ``CHAT_MAX_CONCURRENT_STREAMS``) and quota (429 ``quota_exceeded``) are checked; then
    the user message is stored, the assistant message is stored as ``streaming`` and quota
    is reserved for the prompt the model will see (the context's system prompt, built here
    once, and the last ``CHAT_HISTORY_LIMIT`` messages), all or nothing. The quota row is
    locked first, so one user's concurrent turns are serialized here. With flow extraction
    on, the context's flows the extraction will see are read too (one statement, through
    the ORM). Nine to twelve statements, BEGIN and COMMIT included, the others in plain SQL
    (:mod:`core.sql`: the ORM's query building cost more CPU than the statements
    themselves); with
    :func:`turn_finish`, most of a turn's fixed cost.

    A regenerate or an edit (``request.regenerate`` / ``request.edit``) first marks what it
    replaces ``superseded`` (docs/api.md#regenerate-and-edit). With an ``Idempotency-Key``
    a retry returns the first request's :class:`ExistingTurn` instead, and the key is
    stored with a new turn (docs/api.md#idempotency).
    """
    content = request.content
    history_limit = settings.CHAT_HISTORY_LIMIT
    max_streams = settings.CHAT_MAX_CONCURRENT_STREAMS
    with transaction.atomic():
        quota = quota_lock(user=user)
        now = timezone.now()
        if request.idempotency is not None:
            existing = _existing_turn(
                user=user, key=request.idempotency[0], request_hash=request.idempotency[1], now=now
            )
            if existing is not None:
                return existing
        target: Message | None = None
        if request.regenerate or request.edit:
            context, conversation, target = _steer_target(user=user, request=request)
            created = False
        else:
            context, conversation, created = _resolve_conversation(
                user=user,
                context_id=request.context_id,
                conversation_id=request.conversation_id,
                first_text=content,
            )
        streaming, here = sql.count(
            Message,
            {"user": user.pk, "status": Message.Status.STREAMING},
            among=("conversation", conversation.id),
        )
        if here:
            raise Conflict(
                "A reply is already streaming into this conversation.", code="conversation_busy"
            )
        if streaming >= max_streams:
            raise ServiceError(
                f"You have {max_streams} replies streaming; wait for one to finish.",
                code="too_many_streams",
                status_code=429,
                headers={"Retry-After": "5"},
            )
        question = (
            _supersede(conversation, target, edit=bool(request.edit))
            if target is not None
            else None
        )
        if request.client_history is not None:
            history = request.client_history
        elif question is not None:  # regenerate: the stored history ends with the question
            history = [
                ChatMessage(m.role, m.content)  # type: ignore[arg-type]
                for m in history_for_model(conversation=conversation, limit=history_limit)
            ]
        else:  # the stored history, then the message being sent (it is the newest)
            earlier = history_for_model(conversation=conversation, limit=max(history_limit - 1, 0))
            history = [
                *(ChatMessage(m.role, m.content) for m in earlier),  # type: ignore[arg-type]
                ChatMessage(Message.Role.USER, content),
            ][-history_limit:]
        user_message = question or Message(
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
            reply_to=user_message,
            created_at=now + timedelta(microseconds=1),
        )
        # One INSERT (a regenerate answers the stored question again: only the reply).
        sql.insert(
            [assistant_message] if question is not None else [user_message, assistant_message]
        )
        system = system_prompt_for(context_name=context.name, instructions=context.instructions)
        flows = (
            flows_listed_for_extraction(context_id=context.id, now=now)
            if settings.FLOWS_EXTRACTION_ENABLED
            else []
        )
        needs_title = (
            conversation.title_pending
            and not conversation.title_set_by_user
            and settings.CHAT_TITLES_ENABLED
        )
        tokens, cost = turn_reservation(
            system,
            history,
            context_name=context.name,
            provider=request.provider,
            model=request.model,
            at=now,
            also_priced=request.also_priced,
            flows=flows,
            title=needs_title,
        )
        reservation = quota_reserve_locked(
            quota=quota,
            tokens=tokens,
            cost=cost,
            message_id=assistant_message.id,
            now=now,
        )
        if not created:  # a new conversation's updated_at is already now
            sql.update(Conversation, {"updated_at": now}, {"id": conversation.pk})
        if request.idempotency is not None:
            _remember_key(user, request.idempotency, assistant_message, now)
        return PreparedTurn(
            user_id=user.pk,
            context_id=context.id,
            context_name=context.name,
            system=system,
            conversation_id=conversation.id,
            user_message=user_message,
            assistant_message=assistant_message,
            reservation_id=reservation.pk,
            reserved=(reservation.tokens, reservation.period_started_at, reservation.cost),
            history=history,
            quota=quota_as_dict(quota),
            flows=flows,
            needs_title=needs_title,
        )


def _remember_key(
    user: AbstractBaseUser, idempotency: tuple[str, str], message: Message, now: datetime
) -> None:
    """Store the turn's ``Idempotency-Key`` in its first transaction. The unique
    constraint is the last word: a request that raced past the lookup (another process,
    another connection) fails here and its whole turn rolls back (409, retryable)."""
    try:
        with transaction.atomic():
            IdempotencyKey.objects.create(
                user=user,
                key=idempotency[0],
                request_hash=idempotency[1],
                message=message,
                created_at=now,
            )
    except IntegrityError as exc:
        raise Conflict(
            "A request with this Idempotency-Key is being processed; retry.",
            code="conversation_busy",
        ) from exc
