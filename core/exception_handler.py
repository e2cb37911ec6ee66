"""The one DRF exception handler: every error body has ``detail`` and ``code``.

Kept apart from :mod:`core.errors` because it imports ``rest_framework.views``,
whose ``APIView`` imports the authentication classes named in the settings, which import
the error types: in one module that is an import cycle (it crashed start-up with OIDC on).
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.defaults import page_not_found
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from core.errors import ServiceError, database_error


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
        exc = database_error(exc)
    if isinstance(exc, ServiceError):
        return Response(exc.as_body(), status=exc.status_code, headers=exc.headers)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
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


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 404 handler: the API's JSON error body under ``/api/`` (an id that is not a
    UUID does not match its ``<uuid:pk>`` route), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)
    return page_not_found(request, exception)
