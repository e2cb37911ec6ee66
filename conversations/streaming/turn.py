"""The pipeline of one chat turn, after its pre-stream checks (contract 3.1 and 3.2).

``start_generation`` registers a :class:`Generation` and runs it as its own task: it calls
the provider, appends deltas in memory (no per-token I/O or thread hop), checkpoints the
text about once a second, stores the outcome, extracts flows, settles the quota and adds
the trailing events. The HTTP response only follows it (``generations.follow``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from django.conf import settings
from django.utils import timezone

from ai.errors import AIError
from ai.prompts import system_prompt_for
from ai.providers import get_provider
from ai.providers.base import (
    ChatMessage,
    Provider,
    StreamEnd,
    Usage,
    estimate_messages_tokens,
    estimate_tokens,
)
from ai.quota.services import quota_release
from chatproject import metrics
from chatproject.db import db_run
from chatproject.errors import InvalidRequest, ServiceError
from conversations.models import Message
from conversations.serializers import ChatTurnInputSerializer, message_to_dict
from conversations.services import (
    PreparedTurn,
    ReplyOutcome,
    replies_checkpoint,
    turn_finish,
    turn_prepare,
)
from conversations.streaming.generations import WORKER_ID, Generation, registry
from flows.extraction import flows_extract
from flows.serializers import flow_to_dict

logger = logging.getLogger("conversations.turn")

#: Safe texts and retry hints of the codes an ``error`` event can carry.
ERROR_MESSAGES: dict[str, tuple[str, bool]] = {
    "ai_rate_limited": ("The AI provider is busy. Please try again shortly.", True),
    "ai_timeout": ("The AI provider took too long to answer.", True),
    "ai_unavailable": ("The AI provider is unavailable right now.", True),
    "ai_error": ("The AI provider could not finish this reply.", True),
    "stream_timeout": ("The reply took too long and was stopped.", True),
    "internal_error": ("Something went wrong on our side.", True),
}


def error_event_data(code: str, retryable: bool | None = None) -> dict[str, Any]:
    """The ``error`` event's data for a stable code (never provider internals)."""
    message, default_retryable = ERROR_MESSAGES.get(code, ERROR_MESSAGES["internal_error"])
    if code not in ERROR_MESSAGES:
        code = "internal_error"
    return {
        "code": code,
        "message": message,
        "retryable": default_retryable if retryable is None else retryable,
    }


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


def trailing_events(
    *,
    message_id: str,
    status: str,
    finish_reason: str,
    usage: Usage,
    error_code: str,
    error_retryable: bool,
    flows: list[dict[str, Any]],
    quota: dict[str, Any],
) -> list[tuple[str, dict[str, Any]]]:
    """The events after the text, by how the reply ended (live and replayed alike).

    complete: ``flows_extracted`` then ``done``; cancelled: ``done``; otherwise ``error``.
    The ``typing`` stop that precedes them is sent separately, as soon as the text ends.
    """
    usage_data = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if status == Message.Status.COMPLETE:
        return [
            ("flows_extracted", {"flows": flows}),
            (
                "done",
                {
                    "message_id": message_id,
                    "finish_reason": finish_reason or "stop",
                    "usage": usage_data,
                    "quota": quota,
                },
            ),
        ]
    if status == Message.Status.CANCELLED:
        return [
            (
                "done",
                {
                    "message_id": message_id,
                    "finish_reason": "cancelled",
                    "usage": usage_data,
                    "quota": quota,
                },
            )
        ]
    return [("error", error_event_data(error_code or "internal_error", error_retryable))]


class StreamTimeout(ServiceError):
    code = "stream_timeout"
    status_code = 504
    default_detail = ERROR_MESSAGES["stream_timeout"][0]
    retryable = True


def prepare_turn(*, user: Any, payload: dict[str, Any]) -> tuple[PreparedTurn, Provider]:
    """Validate a chat body (either shape of contract 3) and start the turn's records.

    Sync, for ``db_run``: raises :class:`ServiceError` (400 naming the fields, 404, 409,
    429, 503) before anything streams. Shared by the SSE view and the WebSocket consumer.
    """
    serializer = ChatTurnInputSerializer(data=payload)
    if not serializer.is_valid():
        raise InvalidRequest(serializer.errors)
    data = serializer.validated_data
    provider = get_provider()
    messages = data.get("messages")
    content = data["message"] if messages is None else messages[-1]["content"]
    turn = turn_prepare(
        user=user,
        context_id=data.get("context_id"),
        conversation_id=data.get("conversation_id"),
        content=content,
        client_history=[dict(m) for m in messages] if messages is not None else None,
        provider=provider.name,
        model=provider.model,
        worker=WORKER_ID,
        history_limit=settings.CHAT_HISTORY_LIMIT,
        max_streams=settings.CHAT_MAX_CONCURRENT_STREAMS,
        reserve_tokens=lambda history, system: (
            estimate_messages_tokens(history, system) + settings.AI_MAX_OUTPUT_TOKENS
        ),
        system_prompt=lambda context: system_prompt_for(
            context_name=context.name, instructions=context.instructions
        ),
    )
    logger.info(
        "turn.start",
        extra={
            "user_id": turn.user_id,
            "context_id": str(turn.context_id),
            "conversation_id": str(turn.conversation_id),
            "message_id": str(turn.assistant_message.id),
            "history_messages": len(turn.history),
            "provider": provider.name,
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
    ensure_checkpointer()
    metrics.OPEN_STREAMS.inc()
    generation.task = asyncio.create_task(_run(generation, turn, provider))
    return generation


async def _read(generation: Generation, stream: Any) -> StreamEnd:
    """Relay the provider's deltas into the generation (the hot loop)."""
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
        raise AIError("The AI provider's reply ended without an end marker.", retryable=True)
    return end


_checkpointer: asyncio.Task[None] | None = None


async def _checkpoint_forever() -> None:
    """Save the text of every running reply about once a second, all in one transaction.

    A reply whose text did not change is still touched every fifth round: its heartbeat
    (see ``recovery``). One write per second for the whole process, not one per reply or
    per token.
    """
    interval = settings.CHAT_CHECKPOINT_SECONDS
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        now = loop.time()
        due = [
            g
            for g in registry.all()
            if not g.closed
            and (g.length != g.saved_length or now - g.saved_at >= 5 * interval - 0.001)
        ]
        if not due:
            continue
        texts = {g.message_id: g.text() for g in due}
        try:
            stopped = await db_run(replies_checkpoint, texts=texts)
        except Exception:
            logger.warning("turn.checkpoint_failed", extra={"replies": len(texts)})
            continue
        for generation in due:
            generation.saved_length = len(texts[generation.message_id])
            generation.saved_at = now
            if generation.message_id in stopped:  # cancelled from another process, or gone
                generation.request_cancel()


def ensure_checkpointer() -> None:
    """Start this process's checkpoint loop once."""
    global _checkpointer
    if _checkpointer is None or _checkpointer.done():
        _checkpointer = asyncio.get_running_loop().create_task(_checkpoint_forever())


def _usage_for(turn: PreparedTurn, system: str, text: str, reported: Usage | None) -> Usage:
    if reported is not None:
        return reported
    return Usage(
        input_tokens=estimate_messages_tokens(turn.history, system),
        output_tokens=estimate_tokens(text),
        estimated=True,
    )


async def _generate(
    generation: Generation, turn: PreparedTurn, provider: Provider, system: str, log: dict
) -> ReplyOutcome:
    """Relay the provider's reply into ``generation``; say how it ended (never raises,
    except when the process itself cancels the task)."""
    stream = provider.stream_reply(
        messages=turn.history, system=system, max_output_tokens=settings.AI_MAX_OUTPUT_TOKENS
    )
    reader = generation.reader = asyncio.create_task(_read(generation, stream))
    if generation.cancel_requested:
        reader.cancel()
    failed = Message.Status.FAILED
    outcome = ReplyOutcome(
        status=Message.Status.COMPLETE,
        finish_reason="stop",
        content="",
        usage=Usage(),
        error_retryable=True,
    )
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
    return outcome


async def _store(
    turn: PreparedTurn, provider: Provider, outcome: ReplyOutcome, log: dict
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Extract flows, then store the reply and the flows and settle the quota in one
    transaction; the stored flows and the quota afterwards. ``outcome`` ends as stored (a
    reply the sweeper interrupted meanwhile stays ``interrupted``: see ``turn_finish``).

    A failure here turns the outcome into ``failed`` / ``internal_error`` and releases the
    reservation at once (a hold nothing would ever close if the reply is gone); the reply
    left ``streaming`` is marked ``interrupted`` by the stale-reply sweeper.
    """
    try:
        drafts, extraction_usage, extraction_error = await _extract(
            turn, provider, outcome.content, outcome.status
        )
        stored, quota = await db_run(
            turn_finish,
            turn=turn,
            outcome=outcome,
            drafts=drafts,
            extraction_usage=extraction_usage,
            extraction_error=extraction_error,
        )
    except Exception as exc:
        logger.error("turn.store_failed", extra=log, exc_info=exc)
        outcome.status, outcome.error_code = Message.Status.FAILED, "internal_error"
        outcome.error_retryable = True
        try:
            await db_run(quota_release, reservation_id=turn.reservation_id)
        except Exception:
            logger.warning("turn.release_failed", extra=log)  # the sweeper's safety net
        return [], turn.quota
    return [flow_to_dict(flow) for flow in stored], quota


def _result(
    turn: PreparedTurn, outcome: ReplyOutcome, flows: list[dict[str, Any]], quota: dict
) -> dict[str, Any]:
    """The turn as the JSON (non-SSE) answer shows it."""
    usage = outcome.usage
    return {
        "status": outcome.status,
        "error_code": outcome.error_code,
        "flows": flows,
        "quota": quota,
        "message": {
            **message_to_dict(turn.assistant_message),
            "content": outcome.content,
            "status": outcome.status,
            "finish_reason": outcome.finish_reason,
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "estimated": usage.estimated,
            },
        },
    }


async def _run(generation: Generation, turn: PreparedTurn, provider: Provider) -> None:
    """One generation from provider call to ``done`` (or ``error``), never raising."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    message_id = str(turn.assistant_message.id)
    log = {"message_id": message_id, "conversation_id": str(turn.conversation_id)}
    system = system_prompt_for(
        context_name=turn.context_name, instructions=turn.context_instructions
    )
    try:
        outcome = await _generate(generation, turn, provider, system, log)
    except asyncio.CancelledError:
        # The process is shutting down: keep the text; the sweeper marks it interrupted.
        registry.discard(generation)
        metrics.OPEN_STREAMS.dec()
        raise

    outcome.content = generation.text()
    generation.add_trailing("typing", {"status": "stop"})
    reported = outcome.usage if outcome.usage.total else None
    outcome.usage = _usage_for(turn, system, outcome.content, reported)
    outcome.duration_ms = int((loop.time() - started) * 1000)
    flows, quota = await _store(turn, provider, outcome, log)

    for event in trailing_events(
        message_id=message_id,
        status=outcome.status,
        finish_reason=outcome.finish_reason,
        usage=outcome.usage,
        error_code=outcome.error_code,
        error_retryable=outcome.error_retryable,
        flows=flows,
        quota=quota,
    ):
        generation.add_trailing(*event)
    generation.result = _result(turn, outcome, flows, quota)
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
            "ttft_ms": int(ttft * 1000) if ttft is not None else None,
            "duration_ms": outcome.duration_ms,
            "worker": WORKER_ID,
        },
    )


async def _extract(
    turn: PreparedTurn, provider: Provider, text: str, status: str
) -> tuple[list[Any], Usage | None, str]:
    """Flows from the conversation; a failure is a warning, never the turn's error."""
    if status != Message.Status.COMPLETE or not settings.FLOWS_EXTRACTION_ENABLED:
        return [], None, ""
    transcript = [*turn.history, ChatMessage("assistant", text)]
    started = time.monotonic()
    try:
        drafts, usage = await asyncio.wait_for(
            flows_extract(
                provider,
                messages=transcript,
                context_name=turn.context_name,
                today=timezone.now().date(),
            ),
            timeout=settings.AI_TIMEOUT_SECONDS,
        )
    except Exception as exc:
        code = exc.code if isinstance(exc, AIError) else "internal_error"
        logger.warning(
            "turn.extraction_failed",
            extra={"message_id": str(turn.assistant_message.id), "code": code},
        )
        return [], None, code
    logger.info(
        "turn.flows_extracted",
        extra={
            "message_id": str(turn.assistant_message.id),
            "drafts": len(drafts),
            "duration_ms": int((time.monotonic() - started) * 1000),
        },
    )
    return drafts, usage, ""
