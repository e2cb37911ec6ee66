"""Turning vendor SDK and transport failures into our AI error family.

Both adapters call :func:`map_provider_error` with their SDK's exception classes, so this
module imports no SDK itself. The errors it returns carry only our safe default messages;
the details (provider, status code, error type, request id) go to the log, never the key
or any message text.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import httpx

from ai.errors import AIError, AIRateLimited, AITimeout, AIUnavailable

logger = logging.getLogger("ai.providers")

try:  # The SDKs run on httpx2; plain httpx is mapped too, for other transports.
    import httpx2

    _TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
        httpx.TimeoutException,
        httpx2.TimeoutException,
        TimeoutError,
    )
    _TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
        httpx.TransportError,
        httpx2.TransportError,
        httpx.StreamError,
        httpx2.StreamError,
        ConnectionError,
    )
except ImportError:  # pragma: no cover - httpx2 comes with both SDKs
    _TIMEOUT_ERRORS = (httpx.TimeoutException, TimeoutError)
    _TRANSPORT_ERRORS = (httpx.TransportError, httpx.StreamError, ConnectionError)


@dataclass(frozen=True, slots=True)
class SdkErrors:
    """The exception classes of one SDK that the mapping needs to tell apart."""

    timeout: type[BaseException]
    connection: type[BaseException]
    status: type[BaseException]


# In-stream error types (Anthropic ``error`` events, OpenAI ``{"error": ...}`` chunks).
_RATE_LIMIT_TYPES = frozenset({"rate_limit_error", "rate_limit_exceeded", "requests", "tokens"})
_UNAVAILABLE_TYPES = frozenset(
    {"overloaded_error", "api_error", "server_error", "service_unavailable", "internal_error"}
)
_TIMEOUT_TYPES = frozenset({"timeout_error", "timeout"})


def retry_after_seconds(headers: Any) -> int | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` headers, or ``None``."""
    if headers is None:
        return None
    try:
        value_ms = headers.get("retry-after-ms")
        if value_ms:
            return max(0, math.ceil(float(value_ms) / 1000))
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0, math.ceil(float(value)))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            return max(0, math.ceil(parsed.timestamp() - time.time()))
    except (TypeError, ValueError, OverflowError):
        return None


def _rate_limited(retry_after: int | None) -> AIRateLimited:
    if retry_after is None:
        return AIRateLimited()
    return AIRateLimited(
        data={"retry_after": retry_after}, headers={"Retry-After": str(retry_after)}
    )


def map_status(status_code: int, *, retry_after: int | None = None) -> AIError:
    """Our error for an upstream HTTP status."""
    if status_code == 429:
        return _rate_limited(retry_after)
    if status_code == 408:
        return AITimeout()
    if status_code >= 500:  # includes Anthropic's 529 "overloaded"
        return AIUnavailable()
    return AIError()


def _connection_failed(exc: BaseException) -> bool:
    """True when a "timeout" was really a failed connection (refused, unreachable).

    The SDKs' aiohttp transport reports every connector error as ``httpx2.ConnectTimeout``;
    the ``OSError`` that aiohttp raised is still in the cause chain.
    """
    seen = 0
    cause = exc.__cause__ or exc.__context__
    while cause is not None and seen < 8:
        if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


def map_provider_error(exc: BaseException, *, provider: str, sdk: SdkErrors) -> AIError:
    """Map an SDK or transport exception to our error family, and log what happened.

    429 -> :class:`AIRateLimited` (``retry_after`` in ``data`` when sent), timeouts ->
    :class:`AITimeout`, connection failures, 5xx, 529 and dropped streams ->
    :class:`AIUnavailable`, any other status (401, 403, 400, ...) -> :class:`AIError`.
    """
    if isinstance(exc, AIError):
        return exc
    status_code: int | None = None
    if isinstance(exc, sdk.status):
        response = getattr(exc, "response", None)
        status_code = getattr(exc, "status_code", None) or getattr(response, "status_code", 0)
        retry_after = retry_after_seconds(getattr(response, "headers", None))
        error = map_status(int(status_code or 0), retry_after=retry_after)
    elif isinstance(exc, (sdk.timeout, *_TIMEOUT_ERRORS)):
        error = AIUnavailable() if _connection_failed(exc) else AITimeout()
    elif isinstance(exc, (sdk.connection, *_TRANSPORT_ERRORS)):
        error = AIUnavailable()
    else:
        error = AIError()
    logger.warning(
        "ai.provider_error",
        extra={
            "provider": provider,
            "status_code": status_code,
            "error_class": type(exc).__name__,
            "error_code": error.code,
            "upstream_request_id": getattr(exc, "request_id", None),
        },
    )
    return error


def map_stream_error_event(error_type: str | None, *, provider: str) -> AIError:
    """Our error for an error reported inside a stream (e.g. ``overloaded_error``)."""
    kind = (error_type or "").lower()
    if kind in _RATE_LIMIT_TYPES:
        error: AIError = AIRateLimited()
    elif kind in _UNAVAILABLE_TYPES:
        error = AIUnavailable()
    elif kind in _TIMEOUT_TYPES:
        error = AITimeout()
    else:
        error = AIError()
    logger.warning(
        "ai.provider_stream_error",
        extra={"provider": provider, "error_type": kind[:64], "error_code": error.code},
    )
    return error
