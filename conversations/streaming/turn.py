"""The pipeline of one chat turn, after its pre-stream checks (docs/api.md#the-streaming-turn).

:func:`prepare_turn` validates a body and stores the turn's start (before any byte is
sent). :func:`start_generation` registers a :class:`~.live.Generation` and runs it as its
own task: it calls the provider, appends deltas in memory (no per-token I/O or thread
hop), stores the outcome, extracts flows, settles the quota and adds the trailing events.
The checkpoints that save the text meanwhile are :mod:`.background`'s; the responses only
follow the generation (:func:`~.live.iter_events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from typing import Any, Literal

from django.conf import settings
from django.utils import timezone

from ai.errors import AIError, AINotConfigured, AIStreamIncomplete
from ai.prompts import model_prompt_tokens
from ai.providers import provider_for
from ai.providers.base import (
    ChatMessage,
    Provider,
    StreamEnd,
    Usage,
    estimate_tokens,
)
from ai.quota.services import quota_release
from ai.routing import (
    Route,
    RoutedReply,
    TurnRoutes,
    plan_routes,
    system_provider,
    system_route,
)
from ai.titles import title_generate
from conversations.models import Message
from conversations.serializers import (
    ChatTurnInputSerializer,
    EditInputSerializer,
    RegenerateInputSerializer,
)
from conversations.streaming.admission import extraction_bounded
from conversations.streaming.events import TYPING_STOP, failover_data, trailing_events
from conversations.streaming.live import WORKER_ID, Generation, TurnResult, registry
from conversations.turn_finish import ReplyOutcome, TitleCall, turn_finish
from conversations.turn_start import ExistingTurn, PreparedTurn, TurnRequest, turn_prepare
from core import metrics
from core.db import db_run_urgent
from core.errors import InvalidRequest, ServiceError
from flows.extraction import ExtractedFlows, flows_extract
from flows.serializers import flow_to_dict, flow_update_to_dict

logger = logging.getLogger("conversations.turn")


def metadata_for(turn: PreparedTurn, provider: Provider) -> dict[str, Any]:
    """The ``metadata`` event's data."""
    message_id = turn.assistant_message.id
    return {
        "conversation_id": str(turn.conversation_id),
        "context_id": str(turn.context_id),
        "user_message_id": str(turn.user_message.id),
        "message_id": str(message_id),
        "provider": provider.name,
        "model": provider.model,
        "quota": turn.quota,
        "resume_url": f"/api/v1/messages/{message_id}/stream",
    }


#: What a turn does: a new message, or a regenerate / an edit of a stored one.
Steer = tuple[Literal["regenerate", "edit"], uuid.UUID]
IDEMPOTENCY_KEY_MAX = 255


def idempotency_of(
    key: str | None, *, payload: dict[str, Any], steer: Steer | None
) -> tuple[str, str] | None:
    """``(key, request hash)`` of an ``Idempotency-Key`` (docs/api.md#idempotency), or
    ``None`` without one; 400 naming ``Idempotency-Key`` for an empty, too long or
    non-printable key. The hash covers what the request asks (the route and the body), so
    the same key with another request is told apart (422)."""
    if key is None:
        return None
    if not key or len(key) > IDEMPOTENCY_KEY_MAX or not key.isprintable() or not key.isascii():
        raise InvalidRequest(
            {"Idempotency-Key": [f"Use 1 to {IDEMPOTENCY_KEY_MAX} printable ASCII characters."]}
        )
    what = {"steer": [steer[0], str(steer[1])] if steer else None, "body": payload}
    canonical = json.dumps(what, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return key, hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def prepare_turn(
    *,
    user: Any,
    payload: dict[str, Any],
    steer: Steer | None = None,
    idempotency_key: str | None = None,
) -> tuple[PreparedTurn | ExistingTurn, Provider]:
    """Validate a chat body (either shape) and start the turn's records.

    Sync, for ``db_run``: raises :class:`ServiceError` (400 naming the fields, 404, 409,
    422, 429, 503) before anything streams. Shared by the SSE view and the WebSocket
    consumer. ``steer`` makes the turn a regenerate (the body may be empty) or an edit
    (the body is ``{"content"}``) of a stored message (docs/api.md#regenerate-and-edit).
    With ``idempotency_key``, a retry of a request already made returns its
    :class:`ExistingTurn` to follow instead.
    """
    idempotency = idempotency_of(idempotency_key, payload=payload, steer=steer)
    serializer = (
        ChatTurnInputSerializer(data=payload)
        if steer is None
        else EditInputSerializer(data=payload)
        if steer[0] == "edit"
        else RegenerateInputSerializer(data=payload)
    )
    if not serializer.is_valid():
        raise InvalidRequest(serializer.errors)
    data = serializer.validated_data
    routes = plan_routes(data.get("model"))
    first = routes.first
    provider = provider_for(first.provider, first.model)  # not configured: 503 now
    system = system_route()
    also_priced = tuple((route.provider, route.model) for route in [*routes.routes[1:], system])
    if steer is None:
        messages = data.get("messages")
        request = TurnRequest(
            context_id=data.get("context_id"),
            conversation_id=data.get("conversation_id"),
            content=data["message"] if messages is None else messages[-1]["content"],
            client_history=(
                None
                if messages is None
                else [ChatMessage(m["role"], m["content"]) for m in messages]
            ),
            provider=provider.name,
            model=provider.model,
            worker=WORKER_ID,
            also_priced=also_priced,
            idempotency=idempotency,
        )
    else:
        request = TurnRequest(
            context_id=None,
            conversation_id=None,
            content=data.get("content", ""),
            client_history=None,
            provider=provider.name,
            model=provider.model,
            worker=WORKER_ID,
            also_priced=also_priced,
            regenerate=steer[1] if steer[0] == "regenerate" else None,
            edit=steer[1] if steer[0] == "edit" else None,
            idempotency=idempotency,
        )
    turn = turn_prepare(user=user, request=request)
    if isinstance(turn, ExistingTurn):
        logger.info(
            "turn.idempotent_retry",
            extra={"user_id": user.pk, "message_id": str(turn.message_id)},
        )
        return turn, provider
    turn.routes = routes
    logger.info(
        "turn.start",
        extra={
            "user_id": turn.user_id,
            "context_id": str(turn.context_id),
            "conversation_id": str(turn.conversation_id),
            "message_id": str(turn.assistant_message.id),
            "history_messages": len(turn.history),
            "provider": provider.name,
            "steer": steer[0] if steer else "",
        },
    )
    return turn, provider


def start_generation(turn: PreparedTurn, provider: Provider) -> Generation:
    """Register the turn's generation and start it as a task of its own."""
    generation = Generation(
        message_id=turn.assistant_message.id,
        user_id=turn.user_id,
        metadata=metadata_for(turn, provider),
    )
    registry.add(generation)
    metrics.OPEN_STREAMS.inc()
    generation.task = asyncio.create_task(_run(generation, turn, provider))
    return generation


async def _read(generation: Generation, stream: Any) -> StreamEnd:
    """Relay the provider's deltas into the generation (the hot loop); a failover on the
    way is :class:`~ai.routing.RoutedReply`'s."""
    end: StreamEnd | None = None
    append = generation.append
    try:
        async for item in stream:
            if item.__class__ is str:
                append(item)
            else:
                end = item
    finally:
        await stream.aclose()
    if end is None:  # a provider must end with StreamEnd; never report a cut as done
        raise AIStreamIncomplete()
    return end


def _usage_for(turn: PreparedTurn, text: str, reported: Usage | None) -> Usage:
    if reported is not None:
        return reported
    return Usage(
        input_tokens=model_prompt_tokens(turn.system, turn.history),
        output_tokens=estimate_tokens(text),
        estimated=True,
    )


async def _generate(
    generation: Generation, turn: PreparedTurn, provider: Provider, log: dict
) -> ReplyOutcome:
    """Relay the reply of the first route that answers into ``generation``
    (docs/api.md#routing); say how it ended (never raises, except when the process itself
    cancels the task). ``outcome.provider`` / ``model`` name the route that served (or
    failed last), ``outcome.failed_attempts`` the routes that failed over."""

    def failover(source: Route, target: Route, code: str) -> None:
        generation.add_failover(failover_data(source, target, code))

    routed = RoutedReply(
        turn.routes or TurnRoutes([Route(provider.name, provider.model)]), on_failover=failover
    )
    stream = routed.stream(
        messages=turn.history, system=turn.system, max_output_tokens=settings.AI_MAX_OUTPUT_TOKENS
    )
    reader = generation.reader = asyncio.create_task(_read(generation, stream))
    if generation.cancel_requested:
        reader.cancel()
    outcome = ReplyOutcome(
        status=Message.Status.COMPLETE,
        finish_reason="stop",
        content="",
        usage=Usage(),
        error_retryable=True,
    )
    try:
        await _wait_reader(reader, outcome, log)
    finally:
        outcome.provider, outcome.model = routed.route.provider, routed.route.model
        outcome.failed_attempts = [
            (attempt.route.provider, attempt.route.model, attempt.code, attempt.usage)
            for attempt in routed.failed
        ]
    return outcome


async def _wait_reader(reader: asyncio.Task[StreamEnd], outcome: ReplyOutcome, log: dict) -> None:
    """Wait for the reader (up to ``CHAT_STREAM_TIMEOUT_SECONDS``); set ``outcome``."""
    failed = Message.Status.FAILED
    done, _ = await asyncio.wait({reader}, timeout=settings.CHAT_STREAM_TIMEOUT_SECONDS)
    if not done:
        reader.cancel()
        with contextlib.suppress(BaseException):
            await reader
        outcome.status, outcome.finish_reason, outcome.error_code = (
            failed,
            "timeout",
            "stream_timeout",
        )
    elif reader.cancelled():
        outcome.status, outcome.finish_reason = Message.Status.CANCELLED, "cancelled"
    elif (exc := reader.exception()) is not None:
        outcome.status, outcome.finish_reason = failed, "error"
        if isinstance(exc, ServiceError):
            outcome.error_code, outcome.error_retryable = exc.code, exc.retryable
            logger.warning("turn.provider_error", extra={**log, "code": exc.code})
        else:
            outcome.error_code = "internal_error"
            logger.error("turn.reader_crashed", extra=log, exc_info=exc)
    else:
        end = reader.result()
        outcome.finish_reason = end.finish_reason
        if end.usage is not None:
            outcome.usage = end.usage


async def _store(
    turn: PreparedTurn, provider: Provider, outcome: ReplyOutcome, log: dict
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Extract flows (naming a new conversation in the same call), then store the reply,
    the new flows, the changes to the context's flows and the title and settle the quota in
    one transaction; the stored flows, the quota afterwards and the changed flows
    (``flows_extracted``'s ``updated``). ``outcome`` ends as stored (a reply the sweeper
    interrupted meanwhile stays ``interrupted``: see ``turn_finish``).

    A failure here turns the outcome into ``failed`` / ``internal_error`` and releases the
    reservation at once (a hold nothing would ever close if the reply is gone); the reply
    left ``streaming`` is marked ``interrupted`` by the stale-reply sweeper.
    """
    try:
        extractor = _system_provider(provider)
        outcome.extraction_route = (extractor.name, extractor.model)
        titled = _title_due(turn, outcome)
        extracted, extraction_usage, extraction_error = await extraction_bounded(
            lambda: _extract(turn, extractor, outcome.content, outcome.status, title=titled),
            message_id=turn.assistant_message.id,
            skipped=(ExtractedFlows(), None, ""),  # saturated (docs/api.md#load-shedding)
        )
        # The title came with the extraction, or (extraction off, failed, skipped, or no
        # usable title in its answer) from a title call of its own.
        title_call: TitleCall | None = None
        if extracted.title:
            title_call = TitleCall(title=extracted.title)
        elif titled:
            title_call = await _title_bounded(turn, extractor, outcome)
        applied, quota = await db_run_urgent(
            turn_finish,
            turn=turn,
            outcome=outcome,
            drafts=extracted.drafts,
            updates=extracted.updates,
            extraction_usage=extraction_usage,
            extraction_error=extraction_error,
            title_call=title_call,
        )
    except Exception as exc:
        logger.error("turn.store_failed", extra=log, exc_info=exc)
        outcome.status, outcome.error_code = Message.Status.FAILED, "internal_error"
        outcome.error_retryable = True
        try:
            await db_run_urgent(quota_release, reservation_id=turn.reservation_id)
        except Exception:
            logger.warning("turn.release_failed", extra=log)  # the sweeper's safety net
        return [], turn.quota, []
    updated = [flow_update_to_dict(flow, changes) for flow, changes in applied.updated]
    return [flow_to_dict(flow) for flow in applied.created], quota, updated


def _system_provider(fallback: Provider) -> Provider:
    """The provider of ``AI_SYSTEM_ROUTE`` (flow extraction), else ``fallback``."""
    try:
        return system_provider()
    except AINotConfigured:
        logger.warning("turn.system_route_not_configured")
        return fallback


async def _run(generation: Generation, turn: PreparedTurn, provider: Provider) -> None:
    """One generation from provider call to ``done`` (or ``error``), never raising."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    message_id = str(turn.assistant_message.id)
    log = {"message_id": message_id, "conversation_id": str(turn.conversation_id)}
    try:
        outcome = await _generate(generation, turn, provider, log)
    except asyncio.CancelledError:
        # The process is shutting down: keep the text; the sweeper marks it interrupted.
        registry.discard(generation)
        metrics.OPEN_STREAMS.dec()
        raise

    outcome.content = generation.text()
    generation.add_trailing(*TYPING_STOP)
    reported = outcome.usage if outcome.usage.total else None
    outcome.usage = _usage_for(turn, outcome.content, reported)
    outcome.duration_ms = int((loop.time() - started) * 1000)
    flows, quota, updated = await _store(turn, provider, outcome, log)

    for event in trailing_events(
        message_id=message_id,
        status=outcome.status,
        finish_reason=outcome.finish_reason,
        usage=outcome.usage,
        error_code=outcome.error_code,
        error_retryable=outcome.error_retryable,
        flows=flows,
        quota=quota,
        provider=turn.assistant_message.provider,
        model=turn.assistant_message.model,
        updated=updated,
        title=outcome.title,
        conversation_id=str(turn.conversation_id),
    ):
        generation.add_trailing(*event)
    generation.result = TurnResult(outcome=outcome, flows=flows, quota=quota, updated=updated)
    registry.discard(generation)
    generation.close()

    first_token_at = generation.first_token_at
    ttft = (first_token_at - started) if first_token_at else None
    metrics.OPEN_STREAMS.dec()
    metrics.record_turn(
        outcome=outcome.status,
        error_code=outcome.error_code,
        duration=loop.time() - started,
        first_chunk=ttft,
        chunks=len(generation.parts),
        input_tokens=outcome.usage.input_tokens,
        output_tokens=outcome.usage.output_tokens,
    )
    metrics.ROUTE_TURNS.labels(
        outcome.provider or provider.name, outcome.model or provider.model, outcome.status
    ).inc()
    logger.info(
        "turn.end",
        extra={
            **log,
            "status": outcome.status,
            "finish_reason": outcome.finish_reason,
            "error_code": outcome.error_code,
            "reply_chars": len(outcome.content),
            "input_tokens": outcome.usage.input_tokens,
            "output_tokens": outcome.usage.output_tokens,
            "usage_estimated": outcome.usage.estimated,
            "flows": len(flows),
            "flows_updated": len(updated),
            "ttft_ms": int(ttft * 1000) if ttft is not None else None,
            "duration_ms": outcome.duration_ms,
            "provider": outcome.provider,
            "model": outcome.model,
            "failovers": len(outcome.failed_attempts),
            "worker": WORKER_ID,
        },
    )


async def _extract(
    turn: PreparedTurn, provider: Provider, text: str, status: str, *, title: bool = False
) -> tuple[ExtractedFlows, Usage | None, str]:
    """New flows and changes to the context's listed flows, from the conversation (with
    ``title``, the conversation's title too); a failure is a warning, never the turn's
    error."""
    if status != Message.Status.COMPLETE or not settings.FLOWS_EXTRACTION_ENABLED:
        return ExtractedFlows(), None, ""
    transcript = [*turn.history, ChatMessage("assistant", text)]
    started = time.monotonic()
    try:
        # asyncio.timeout, not wait_for: no task of its own (Python 3.11's wait_for makes
        # one), so no extra turns of a saturated event loop before ``done``.
        async with asyncio.timeout(settings.AI_TIMEOUT_SECONDS):
            extracted, usage = await flows_extract(
                provider,
                messages=transcript,
                context_name=turn.context_name,
                today=timezone.now().date(),
                flows=turn.flows,
                title=title,
            )
    except Exception as exc:
        code = exc.code if isinstance(exc, AIError) else "internal_error"
        logger.warning(
            "turn.extraction_failed",
            extra={"message_id": str(turn.assistant_message.id), "code": code},
        )
        return ExtractedFlows(), None, code
    logger.info(
        "turn.flows_extracted",
        extra={
            "message_id": str(turn.assistant_message.id),
            "drafts": len(extracted.drafts),
            "updates": len(extracted.updates),
            "listed_flows": len(turn.flows),
            "title_chars": len(extracted.title),
            "duration_ms": int((time.monotonic() - started) * 1000),
        },
    )
    return extracted, usage, ""


def _title_due(turn: PreparedTurn, outcome: ReplyOutcome) -> bool:
    """Whether the turn names its conversation: its first complete reply (or a later one
    while a title is still due; docs/api.md#titles)."""
    return turn.needs_title and outcome.status == Message.Status.COMPLETE


async def _title_bounded(
    turn: PreparedTurn, provider: Provider, outcome: ReplyOutcome
) -> TitleCall | None:
    """A title call of its own (:func:`_title`), bounded with the extractions: ``None``
    (the title stays due for the next turn) when the process is saturated
    (docs/api.md#titles)."""
    return await extraction_bounded(
        lambda: _title(turn, provider, outcome.content),
        message_id=turn.assistant_message.id,
        skipped=None,
        purpose="title",
    )


async def _title(turn: PreparedTurn, provider: Provider, text: str) -> TitleCall:
    """A title for the conversation from its first exchange and the complete reply
    ``text`` (docs/api.md#titles); a failure is a warning, never the turn's error."""
    exchange = [ChatMessage("user", turn.user_message.content), ChatMessage("assistant", text)]
    started = time.monotonic()
    try:
        async with asyncio.timeout(settings.AI_TIMEOUT_SECONDS):  # as in _extract
            title, usage = await title_generate(provider, messages=exchange)
    except Exception as exc:
        code = exc.code if isinstance(exc, AIError) else "internal_error"
        logger.warning(
            "turn.title_failed",
            extra={"message_id": str(turn.assistant_message.id), "code": code},
        )
        return TitleCall(error=code)
    logger.info(
        "turn.titled",
        extra={
            "message_id": str(turn.assistant_message.id),
            "title_chars": len(title),
            "duration_ms": int((time.monotonic() - started) * 1000),
        },
    )
    return TitleCall(title=title, usage=usage)
