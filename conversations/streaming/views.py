"""The streaming endpoints: start a turn, resume a reply, cancel a reply (contract 3).

Plain async Django views (DRF's views are sync): they authenticate with DRF's own
authenticators, validate with DRF serializers, and answer every problem before the first
byte as JSON with ``detail`` and ``code``. Each view makes at most one thread hop for its
database work before the stream starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from accounts.requests import request_user
from ai.providers.base import Provider
from chatproject import metrics
from chatproject.db import db_run
from chatproject.errors import DatabaseUnavailable, InvalidRequest, ServiceError
from conversations import selectors
from conversations.models import Message
from conversations.serializers import message_to_dict
from conversations.services import PreparedTurn, message_request_cancel
from conversations.streaming.generations import (
    Generation,
    follow,
    followers,
    parse_last_event_id,
    registry,
)
from conversations.streaming.relay import request_remote_cancel
from conversations.streaming.replay import follow_stored
from conversations.streaming.turn import error_event_data, prepare_turn, start_generation

logger = logging.getLogger("conversations.turn")

T = TypeVar("T")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
CANCEL_WAIT_SECONDS = 5.0


def _error(detail: str, code: str, status: int, **headers: str) -> JsonResponse:
    return ServiceError(detail, code=code, status_code=status, headers=headers).as_response()


def authenticate(request: HttpRequest) -> AbstractBaseUser:
    """The caller, by the one path of every transport (:mod:`accounts.requests`)."""
    return request_user(request, transport="sse")


def _parse_body(request: HttpRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ServiceError(
            "The body is not valid UTF-8.", code="invalid_json", status_code=400
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise ServiceError(
            "The body is not valid JSON.", code="invalid_json", status_code=400
        ) from exc
    if not isinstance(data, dict):
        raise InvalidRequest({"non_field_errors": ["Expected a JSON object."]})
    return data


def _prepare(request: HttpRequest) -> tuple[PreparedTurn, Provider]:
    """Authenticate, validate, check and store: everything before the first byte."""
    user = authenticate(request)
    return prepare_turn(user=user, payload=_parse_body(request))


async def _db_or_503(func: Callable[..., T], *args: Any) -> T:
    """``db_run``, with an unreachable database answered as 503 ``database_unavailable``."""
    try:
        return await db_run(func, *args)
    except DatabaseError as exc:
        logger.error("database.unavailable", extra={"exc_type": type(exc).__name__})
        raise DatabaseUnavailable() from exc


def wants_event_stream(request: HttpRequest) -> bool:
    """Whether a chat turn answers as an SSE stream (the default) rather than one JSON document.

    Media-type negotiation on ``Accept`` (docs/api.md): the stream unless the client
    prefers JSON, that is, ``application/json`` matches a range of higher quality than
    the best range that matches ``text/event-stream``. A missing header, ``*/*`` (curl's
    default), ``text/*``, anything naming ``text/event-stream`` at the top quality, a tie
    and an unparsable header all stream. Django's ``accepted_type`` picks, for each type,
    the most specific range that matches it, with its ``q``. (``get_preferred_type`` is
    not enough: on a tie such as ``application/json, text/event-stream`` it picks the
    first listed, where the stream must win.)
    """
    json_range = request.accepted_type("application/json")
    if json_range is None:
        return True
    stream_range = request.accepted_type("text/event-stream")
    return stream_range is not None and stream_range.quality >= json_range.quality


def event_stream_response(events: AsyncIterator[bytes]) -> StreamingHttpResponse:
    """An unbuffered SSE response (contract 3.1 headers)."""
    return StreamingHttpResponse(events, content_type="text/event-stream", headers=SSE_HEADERS)


def _check_body_limits(request: HttpRequest) -> JsonResponse | None:
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        length = 0
    if length > settings.CHAT_MAX_BODY_BYTES:
        return _error(
            f"The body is larger than {settings.CHAT_MAX_BODY_BYTES} bytes.",
            "payload_too_large",
            413,
        )
    content_type = request.content_type or ""
    if content_type != "application/json":
        return _error("Send the body as application/json.", "unsupported_media_type", 415)
    return None


@csrf_exempt
async def chat_stream(request: HttpRequest) -> HttpResponse:
    """POST /api/v1/conversations/stream: one chat turn, as SSE or as one JSON document."""
    if request.method != "POST":
        return _error("Use POST.", "method_not_allowed", 405, Allow="POST")
    refused = _check_body_limits(request)
    if refused is not None:
        return refused
    try:
        turn, provider = await _db_or_503(_prepare, request)
    except ServiceError as exc:
        if exc.status_code == 429:
            metrics.REFUSALS.labels(exc.code).inc()
        return exc.as_response()
    generation = start_generation(turn, provider)
    if wants_event_stream(request):
        return event_stream_response(follow(generation, primary=True))
    return await _json_reply(turn, generation)


async def _json_reply(turn: PreparedTurn, generation: Generation) -> JsonResponse:
    """Wait for the whole turn and answer one JSON document (the client prefers JSON)."""
    try:
        await asyncio.shield(generation.ended.wait())
    except asyncio.CancelledError:
        if settings.CHAT_CANCEL_ON_DISCONNECT:
            generation.request_cancel()
        raise
    result = generation.result
    status = result.get("status")
    if status in (Message.Status.COMPLETE, Message.Status.CANCELLED):
        return JsonResponse(
            {
                "conversation_id": str(turn.conversation_id),
                "user_message": message_to_dict(turn.user_message),
                "message": result["message"],
                "flows": result["flows"],
                "quota": result["quota"],
            }
        )
    error = error_event_data(result.get("error_code") or "internal_error")
    status_code = 504 if error["code"] in ("ai_timeout", "stream_timeout") else 503
    if error["code"] in ("ai_error", "internal_error"):
        status_code = 502 if error["code"] == "ai_error" else 500
    return JsonResponse(
        {
            "detail": error["message"],
            "code": error["code"],
            "retryable": error["retryable"],
            "conversation_id": str(turn.conversation_id),
            "message": result.get("message"),
        },
        status=status_code,
    )


def _owned_message(request: HttpRequest, pk: str) -> tuple[AbstractBaseUser, Message]:
    user = authenticate(request)
    return user, selectors.message_get(user=user, message_id=pk)


@csrf_exempt
async def message_stream(request: HttpRequest, pk: str) -> HttpResponse:
    """GET /api/v1/messages/{id}/stream: resume a reply after ``Last-Event-ID``."""
    if request.method != "GET":
        return _error("Use GET.", "method_not_allowed", 405, Allow="GET")
    try:
        user, message = await _db_or_503(_owned_message, request, pk)
    except ServiceError as exc:
        return exc.as_response()
    if message.role != Message.Role.ASSISTANT:
        return _error("Only assistant replies can be streamed.", "not_a_reply", 400)
    last_event_id = parse_last_event_id(
        request.headers.get("Last-Event-ID") or request.GET.get("last_event_id")
    )
    if not followers.acquire(user.pk):
        metrics.REFUSALS.labels("too_many_streams").inc()
        return _error(
            f"At most {settings.CHAT_MAX_FOLLOWERS} resumed streams per user.",
            "too_many_streams",
            429,
            **{"Retry-After": "5"},
        )
    generation = registry.get(message.id)
    metrics.RESUMES.labels("live" if generation is not None else "stored").inc()
    logger.info(
        "turn.resume",
        extra={
            "message_id": str(message.id),
            "last_event_id": last_event_id,
            "live": generation is not None,
        },
    )
    if generation is not None:
        events = follow(generation, last_event_id=last_event_id)
    else:
        events = follow_stored(message, last_event_id=last_event_id)
    return event_stream_response(followers.hold(user.pk, events))


@csrf_exempt
async def message_cancel(request: HttpRequest, pk: str) -> HttpResponse:
    """POST /api/v1/messages/{id}/cancel: stop a reply; the partial text stays stored."""
    if request.method != "POST":
        return _error("Use POST.", "method_not_allowed", 405, Allow="POST")
    try:
        user, message = await _db_or_503(_owned_message, request, pk)
    except ServiceError as exc:
        return exc.as_response()
    generation = registry.get(message.id)
    metrics.CANCELS.inc()
    logger.info("turn.cancel", extra={"message_id": str(message.id), "local": bool(generation)})
    if generation is not None:
        generation.request_cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(generation.ended.wait()), CANCEL_WAIT_SECONDS)
    elif message.status == Message.Status.STREAMING:
        await db_run(message_request_cancel, message_id=message.id)
        await request_remote_cancel(message_id=message.id, worker=message.worker)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CANCEL_WAIT_SECONDS
        while loop.time() < deadline:
            await asyncio.sleep(0.2)
            message = await db_run(selectors.message_get, user=user, message_id=message.id)
            if message.status != Message.Status.STREAMING:
                break
    message = await db_run(selectors.message_get, user=user, message_id=message.id)
    return JsonResponse(message_to_dict(message))
