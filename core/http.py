"""Small HTTP helpers every app shares: ids and filters from the query string.

Bad input answers 400 naming the parameter (:class:`~core.errors.InvalidRequest`);
an id that is not a UUID is simply not found (callers answer 404).
"""

from __future__ import annotations

import uuid

from rest_framework.request import Request

from core.errors import InvalidRequest


def parse_uuid(value: object) -> uuid.UUID | None:
    """The UUID in ``value``, or ``None`` when it is not one (ids from bodies, frames and
    query strings; path ids are UUIDs already, by their ``<uuid:pk>`` routes)."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError, AttributeError):
        return None


def uuid_query_param(request: Request, name: str) -> uuid.UUID | None:
    """A UUID filter from the query string; 400 naming the parameter when malformed."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    value = parse_uuid(raw)
    if value is None:
        raise InvalidRequest({name: ["Must be a valid UUID."]})
    return value


def choice_query_param(request: Request, name: str, choices: list[str]) -> str | None:
    """A choice filter from the query string; 400 naming the parameter when unknown."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    if raw not in choices:
        raise InvalidRequest({name: [f"Must be one of: {', '.join(choices)}."]})
    return raw
