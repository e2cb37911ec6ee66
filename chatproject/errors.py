"""One application error type with a stable code, and the one DRF handler that renders it.

Every error the service reports, as JSON before a stream starts or as an SSE ``error``
event after, is a :class:`ServiceError` (or a DRF exception turned into the same shape):
``{"detail": "...", "code": "..."}`` plus optional data fields.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """An error with a stable ``code``, an HTTP status and a message safe for clients."""

    code: str = "internal_error"
    status_code: int = status.HTTP_500_INTERNAL_SERVER_ERROR
    default_detail: str = "Something went wrong on our side."
    retryable: bool = False

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
        self.detail = detail or self.default_detail
        if code is not None:
            self.code = code
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
    status_code = status.HTTP_404_NOT_FOUND
    default_detail = "Not found."


class Conflict(ServiceError):
    code = "conflict"
    status_code = status.HTTP_409_CONFLICT
    default_detail = "Conflict."


class InvalidRequest(ServiceError):
    """A 400 whose ``errors`` data names the offending fields."""

    code = "invalid"
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "Invalid request."

    def __init__(self, errors: dict[str, Any], detail: str | None = None) -> None:
        fields = ", ".join(sorted(errors))
        super().__init__(detail or f"Invalid request: {fields}.", data={"errors": errors})


class DatabaseUnavailable(ServiceError):
    """The database did not answer: retry later (503), never a 500 or a hang."""

    code = "database_unavailable"
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The service is temporarily unavailable. Please retry shortly."
    retryable = True

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "5"})


def _drf_code(exc: exceptions.APIException) -> str:
    if isinstance(exc, exceptions.ValidationError):
        return "invalid"
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        return (
            "not_authenticated"
            if isinstance(exc, exceptions.NotAuthenticated)
            else ("authentication_failed")
        )
    if isinstance(exc, exceptions.Throttled):
        return "throttled"
    detail = exc.detail
    code = getattr(detail, "code", None)
    return str(code or exc.default_code)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, reshaped: every error body has ``detail`` and ``code``.

    Validation errors keep DRF's per-field messages under ``errors`` so the field is named.
    """
    if isinstance(exc, DatabaseError):
        logger.error("database.unavailable", extra={"exc_type": type(exc).__name__})
        exc = DatabaseUnavailable()
    if isinstance(exc, ServiceError):
        return Response(exc.as_body(), status=exc.status_code, headers=exc.headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, exceptions.AuthenticationFailed) and context.get("request") is not None:
        from chatproject.throttling import auth_failure_record

        try:
            auth_failure_record(context["request"])
        except ServiceError as throttled:
            return Response(throttled.as_body(), status=429, headers=throttled.headers)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        fields = ", ".join(sorted(str(k) for k in errors))
        response.data = {
            "detail": f"Invalid request: {fields}.",
            "code": "invalid",
            "errors": errors,
        }
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        body: dict[str, Any] = {"detail": detail, "code": _drf_code(exc)}
        if isinstance(exc, exceptions.NotFound):
            body["code"] = "not_found"
        response.data = body
    return response
