"""The chat WebSocket, ``/ws/v1/chat/`` (docs/api.md#websocket): the SSE turn over one
socket.

Authentication is in :mod:`accounts.ws` (token subprotocol pair, ``Authorization``
header, or session cookie); a connection without valid credentials is accepted, sent one
``error`` (``code`` ``not_authenticated`` / ``authentication_failed``, ``status`` 401) and
closed with code 4401. The credentials are checked again for every frame that starts work
(``chat``, ``resume``, ``cancel``); once they no longer hold, the socket gets that
``error`` and is closed with 4401. A user's sockets past ``CHAT_MAX_SOCKETS`` in this
process get ``error`` ``too_many_sockets`` (429) and are closed with 4429.

Client -> server, one JSON object per text frame:

``{"type": "chat", ...}``
    a turn; the rest is the body of ``POST /api/v1/conversations/stream`` (either shape).
``{"type": "regenerate", "message_id": "..."}``
``{"type": "edit", "message_id": "...", "content": "..."}``
    a regenerate or an edit (docs/api.md#regenerate-and-edit), streamed like ``chat``.
    ``chat``, ``regenerate`` and ``edit`` may carry ``"idempotency_key"``, the
    ``Idempotency-Key`` header of the HTTP transport: a retry follows the first turn.
``{"type": "cancel", "message_id": "..."}``
    stop a reply of the caller's (any of them, not only this socket's); answered with
    ``{"type": "cancel_accepted", "message_id": ...}``. The stream of that reply (on this
    socket or elsewhere) then ends with ``done``, ``finish_reason`` ``cancelled``.
``{"type": "resume", "message_id": "...", "last_event_id": N}``
    follow a reply from after event ``N`` (default 0), as ``GET /api/v1/messages/{id}/stream``
    does: exactly what the client has not received yet, live or stored.

Server -> client: the events of the SSE stream, in the same order with the same ids (the
same :class:`~conversations.streaming.events.Event` objects, encoded by
:mod:`conversations.streaming.transports.ws`), as ``{"type": <event>, "id": <event id>,
...data}`` (``metadata``, ``typing`` start, ``chunk``\\s, ``typing`` stop,
``flows_extracted``, ``done``, or ``error`` with ``code``/``message``/``retryable``).
SSE keep-alive comments are not sent (daphne pings the socket). A problem before a stream
starts (400 ``invalid`` with the fields in ``errors``, 404, 409, 429, 503, or a bad frame)
is ``{"type": "error", "code", "detail", "status": <HTTP status>, "request": <the client
message's type>, ...data}`` -- without ``id``, which is how it differs from a stream's
``error`` event -- and the socket stays open.

One stream at a time per socket: a ``chat`` or ``resume`` while a stream is being sent is
refused with ``error`` ``busy`` (409); ``cancel`` is always accepted. Open more sockets to
run turns side by side. On disconnect the follower task is cancelled and the generation
runs on (it can be resumed), unless ``CHAT_CANCEL_ON_DISCONNECT`` is set, in which case the
turn started on this socket is cancelled. The per-chunk path is one JSON encode and one
``send``: no thread hop, no database access.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from accounts.errors import AuthenticationError, TooManyAuthenticationFailures
from accounts.ws import CLOSE_TOO_MANY, CLOSE_UNAUTHENTICATED, scope_user_recheck, sockets
from conversations import selectors
from conversations.streaming.admission import turn_admission
from conversations.streaming.events import KEEP_ALIVE, Event, parse_last_event_id
from conversations.streaming.live import Generation, iter_events
from conversations.streaming.replies import reply_cancel, reply_follow
from conversations.streaming.transports.ws import encode_error, encode_json, encode_ws_event
from conversations.streaming.turn import prepare_turn, start_generation
from conversations.turn_start import ExistingTurn
from core import metrics
from core.db import db_run
from core.errors import InvalidRequest, PayloadTooLarge, ServiceError, database_error
from core.http import parse_uuid

logger = logging.getLogger("conversations.ws")


class ChatConsumer(AsyncJsonWebsocketConsumer):
    """One client's socket: turns, resumes and cancels, one stream at a time."""

    user: Any = None
    user_pk: int = 0
    counted = False
    follower: asyncio.Task[None] | None = None
    primary: Generation | None = None

    # --- connection ------------------------------------------------------------------
    async def connect(self) -> None:
        await self.accept(subprotocol=self.scope.get("auth_subprotocol"))
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            code = self.scope.get("auth_error") or "not_authenticated"
            if code == TooManyAuthenticationFailures.code:
                error: ServiceError = TooManyAuthenticationFailures()
            elif code == "authentication_failed":
                error = AuthenticationError()
            else:
                error = ServiceError(code="not_authenticated")
            await self.send_error(error, "connect")
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not sockets.acquire(user.pk):
            logger.info("ws.refused", extra={"user_id": user.pk, "code": "too_many_sockets"})
            await self.send_error(
                ServiceError(
                    f"At most {settings.CHAT_MAX_SOCKETS} open sockets per user.",
                    code="too_many_sockets",
                ),
                "connect",
            )
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.counted = True
        self.user, self.user_pk = user, user.pk
        logger.info("ws.connect", extra={"user_id": user.pk})

    async def _recheck(self, request: str) -> bool:
        """Whether the socket's credentials still hold; if not, say so and close (4401)."""
        try:
            self.user = await scope_user_recheck(self.scope)
        except (AuthenticationError, TooManyAuthenticationFailures) as exc:
            logger.info("ws.credentials_gone", extra={"code": exc.code})
            await self.send_error(exc, request)
            await self._stop_following()
            self.user = None
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return False
        return True

    async def _stop_following(self) -> None:
        follower = self.follower
        if follower is not None and not follower.done():
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def disconnect(self, code: int) -> None:
        if self.counted:
            self.counted = False
            sockets.release(self.user_pk)
        follower, primary = self.follower, self.primary
        if follower is None or follower.done():
            return
        if primary is not None:
            primary.client_gone()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        logger.info(
            "ws.disconnect_while_streaming",
            extra={
                "close_code": code,
                "message_id": str(primary.message_id) if primary is not None else None,
                "cancelled": primary is not None and settings.CHAT_CANCEL_ON_DISCONNECT,
            },
        )

    # --- frames ----------------------------------------------------------------------
    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.user is None:  # not authenticated: the socket is closing
            return
        if text_data is None:
            await self.send_error(ServiceError("Send JSON text frames.", code="invalid_json"), "")
            return
        if len(text_data) > settings.CHAT_MAX_BODY_BYTES:
            await self.send_error(PayloadTooLarge(settings.CHAT_MAX_BODY_BYTES), "")
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self.send_error(ServiceError(code="invalid_json"), "")
            return
        await self.receive_json(content)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        kind = content.get("type") if isinstance(content, dict) else None
        handler = {
            "chat": self.on_chat,
            "regenerate": self.on_regenerate,
            "edit": self.on_edit,
            "cancel": self.on_cancel,
            "resume": self.on_resume,
        }.get(kind if isinstance(kind, str) else "")
        try:
            if handler is None:
                raise InvalidRequest(
                    {
                        "type": [
                            "Expected an object with type 'chat', 'regenerate', 'edit', "
                            "'cancel' or 'resume'."
                        ]
                    }
                )
            if not await self._recheck(kind):
                return
            await handler(content)
        except ServiceError as exc:
            await self.send_error(exc, kind if isinstance(kind, str) else "")
        except DatabaseError as exc:  # as the HTTP transports answer it
            await self.send_error(database_error(exc), kind if isinstance(kind, str) else "")
        except Exception:  # the socket survives an unexpected failure of one request
            logger.exception("ws.request_failed", extra={"request": kind})
            await self.send_error(ServiceError(), kind if isinstance(kind, str) else "")

    async def send_error(self, exc: ServiceError, request: str) -> None:
        """A problem before any stream: the error body, its HTTP status, the request type."""
        if exc.status_code == 429:
            metrics.REFUSALS.labels(exc.code).inc()
        await self.send(text_data=encode_error(exc, request))

    # --- client messages -------------------------------------------------------------
    def _check_idle(self) -> None:
        if self.follower is not None and not self.follower.done():
            raise ServiceError(
                "A stream is already running on this socket; wait for it, cancel it, "
                "or open another socket.",
                code="busy",
            )

    async def on_chat(self, content: dict[str, Any]) -> None:
        await self._turn(content, None)

    async def on_regenerate(self, content: dict[str, Any]) -> None:
        await self._turn(content, "regenerate")

    async def on_edit(self, content: dict[str, Any]) -> None:
        await self._turn(content, "edit")

    async def _turn(self, content: dict[str, Any], steer_kind: str | None) -> None:
        """Start a turn (or follow the one an ``idempotency_key`` names) on this socket."""
        self._check_idle()
        key = content.get("idempotency_key")
        if key is not None and not isinstance(key, str):
            raise InvalidRequest({"idempotency_key": ["Expected a string."]})
        skip = {"type", "idempotency_key"}
        steer = None
        if steer_kind is not None:
            skip.add("message_id")
            message_id = parse_uuid(content.get("message_id"))
            if message_id is None:
                raise InvalidRequest({"message_id": ["A valid message id is required."]})
            steer = (steer_kind, message_id)
        payload = {k: v for k, v in content.items() if k not in skip}
        with turn_admission():  # 503 server_busy when the process is saturated
            turn, provider = await db_run(
                prepare_turn, user=self.user, payload=payload, steer=steer, idempotency_key=key
            )
        if isinstance(turn, ExistingTurn):
            message = await db_run(
                selectors.message_get, user=self.user, message_id=turn.message_id
            )
            events = reply_follow(
                user_pk=self.user_pk, message=message, last_event_id=0, transport="ws"
            )
            self._start_follower(events, primary=None)
            return
        generation = start_generation(turn, provider)
        self._start_follower(iter_events(generation), primary=generation)

    async def on_resume(self, content: dict[str, Any]) -> None:
        self._check_idle()
        message_id = content.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise InvalidRequest({"message_id": ["This field is required."]})
        raw_last = content.get("last_event_id", 0)
        if isinstance(raw_last, bool) or not isinstance(raw_last, int | str):
            raise InvalidRequest({"last_event_id": ["Expected an integer."]})
        last_event_id = parse_last_event_id(str(raw_last))
        message = await db_run(selectors.message_get, user=self.user, message_id=message_id)
        events = reply_follow(
            user_pk=self.user_pk, message=message, last_event_id=last_event_id, transport="ws"
        )
        self._start_follower(events, primary=None)

    async def on_cancel(self, content: dict[str, Any]) -> None:
        message_id = content.get("message_id")
        if not isinstance(message_id, str) or not message_id:
            raise InvalidRequest({"message_id": ["This field is required."]})
        message = await db_run(selectors.message_get, user=self.user, message_id=message_id)
        await reply_cancel(message=message, transport="ws")
        await self.send_json({"type": "cancel_accepted", "message_id": str(message.id)})

    # --- streaming -------------------------------------------------------------------
    def _start_follower(self, events: AsyncIterator[Event], *, primary: Generation | None) -> None:
        self.primary = primary
        self.follower = asyncio.create_task(self._follow(events))

    async def _follow(self, events: AsyncIterator[Event]) -> None:
        """Send one stream's events until it ends (or the socket goes: cancelled)."""
        send = self.send
        try:
            async with contextlib.aclosing(events):  # type: ignore[type-var]
                async for event_id, event, data in events:
                    if event is KEEP_ALIVE:
                        continue
                    await send(text_data=encode_ws_event(event_id, event, data))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("ws.follow_failed")
        finally:
            if self.follower is asyncio.current_task():
                self.follower = None
                self.primary = None

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return encode_json(content)
