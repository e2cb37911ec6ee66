"""Authentication errors: credentials presented and wrong (401), or too many of them (429)."""

from __future__ import annotations

from rest_framework import status

from core.errors import ServiceError

BEARER_CHALLENGE = 'Bearer realm="api"'


class AuthenticationError(ServiceError):
    """Credentials were presented and are wrong: answer 401 (``exc.as_response()``).

    ``reason`` is a short machine-readable cause for the log line (never the credentials).
    """

    code = "authentication_failed"
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "Invalid credentials."

    def __init__(
        self,
        detail: str | None = None,
        *,
        reason: str = "invalid",
        challenge: str = BEARER_CHALLENGE,
    ) -> None:
        self.reason = reason
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class InvalidAccessToken(AuthenticationError):
    """A bearer token failed verification; ``reason`` says why.

    Reasons: ``malformed``, ``bad_type``, ``bad_algorithm``, ``unknown_key``,
    ``jwks_unavailable``, ``bad_signature``, ``expired``, ``not_yet_valid``,
    ``bad_issuer``, ``bad_audience``, ``missing_claim``, ``not_configured``, ``invalid``.
    """

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(
            detail, reason=reason, challenge=f'{BEARER_CHALLENGE}, error="invalid_token"'
        )


class JWKSUnavailable(InvalidAccessToken):
    """The provider's JWKS could not be fetched and no usable key is held."""

    def __init__(self, detail: str = "The token signing keys are unavailable.") -> None:
        super().__init__(detail, reason="jwks_unavailable")


class TooManyAuthenticationFailures(ServiceError):
    """Past ``AUTH_FAILURES_PER_MINUTE`` failed authentications: 429 with ``Retry-After``."""

    code = "too_many_authentication_failures"
    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = "Too many failed authentication attempts. Wait and try again."
