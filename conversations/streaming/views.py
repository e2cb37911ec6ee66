"""The streaming endpoints: start a turn, resume a reply, cancel a reply.

See docs/api.md#the-streaming-turn and #resume-cancel-disconnect.

Plain async Django views (DRF's views are sync): they authenticate by the one path of
every transport (:mod:`accounts.requests`), validate with DRF serializers, and answer
every problem before the first byte as JSON with ``detail`` and ``code`` (the status of
the code in :data:`core.errors.CATALOG`). The events are encoded by
:mod:`.transports.sse`. Each view makes at most one thread hop for its database work
before the stream starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.requests import request_user
from ai.providers.base import Provider
from ai.quota.selectors import quota_snapshot
from conversations import selectors
from conversations.models import Message
from conversations.serializers import message_to_dict, message_usage
from conversations.streaming.admission import turn_admission
from conversations.streaming.events import error_data, parse_last_event_id, usage_to_dict
from conversations.streaming.live import Generation, TurnResult, iter_events
from conversations.streaming.replies import reply_cancel, reply_follow
from conversations.streaming.transports.sse import event_stream_response
from conversations.streaming.turn import Steer, prepare_turn, start_generation
from conversations.turn_start import ExistingTurn, PreparedTurn
from core import metrics
from core.db import db_run
from core.errors import (
    InvalidRequest,
    PayloadTooLarge,
    ServiceError,
    database_error,
    error_kind,
)
from flows.selectors import flows_of_message
from flows.serializers import flow_to_dict

logger = logging.getLogger("conversations.turn")

T = TypeVar("T")
CANCEL_WAIT_SECONDS = 5.0


def _refuse(exc: ServiceError) -> JsonResponse:
    """A problem before the stream, as its JSON answer (429s counted as refusals)."""
    if exc.status_code == 429:
        metrics.REFUSALS.labels(exc.code).inc()
    return exc.as_response()


def _method_not_allowed(allowed: str) -> JsonResponse:
    return ServiceError(
        f"Use {allowed}.", code="method_not_allowed", headers={"Allow": allowed}
    ).as_response()


def authenticate(request: HttpRequest) -> AbstractBaseUser:
    """The caller, by the one path of every transport (:mod:`accounts.requests`)."""
    return request_user(request, transport="sse")


def _parse_body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ServiceError("The body is not valid UTF-8.", code="invalid_json") from exc
    except (ValueError, RecursionError) as exc:
        raise ServiceError("The body is not valid JSON.", code="invalid_json") from exc
    if not isinstance(data, dict):
        raise InvalidRequest({"non_field_errors": ["Expected a JSON object."]})
    return data


def _prepare(
    request: HttpRequest, steer: Steer | None = None
) -> tuple[PreparedTurn | ExistingTurn, Provider, Any]:
    """Authenticate, validate, check and store: everything before the first byte. An
    ``Idempotency-Key`` retry returns the first request's turn (and, to follow it, its
    stored reply as the third item)."""
    user = authenticate(request)
    payload = _parse_body(request) if steer is None or request.body.strip() else {}
    turn, provider = prepare_turn(
        user=user,
        payload=payload,
        steer=steer,
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    if isinstance(turn, ExistingTurn):
        return turn, provider, selectors.message_get(user=user, message_id=turn.message_id)
    return turn, provider, user


async def _db(func: Callable[..., T], *args: Any) -> T:
    """``db_run``, with a database failure as its :class:`ServiceError` (an unreachable
    database: 503 ``database_unavailable``; see :func:`core.errors.database_error`)."""
    try:
        return await db_run(func, *args)
    except DatabaseError as exc:
        raise database_error(exc) from exc


def wants_event_stream(request: HttpRequest) -> bool:
    """Whether a chat turn answers as an SSE stream (the default) rather than one JSON document.

    Media-type negotiation on ``Accept`` (docs/api.md#content-negotiation): the stream
    unless the client prefers JSON, that is, ``application/json`` matches a range of
    higher quality than the best range that matches ``text/event-stream``. A missing
    header, ``*/*`` (curl's default), ``text/*``, anything naming ``text/event-stream``
    at the top quality, a tie and an unparsable header all stream. Django's
    ``accepted_type`` picks, for each type, the most specific range that matches it,
    with its ``q``. (``get_preferred_type`` is not enough: on a tie such as
    ``application/json, text/event-stream`` it picks the first listed, where the stream
    must win.)
    """
    json_range = request.accepted_type("application/json")
    if json_range is None:
        return True
    stream_range = request.accepted_type("text/event-stream")
    return stream_range is not None and stream_range.quality >= json_range.quality


def _check_body_limits(request: HttpRequest) -> JsonResponse | None:
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        length = 0
    if length > settings.CHAT_MAX_BODY_BYTES:
        return PayloadTooLarge(settings.CHAT_MAX_BODY_BYTES).as_response()
    if (request.content_type or "") != "application/json":
        return ServiceError(code="unsupported_media_type").as_response()
    return None


@csrf_exempt
async def chat_stream(request: HttpRequest) -> HttpResponse:
    """POST /api/v1/conversations/stream: one chat turn, as SSE or as one JSON document."""
    if request.method != "POST":
        return _method_not_allowed("POST")
    refused = _check_body_limits(request)
    if refused is not None:
        return refused
    return await _turn_response(request, None)


@csrf_exempt
async def message_regenerate(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """POST /api/v1/messages/{id}/regenerate: a new reply to the same user message
    (docs/api.md#regenerate-and-edit), streamed like a chat turn. The body is optional."""
    if request.method != "POST":
        return _method_not_allowed("POST")
    if request.body.strip():
        refused = _check_body_limits(request)
        if refused is not None:
            return refused
    return await _turn_response(request, ("regenerate", pk))


@csrf_exempt
async def message_edit(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """POST /api/v1/messages/{id}/edit ``{"content"}``: replace a user message and what
    followed it, and stream the reply to the new text (docs/api.md#regenerate-and-edit)."""
    if request.method != "POST":
        return _method_not_allowed("POST")
    refused = _check_body_limits(request)
    if refused is not None:
        return refused
    return await _turn_response(request, ("edit", pk))


async def _turn_response(request: HttpRequest, steer: Steer | None) -> HttpResponse:
    """Start (or, for an ``Idempotency-Key`` retry, follow) a turn and answer it."""
    try:
        with turn_admission():  # 503 server_busy when the process is saturated
            turn, provider, extra = await _db(_prepare, request, steer)
    except ServiceError as exc:
        return _refuse(exc)
    if isinstance(turn, ExistingTurn):
        return await _follow_existing(request, extra)
    generation = start_generation(turn, provider)
    if wants_event_stream(request):
        return event_stream_response(iter_events(generation), on_disconnect=generation.client_gone)
    return await _json_reply(turn, generation)


async def _follow_existing(request: HttpRequest, message: Message) -> HttpResponse:
    """Answer an ``Idempotency-Key`` retry with the first request's turn: its stream from
    the start (live or stored), or, for a JSON client, its document once it has ended."""
    try:
        events = reply_follow(
            user_pk=message.user_id, message=message, last_event_id=0, transport="sse"
        )
    except ServiceError as exc:
        return _refuse(exc)
    if wants_event_stream(request):
        return event_stream_response(events)
    async for _event in events:  # the turn's end, wherever it runs
        pass
    document, status = await db_run(_stored_turn_document, message.user_id, message.id)
    return JsonResponse(document, status=status)


def _stored_turn_document(user_id: int, message_id: uuid.UUID) -> tuple[dict, int]:
    """The JSON answer of a finished turn, from what is stored, and its status."""
    message = Message.objects.select_related("user").get(pk=message_id, user_id=user_id)
    user = message.user
    question = selectors.message_get(user=user, message_id=message.reply_to_id)
    document = {**message_to_dict(message), "usage": message_usage(message)}
    if message.status in (Message.Status.COMPLETE, Message.Status.CANCELLED):
        return {
            "conversation_id": str(message.conversation_id),
            "user_message": message_to_dict(question),
            "message": document,
            "flows": [flow_to_dict(flow) for flow in flows_of_message(message_id=message.id)]
            if message.status == Message.Status.COMPLETE
            else [],
            "quota": quota_snapshot(user=user),
        }, 200
    error = error_data(message.error_code or "internal_error", message.error_retryable)
    return {
        "detail": error["message"],
        "code": error["code"],
        "retryable": error["retryable"],
        "conversation_id": str(message.conversation_id),
        "message": document,
    }, error_kind(error["code"]).status


def turn_document(turn: PreparedTurn, result: TurnResult) -> dict[str, Any]:
    """The reply of a finished turn as the JSON answer shows it (the stored message, as it
    ended, with its usage)."""
    outcome = result.outcome
    usage = outcome.usage
    return {
        **message_to_dict(turn.assistant_message),
        "content": outcome.content,
        "status": outcome.status,
        "finish_reason": outcome.finish_reason,
        "usage": usage_to_dict(usage),
    }


async def _json_reply(turn: PreparedTurn, generation: Generation) -> JsonResponse:
    """Wait for the whole turn and answer one JSON document (the client prefers JSON).

    A turn that failed answers the status of its code in the catalog, with the same
    ``code``, ``message`` text and ``retryable`` as the stream's ``error`` event.
    """
    try:
        await asyncio.shield(generation.ended.wait())
    except asyncio.CancelledError:
        generation.client_gone()
        raise
    result = generation.result
    assert result is not None  # set before the generation ends
    outcome = result.outcome
    message = turn_document(turn, result)
    if outcome.status in (Message.Status.COMPLETE, Message.Status.CANCELLED):
        return JsonResponse(
            {
                "conversation_id": str(turn.conversation_id),
                "user_message": message_to_dict(turn.user_message),
                "message": message,
                # The flows the turn created, then those it changed, as they are now
                # (docs/api.md#the-json-answer); the stream's flows_extracted tells them apart.
                "flows": [*result.flows, *(item["flow"] for item in result.updated)],
                "quota": result.quota,
            }
        )
    error = error_data(outcome.error_code or "internal_error", outcome.error_retryable)
    return JsonResponse(
        {
            "detail": error["message"],
            "code": error["code"],
            "retryable": error["retryable"],
            "conversation_id": str(turn.conversation_id),
            "message": message,
        },
        status=error_kind(error["code"]).status,
    )


def _owned_message(request: HttpRequest, pk: uuid.UUID) -> tuple[AbstractBaseUser, Message]:
    user = authenticate(request)
    return user, selectors.message_get(user=user, message_id=pk)


@csrf_exempt
async def message_stream(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """GET /api/v1/messages/{id}/stream: resume a reply after ``Last-Event-ID``."""
    if request.method != "GET":
        return _method_not_allowed("GET")
    last_event_id = parse_last_event_id(
        request.headers.get("Last-Event-ID") or request.GET.get("last_event_id")
    )
    try:
        user, message = await _db(_owned_message, request, pk)
        events = reply_follow(
            user_pk=user.pk, message=message, last_event_id=last_event_id, transport="sse"
        )
    except ServiceError as exc:
        return _refuse(exc)
    return event_stream_response(events)


@csrf_exempt
async def message_cancel(request: HttpRequest, pk: uuid.UUID) -> HttpResponse:
    """POST /api/v1/messages/{id}/cancel: stop a reply; the partial text stays stored."""
    if request.method != "POST":
        return _method_not_allowed("POST")
    try:
        user, message = await _db(_owned_message, request, pk)
    except ServiceError as exc:
        return _refuse(exc)
    generation = await reply_cancel(message=message, transport="sse")
    if generation is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(generation.ended.wait()), CANCEL_WAIT_SECONDS)
    elif message.status == Message.Status.STREAMING:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_SECONDS
        while loop.time() < deadline:
            await asyncio.sleep(0.2)
            message = await db_run(selectors.message_get, user=user, message_id=message.id)
            if message.status != Message.Status.STREAMING:
                break
    message = await db_run(selectors.message_get, user=user, message_id=message.id)
    return JsonResponse(message_to_dict(message))
