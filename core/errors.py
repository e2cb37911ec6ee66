"""The error catalog, and the one application error type.

Every error the service reports has a stable ``code``. :data:`CATALOG` is the one table of
what a code means: its HTTP status, whether retrying the same request later may succeed,
and a message safe for clients (docs/api.md#errors-and-status-codes). Every transport reads it: JSON
bodies before a stream starts (``{"detail", "code", ...data}``), the ``error`` event of an
SSE stream or WebSocket after it started (``{"code", "message", "retryable"}``), the JSON
answer of a failed turn, and the provider error mapping of :mod:`ai.errors`.

This module imports nothing of DRF's views: DRF's ``APIView`` reads the authentication
classes from the settings while its module loads, and those import this one. The DRF
exception handler, which renders these errors for the REST API, lives in
:mod:`core.exception_handler`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import JsonResponse

logger = logging.getLogger("core.errors")


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """What one error code means, on every transport."""

    code: str
    status: int
    retryable: bool
    message: str


#: The one table of error codes (docs/api.md#errors-and-status-codes).
CATALOG: dict[str, ErrorKind] = {
    kind.code: kind
    for kind in (
        ErrorKind("invalid", 400, False, "Invalid request."),
        ErrorKind("invalid_json", 400, False, "The body is not valid JSON."),
        ErrorKind("not_a_reply", 400, False, "Only assistant replies can be streamed."),
        ErrorKind("not_authenticated", 401, False, "Authentication credentials were not provided."),
        ErrorKind("authentication_failed", 401, False, "Invalid credentials."),
        ErrorKind("permission_denied", 403, False, "You may not do this."),
        ErrorKind("not_found", 404, False, "Not found."),
        ErrorKind("method_not_allowed", 405, False, "Method not allowed."),
        ErrorKind("conflict", 409, False, "Conflict."),
        ErrorKind(
            "conversation_busy", 409, True, "A reply is already streaming into this conversation."
        ),
        ErrorKind("busy", 409, True, "A stream is already running on this socket."),
        ErrorKind(
            "not_latest_reply", 409, False, "Only the conversation's last reply can be regenerated."
        ),
        ErrorKind("message_superseded", 409, False, "This message was replaced by a newer one."),
        ErrorKind("payload_too_large", 413, False, "The body is too large."),
        ErrorKind("unsupported_media_type", 415, False, "Send the body as application/json."),
        ErrorKind(
            "idempotency_key_reused",
            422,
            False,
            "This Idempotency-Key was used with a different request.",
        ),
        ErrorKind("quota_exceeded", 429, True, "You have used your quota for this period."),
        ErrorKind("too_many_streams", 429, True, "Too many streams are open."),
        ErrorKind("too_many_sockets", 429, True, "Too many sockets are open."),
        ErrorKind("throttled", 429, True, "Request was throttled."),
        ErrorKind(
            "too_many_authentication_failures",
            429,
            True,
            "Too many failed authentication attempts. Wait and try again.",
        ),
        ErrorKind("internal_error", 500, True, "Something went wrong on our side."),
        ErrorKind("ai_error", 502, False, "The AI provider could not answer this request."),
        ErrorKind(
            "ai_rate_limited", 503, True, "The AI provider is busy. Please try again shortly."
        ),
        ErrorKind("ai_unavailable", 503, True, "The AI provider is unavailable right now."),
        ErrorKind("server_busy", 503, True, "The server is busy. Please retry shortly."),
        ErrorKind(
            "database_unavailable",
            503,
            True,
            "The service is temporarily unavailable. Please retry shortly.",
        ),
        ErrorKind("ai_timeout", 504, True, "The AI provider took too long to answer."),
        ErrorKind("stream_timeout", 504, True, "The reply took too long and was stopped."),
    )
}
INTERNAL_ERROR = CATALOG["internal_error"]


def error_kind(code: str) -> ErrorKind:
    """The catalog entry of ``code`` (``internal_error`` for a code it does not know)."""
    return CATALOG.get(code, INTERNAL_ERROR)


class ServiceError(Exception):
    """An error with a stable ``code``, an HTTP status and a message safe for clients.

    A subclass names its ``code``; its status, message and retry hint come from
    :data:`CATALOG` (a subclass may say a more precise ``default_detail``, or that one case
    of a code is retryable; never another status: that is refused when the class is made).
    An instance made with ``code=`` alone takes the same from the catalog.
    """

    code: str = "internal_error"
    status_code: int = INTERNAL_ERROR.status
    default_detail: str = INTERNAL_ERROR.message
    retryable: bool = INTERNAL_ERROR.retryable

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = CATALOG[cls.code]  # a code missing from the catalog fails at import
        own = cls.__dict__
        if "status_code" in own and own["status_code"] != kind.status:
            raise TypeError(f"{cls.__name__}: {cls.code} is {kind.status} in the catalog")
        if "code" in own:
            cls.status_code = kind.status
            cls.default_detail = own.get("default_detail", kind.message)
            cls.retryable = own.get("retryable", kind.retryable)

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status_code: int | None = None,
        retryable: bool | None = None,
        data: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if code is not None and code != self.code:
            kind = error_kind(code)
            self.code = code
            self.status_code, self.retryable = kind.status, kind.retryable
            detail = detail or kind.message
        self.detail = detail or self.default_detail
        if status_code is not None:
            self.status_code = status_code
        if retryable is not None:
            self.retryable = retryable
        self.data = data or {}
        self.headers = headers or {}
        super().__init__(self.detail)

    def as_body(self) -> dict[str, Any]:
        """The JSON body: ``detail``, ``code`` and any data fields."""
        return {"detail": self.detail, "code": self.code, **self.data}

    def as_response(self) -> JsonResponse:
        """A plain Django JSON response (for async views outside DRF)."""
        response = JsonResponse(self.as_body(), status=self.status_code)
        for name, value in self.headers.items():
            response[name] = value
        return response


class NotFound(ServiceError):
    code = "not_found"


class Conflict(ServiceError):
    code = "conflict"


class InvalidRequest(ServiceError):
    """A 400 whose ``errors`` data names the offending fields."""

    code = "invalid"

    def __init__(self, errors: dict[str, Any], detail: str | None = None) -> None:
        fields = ", ".join(sorted(errors))
        super().__init__(detail or f"Invalid request: {fields}.", data={"errors": errors})


class PayloadTooLarge(ServiceError):
    """413: a request body (or WebSocket message) over ``limit`` bytes."""

    code = "payload_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"The body is larger than {limit} bytes.")


class DatabaseUnavailable(ServiceError):
    """The database did not answer: retry later (503), never a 500 or a hang."""

    code = "database_unavailable"

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "5"})


def database_error(exc: DatabaseError) -> ServiceError:
    """What a database failure that reached a view answers, logged once here.

    Unreachable or failing under load (``OperationalError``, ``InterfaceError``): 503
    ``database_unavailable``, retry later. Anything else (an ``IntegrityError`` a known race
    did not catch as a 409 where it happens, a ``DataError``, a ``ProgrammingError``) is a
    bug, not an outage: 500 ``internal_error``, with its traceback in the log.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        logger.error("database.unavailable", extra={"exc_type": type(exc).__name__})
        return DatabaseUnavailable()
    logger.error("database.error", extra={"exc_type": type(exc).__name__}, exc_info=exc)
    return ServiceError()
