"""The AI error family: every provider failure becomes one of these, with a stable code;
and :class:`QuotaExceeded`, the quota's refusal of a turn.

The same codes appear as JSON error bodies before a stream starts and in SSE ``error``
events after. Messages are safe for clients: no provider internals, no keys.
"""

from __future__ import annotations

from chatproject.errors import ServiceError


class AIError(ServiceError):
    """A provider call failed in a way the client cannot fix by retrying (bad key, 4xx)."""

    code = "ai_error"
    status_code = 502
    default_detail = "The AI provider could not answer this request."
    retryable = False


class AIRateLimited(AIError):
    code = "ai_rate_limited"
    status_code = 503
    default_detail = "The AI provider is busy. Please try again shortly."
    retryable = True


class AITimeout(AIError):
    code = "ai_timeout"
    status_code = 504
    default_detail = "The AI provider took too long to answer."
    retryable = True


class AIUnavailable(AIError):
    code = "ai_unavailable"
    status_code = 503
    default_detail = "The AI provider is unavailable right now."
    retryable = True


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
    status_code = 429
    default_detail = "You have used your quota for this period."
    retryable = True
