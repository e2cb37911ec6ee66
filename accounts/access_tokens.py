"""OIDC access tokens (JWTs), verified locally against the provider's keys.

Nothing here asks the provider's userinfo endpoint, which real providers refuse for
``typ: at+jwt`` access tokens, and nothing here does I/O: the keys come from
:mod:`accounts.jwks`, fetched beforehand in the event loop (:func:`prefetch_key`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

import jwt
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from accounts.errors import InvalidAccessToken
from accounts.jwks import ALLOWED_ALGORITHMS, get_jwks_cache

logger = logging.getLogger("accounts")

#: Accepted ``typ`` header values (lower case, ``application/`` prefix removed). A missing
#: ``typ`` is accepted too (it is optional in RFC 7519).
ALLOWED_TYPES = frozenset({"jwt", "at+jwt"})
#: Payload ``typ`` claims that mark a token as not an access token (Keycloak's id/refresh
#: tokens carry ``typ: "ID"`` / ``"Refresh"`` with a header ``typ: "JWT"``).
REJECTED_PAYLOAD_TYPES = frozenset({"id", "refresh", "logout"})
#: Longer tokens are refused before parsing.
MAX_TOKEN_LENGTH = 16_384
#: OpenID Connect Core 1.0, section 2: ``sub`` is at most 255 ASCII characters.
MAX_SUBJECT_LENGTH = 255

#: PyJWT errors -> (reason, client-safe detail); the first match wins (subclasses first).
_JWT_ERRORS: tuple[tuple[type[jwt.InvalidTokenError], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "The token has expired."),
    (jwt.ImmatureSignatureError, "not_yet_valid", "The token is not valid yet."),
    (jwt.InvalidIssuerError, "bad_issuer", "The token issuer is not accepted."),
    (jwt.InvalidAudienceError, "bad_audience", "The token is not for this API."),
    (jwt.InvalidSignatureError, "bad_signature", "The token signature is invalid."),
    (jwt.InvalidAlgorithmError, "bad_algorithm", "The token algorithm is not allowed."),
    (jwt.DecodeError, "malformed", "The token is malformed."),
)


#: Tokens verified lately: SHA-256 of the token -> (valid until, as ``time.time()``; the
#: key it was verified with; its claims). See :func:`verify_access_token`.
_verified: dict[bytes, tuple[float, Any, dict[str, Any]]] = {}
_verified_lock = threading.Lock()
#: At most this many tokens are remembered (the oldest are dropped first).
VERIFIED_MAX = 4096


def forget_verified_tokens() -> None:
    """Forget every verified token (the next use of each verifies it again)."""
    with _verified_lock:
        _verified.clear()


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("OIDC_"):
        forget_verified_tokens()


def _remember(digest: bytes, key: Any, claims: dict[str, Any]) -> None:
    ttl = settings.OIDC_TOKEN_CACHE_SECONDS
    if ttl <= 0:
        return
    now = time.time()
    until = min(float(claims["exp"]) + settings.OIDC_LEEWAY_SECONDS, now + ttl)
    with _verified_lock:
        if len(_verified) >= VERIFIED_MAX:
            for stale in list(_verified)[: VERIFIED_MAX // 4]:
                del _verified[stale]
        _verified[digest] = (until, key, claims)


def bearer_enabled() -> bool:
    """Whether ``Authorization: Bearer`` is accepted (issuer and JWKS configured)."""
    return bool(settings.OIDC_BEARER_ENABLED)


def token_header(token: str) -> tuple[str, str | None]:
    """``(alg, kid)`` of a token's header, checked for shape; raises InvalidAccessToken."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidAccessToken("The token is malformed.", reason="malformed")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise InvalidAccessToken("The token is malformed.", reason="malformed") from None
    typ = header.get("typ")
    if typ is not None and (
        not isinstance(typ, str) or typ.lower().removeprefix("application/") not in ALLOWED_TYPES
    ):
        raise InvalidAccessToken("The token is not an access token.", reason="bad_type")
    alg = header.get("alg")
    if alg not in ALLOWED_ALGORITHMS:
        raise InvalidAccessToken("The token algorithm is not allowed.", reason="bad_algorithm")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidAccessToken("The token is malformed.", reason="malformed")
    return alg, kid


async def prefetch_key(token: str) -> None:
    """Make sure the key a bearer token names is held, fetching the JWKS if needed.

    Awaited in the event loop before the token is verified in a database thread; a token
    that cannot be verified is left for :func:`verify_access_token` to refuse.
    """
    try:
        _alg, kid = token_header(token)
        await get_jwks_cache().key_for(kid)
    except InvalidAccessToken:
        return


def verify_access_token(token: str) -> dict[str, Any]:
    """The claims of a valid access token; raises :class:`InvalidAccessToken` otherwise.

    Checks: header ``alg`` in :data:`ALLOWED_ALGORITHMS` and equal to the JWK's algorithm
    (so ``none`` and ``HS256`` never pass), header ``typ`` absent, ``JWT`` or ``at+jwt``,
    signature against the held key named by ``kid``, ``iss`` == ``OIDC_OP_ISSUER``, ``aud``
    (string or list) containing ``OIDC_API_AUDIENCE``, ``exp`` required, ``nbf``/``iat``
    when present (leeway ``OIDC_LEEWAY_SECONDS``), ``sub`` a non-empty string of at most 255
    characters. An id token is refused by its audience (the client id, not the API) and,
    for Keycloak, by its ``typ`` claim. With ``OIDC_API_AUDIENCE`` unset every token is
    refused (fail closed). No I/O: the key must be held (:func:`prefetch_key`).

    A token verified within ``OIDC_TOKEN_CACHE_SECONDS`` with the key still held is not
    verified again (the signature check and claim parsing are a turn's CPU), never past
    its ``exp`` plus the leeway; the user it names is still looked up on every request
    (a deactivated user is refused at once).
    """
    issuer = settings.OIDC_OP_ISSUER
    audience = settings.OIDC_API_AUDIENCE
    if not issuer or not audience or not settings.OIDC_OP_JWKS_ENDPOINT:
        logger.error("bearer token refused: OIDC_OP_ISSUER/OIDC_API_AUDIENCE/JWKS not set")
        raise InvalidAccessToken("Bearer tokens are not configured.", reason="not_configured")
    alg, kid = token_header(token)
    key = get_jwks_cache().cached_key(kid)
    digest = hashlib.sha256(token.encode()).digest()
    seen = _verified.get(digest)
    if seen is not None and seen[1] is key and time.time() < seen[0]:
        return dict(seen[2])
    if key.algorithm_name != alg:
        raise InvalidAccessToken(
            "The token algorithm does not match its key.", reason="bad_algorithm"
        )
    try:
        claims = jwt.decode(
            token,
            key=key,
            algorithms=[alg],
            issuer=issuer,
            audience=audience,
            leeway=settings.OIDC_LEEWAY_SECONDS,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidAccessToken(
            f"The token lacks the {exc.claim!r} claim.", reason="missing_claim"
        ) from None
    except jwt.InvalidTokenError as exc:
        reason, detail = next(
            ((reason, detail) for kind, reason, detail in _JWT_ERRORS if isinstance(exc, kind)),
            ("invalid", "The token is invalid."),
        )
        raise InvalidAccessToken(detail, reason=reason) from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_SUBJECT_LENGTH:
        raise InvalidAccessToken("The token's 'sub' claim is invalid.", reason="missing_claim")
    payload_typ = claims.get("typ")
    if isinstance(payload_typ, str) and payload_typ.lower() in REJECTED_PAYLOAD_TYPES:
        raise InvalidAccessToken("The token is not an access token.", reason="bad_type")
    _remember(digest, key, claims)
    return dict(claims)
