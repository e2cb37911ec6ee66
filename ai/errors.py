"""The AI error family: every provider failure becomes one of these, with a stable code;
and :class:`QuotaExceeded`, the quota's refusal of a turn.

Each class names its code; status, safe message and retry hint come from the one catalog
(:data:`core.errors.CATALOG`), so the same code says the same on every transport.
Messages are safe for clients: no provider internals, no keys.
"""

from __future__ import annotations

from core.errors import ServiceError


class AIError(ServiceError):
    """A provider call failed in a way the client cannot fix by retrying (bad key, 4xx)."""

    code = "ai_error"


class AIRateLimited(AIError):
    code = "ai_rate_limited"


class AITimeout(AIError):
    code = "ai_timeout"


class AIUnavailable(AIError):
    code = "ai_unavailable"


class AIStreamIncomplete(AIError):
    """The upstream stream ended without its end marker: a cut, never a normal finish."""

    code = "ai_error"
    default_detail = "The AI provider's reply was cut off."
    retryable = True


class AINotConfigured(AIUnavailable):
    """No usable provider is configured (503 before any stream starts)."""

    default_detail = "The AI provider is not configured on this server."
    retryable = False


class QuotaExceeded(ServiceError):
    """429 ``quota_exceeded``: the body carries the quota, the header ``Retry-After``."""

    code = "quota_exceeded"
