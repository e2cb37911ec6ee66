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


def bool_query_param(request: Request, name: str, default: bool = False) -> bool:
    """A ``true``/``false`` flag from the query string (also ``1``/``0``); absent or empty
    is ``default``; anything else is 400 naming the parameter."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise InvalidRequest({name: ["Must be true or false."]})


def text_query_param(request: Request, name: str, *, max_length: int) -> str:
    """A required text parameter: 400 naming it when missing, blank, longer than
    ``max_length`` characters or holding a NUL (which PostgreSQL cannot take)."""
    raw = request.query_params.get(name)
    if raw is None or not raw.strip():
        raise InvalidRequest({name: ["This parameter is required and must not be blank."]})
    if len(raw) > max_length:
        raise InvalidRequest({name: [f"Must be at most {max_length} characters."]})
    if "\x00" in raw:
        raise InvalidRequest({name: ["Null characters are not allowed."]})
    return raw.strip()
