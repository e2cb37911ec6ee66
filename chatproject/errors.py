"""One application error type with a stable code (rendered by chatproject.exception_handler).

Every error the service reports, as JSON before a stream starts or as an SSE ``error``
event after, is a :class:`ServiceError` (or a DRF exception turned into the same shape):
``{"detail": "...", "code": "..."}`` plus optional data fields.

This module imports nothing of DRF's views: DRF's ``APIView`` reads the authentication
classes from the settings while its module loads, and those import this one. The DRF
exception handler lives in :mod:`chatproject.exception_handler`.
"""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse
from rest_framework import status


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
