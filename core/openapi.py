"""OpenAPI: the error bodies every REST operation can answer, documented once.

Every error the API answers is ``{"detail", "code", "errors"?}`` (see
:mod:`core.errors`). drf-spectacular only documents the success response, so a
client (or a schema fuzzer) reading ``/api/v1/schema/`` would not know that a malformed
body answers 400, a missing token 401, a session write without its CSRF token 403, and
another user's id 404. :class:`ErrorResponsesAutoSchema` adds those responses with the
shared :class:`ErrorSerializer`; it is DRF's ``DEFAULT_SCHEMA_CLASS``.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    """The one error shape: a readable ``detail``, a stable ``code``, field ``errors``."""

    detail = serializers.CharField(help_text="A message safe to show.")
    code = serializers.CharField(help_text="A stable machine-readable code.")
    errors = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        help_text="Messages per offending field (validation errors only).",
    )


_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}

_DESCRIPTIONS = {
    "400": "Invalid body or query parameter; `errors` names the fields.",
    "401": "No or bad credentials.",
    "403": "A session-authenticated write without its CSRF token.",
    "404": "Not found, or not the caller's (never 403: no existence leak).",
    "409": "A reply is streaming into it (`conversation_busy`).",
    "415": "The body is not `application/json`.",
}


class ErrorResponsesAutoSchema(AutoSchema):
    """drf-spectacular's AutoSchema, plus the error responses the operation can give."""

    def _error_codes(self) -> list[str]:
        method = self.method.upper()
        codes = ["401"]
        if method in _BODY_METHODS or self._is_list_view() or self.get_override_parameters():
            codes.append("400")  # bodies, filters and pagination parameters are validated
        if method in _WRITE_METHODS:
            codes.append("403")
        if "{" in self.path or self._is_list_view():
            codes.append("404")  # an unknown or foreign id; an out-of-range page
        if method == "DELETE":
            codes.append("409")
        if method in _BODY_METHODS:
            codes.append("415")
        return codes

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        for code in self._error_codes():
            if code not in responses:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=_DESCRIPTIONS[code]),
                    code,
                    direction=direction,
                )
        return responses
