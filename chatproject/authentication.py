"""Authentication for the API (contract section 4): OIDC bearer tokens, DRF tokens, sessions.

Bearer tokens are JWT access tokens of an OpenID provider, verified here, locally, against the
provider's JWKS: signature (RS256 or ES256 only), ``iss``, ``aud``, ``exp`` (``nbf``/``iat``
with a small leeway) and ``sub``. The user is found or created by ``sub``. Nothing here asks
the provider's userinfo endpoint, which real providers refuse for ``at+jwt`` access tokens.

Public API:

- :func:`verify_access_token` -- the claims of a valid token, else :class:`InvalidAccessToken`.
- :class:`JWKSCache` / :func:`get_jwks_cache` -- the provider's keys, cached and refetched
  at most once per ``min_refetch_interval`` when a token names an unknown ``kid``.
- :class:`AccessTokenBackend` -- the mozilla-django-oidc backend (bearer: local verification;
  browser code flow: the stock id-token flow, users keyed by ``sub`` too).
- :class:`BearerTokenAuthentication` -- the DRF authentication class.
- :func:`user_from_authorization` / :func:`auser_from_authorization` /
  :func:`authenticate_request` -- for views outside DRF (the streaming view, WebSockets):
  ``Bearer <jwt>`` or ``Token <key>`` -> user, no credentials -> ``None``, bad credentials ->
  :class:`AuthenticationError` (a :class:`~chatproject.errors.ServiceError`, 401).

Tokens are never logged; rejections are logged with a short reason only.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
import jwt
from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist, SuspiciousOperation
from django.core.signals import setting_changed
from django.db import IntegrityError, transaction
from django.dispatch import receiver
from django.http import HttpRequest
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.contrib.drf import OIDCAuthentication
from rest_framework import exceptions, status
from rest_framework.authentication import HTTP_HEADER_ENCODING, get_authorization_header
from rest_framework.request import Request

from chatproject.errors import ServiceError
from chatproject.tokens import TokenAuthentication

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

#: Signature algorithms accepted for access tokens, with the JWK key type each needs.
ALLOWED_ALGORITHMS: dict[str, str] = {"RS256": "RSA", "ES256": "EC"}
#: Accepted ``typ`` header values (lower case, ``application/`` prefix removed). A missing
#: ``typ`` is accepted too (it is optional in RFC 7519).
ALLOWED_TYPES = frozenset({"jwt", "at+jwt"})
#: Payload ``typ`` claims that mark a token as not an access token (Keycloak's id/refresh
#: tokens carry ``typ: "ID"`` / ``"Refresh"`` with a header ``typ: "JWT"``).
REJECTED_PAYLOAD_TYPES = frozenset({"id", "refresh", "logout"})
#: Clock skew tolerated for ``exp``, ``nbf`` and ``iat``.
LEEWAY_SECONDS = 30
#: Longer tokens are refused before parsing.
MAX_TOKEN_LENGTH = 16_384
#: Usernames of OIDC users: ``oidc:<sub>``. ``:`` is refused by Django's username validator,
#: so a user created through a form or ``createsuperuser`` can never take such a name.
USERNAME_PREFIX = "oidc:"
BEARER_CHALLENGE = 'Bearer realm="api"'


# --- Errors -------------------------------------------------------------------------------------
class AuthenticationError(ServiceError):
    """Credentials were presented and are wrong: answer 401 (``exc.as_response()``)."""

    code = "authentication_failed"
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "Invalid credentials."

    def __init__(self, detail: str | None = None, *, challenge: str = BEARER_CHALLENGE) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class InvalidAccessToken(AuthenticationError):
    """A bearer token failed verification; ``reason`` is a short machine-readable cause.

    Reasons: ``malformed``, ``bad_type``, ``bad_algorithm``, ``unknown_key``,
    ``jwks_unavailable``, ``bad_signature``, ``expired``, ``not_yet_valid``,
    ``bad_issuer``, ``bad_audience``, ``missing_claim``, ``not_configured``, ``invalid``.
    """

    def __init__(self, detail: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(detail, challenge=f'{BEARER_CHALLENGE}, error="invalid_token"')


class JWKSUnavailable(InvalidAccessToken):
    """The provider's JWKS could not be fetched and no usable key is cached."""

    def __init__(self, detail: str = "The token signing keys are unavailable.") -> None:
        super().__init__(detail, reason="jwks_unavailable")


# --- JWKS cache ---------------------------------------------------------------------------------
class JWKSCache:
    """The provider's signing keys, fetched with httpx and cached; thread-safe.

    - Keys are refetched when older than ``ttl``.
    - A token naming an unknown ``kid`` triggers a refetch at most once per
      ``min_refetch_interval`` seconds (key rotation works; forged kids cause no fetch storm).
    - After a failed fetch nothing is fetched for ``failure_backoff`` seconds; cached keys
      stay usable through an outage for at most ``max_stale`` seconds past ``ttl``.

    We do not use PyJWT's ``PyJWKClient``: it refetches on every unknown ``kid`` (no rate
    limit) and uses urllib without the checks below. Only keys usable with
    :data:`ALLOWED_ALGORITHMS` (and ``use`` ``sig`` when present) are kept.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        min_refetch_interval: float = 30.0,
        failure_backoff: float = 5.0,
        max_stale: float = 3600.0,
        timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refetch_interval = min_refetch_interval
        self.failure_backoff = failure_backoff
        self.max_stale = max_stale
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_forced: float | None = None
        self._last_failure: float | None = None
        #: Fetch attempts made (for tests and metrics).
        self.fetch_count = 0

    def get_signing_key(self, kid: str | None) -> jwt.PyJWK:
        """The key for ``kid`` (or the only key when ``kid`` is ``None``).

        Raises :class:`JWKSUnavailable` when no keys can be had, :class:`InvalidAccessToken`
        (reason ``unknown_key``) when the key set has no such key.
        """
        with self._lock:
            now = self._clock()
            if self._is_expired(now) and self._may_fetch(now):
                self._refresh(now)
            if self._fetched_at is not None and now - self._fetched_at > self.ttl + self.max_stale:
                self._keys = {}
            key = self._lookup(kid)
            if key is None and self._may_force(now):
                self._last_forced = now
                self._refresh(now)
                key = self._lookup(kid)
            if key is not None:
                return key
            if not self._keys and self._last_failure is not None:
                raise JWKSUnavailable()
            raise InvalidAccessToken("The token is signed by an unknown key.", reason="unknown_key")

    def clear(self) -> None:
        """Forget every key and timer (tests, settings changes)."""
        with self._lock:
            self._keys = {}
            self._fetched_at = self._last_forced = self._last_failure = None

    # internals (called with the lock held)
    def _is_expired(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self.ttl

    def _may_fetch(self, now: float) -> bool:
        return self._last_failure is None or now - self._last_failure >= self.failure_backoff

    def _may_force(self, now: float) -> bool:
        if not self._may_fetch(now) or self._fetched_at == now:
            return False
        return self._last_forced is None or now - self._last_forced >= self.min_refetch_interval

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        self.fetch_count += 1
        try:
            keys = self._fetch()
        except (httpx.HTTPError, ValueError) as exc:
            self._last_failure = now
            logger.warning("JWKS fetch from %s failed: %s", self.url, type(exc).__name__)
            return
        self._keys = keys
        self._fetched_at = now
        self._last_failure = None

    def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        response = httpx.get(self.url, timeout=self.timeout, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str | None, jwt.PyJWK] = {}
        for data in document["keys"]:
            key = _usable_jwk(data)
            if key is not None:
                keys[data.get("kid")] = key
        return keys


def _usable_jwk(data: Any) -> jwt.PyJWK | None:
    """A PyJWK for a JWKS entry usable for access tokens, else ``None`` (skipped)."""
    if not isinstance(data, dict) or data.get("use", "sig") != "sig":
        return None
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    try:
        key = jwt.PyJWK(data)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if ALLOWED_ALGORITHMS.get(key.algorithm_name) != data.get("kty"):
        return None
    return key


_cache_lock = threading.Lock()
_cache: JWKSCache | None = None


def get_jwks_cache() -> JWKSCache:
    """The process-wide cache for ``settings.OIDC_OP_JWKS_ENDPOINT``."""
    global _cache
    url = settings.OIDC_OP_JWKS_ENDPOINT
    ttl = float(getattr(settings, "OIDC_JWKS_CACHE_SECONDS", 300))
    with _cache_lock:
        if _cache is None or _cache.url != url or _cache.ttl != ttl:
            _cache = JWKSCache(
                url,
                ttl=ttl,
                timeout=float(getattr(settings, "OIDC_JWKS_TIMEOUT_SECONDS", 3.0)),
            )
        return _cache


def reset_jwks_cache() -> None:
    """Drop the process-wide cache (the next token fetches the JWKS again)."""
    global _cache
    with _cache_lock:
        _cache = None


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("OIDC_"):
        reset_jwks_cache()


# --- Verification -------------------------------------------------------------------------------
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


def bearer_enabled() -> bool:
    """Whether ``Authorization: Bearer`` is accepted (issuer and JWKS configured)."""
    return bool(getattr(settings, "OIDC_BEARER_ENABLED", False))


def verify_access_token(token: str) -> dict[str, Any]:
    """The claims of a valid access token; raises :class:`InvalidAccessToken` otherwise.

    Checks: header ``alg`` in :data:`ALLOWED_ALGORITHMS` and equal to the JWK's algorithm
    (so ``none`` and ``HS256`` never pass), header ``typ`` absent, ``JWT`` or ``at+jwt``,
    signature against the JWKS key named by ``kid``, ``iss`` == ``OIDC_OP_ISSUER``, ``aud``
    (string or list) containing ``OIDC_API_AUDIENCE``, ``exp`` required, ``nbf``/``iat`` when
    present (leeway :data:`LEEWAY_SECONDS`), ``sub`` a non-empty string. An id token is refused
    by its audience (the client id, not the API) and, for Keycloak, by its ``typ`` claim.
    With ``OIDC_API_AUDIENCE`` unset every token is refused (fail closed).
    """
    issuer = getattr(settings, "OIDC_OP_ISSUER", "")
    audience = getattr(settings, "OIDC_API_AUDIENCE", "")
    if not issuer or not audience or not getattr(settings, "OIDC_OP_JWKS_ENDPOINT", ""):
        logger.error("bearer token refused: OIDC_OP_ISSUER/OIDC_API_AUDIENCE/JWKS not set")
        raise InvalidAccessToken("Bearer tokens are not configured.", reason="not_configured")
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

    key = get_jwks_cache().get_signing_key(kid)
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
            leeway=LEEWAY_SECONDS,
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
    if not isinstance(sub, str) or not sub.strip():
        raise InvalidAccessToken("The token lacks the 'sub' claim.", reason="missing_claim")
    payload_typ = claims.get("typ")
    if isinstance(payload_typ, str) and payload_typ.lower() in REJECTED_PAYLOAD_TYPES:
        raise InvalidAccessToken("The token is not an access token.", reason="bad_type")
    return claims


# --- Users --------------------------------------------------------------------------------------
def oidc_username(sub: str) -> str:
    """The stable username of the user with OIDC subject ``sub`` (at most 150 characters)."""
    username = f"{USERNAME_PREFIX}{sub}"
    if len(username) <= 150:
        return username
    return f"{USERNAME_PREFIX}sha256:{hashlib.sha256(sub.encode()).hexdigest()}"


def _profile_fields(claims: Mapping[str, Any]) -> dict[str, str]:
    """Email and names from the claims, for the fields the user model has."""
    model = get_user_model()
    candidates = {
        "email": claims.get("email"),
        "first_name": claims.get("given_name") or claims.get("name"),
        "last_name": claims.get("family_name"),
    }
    fields: dict[str, str] = {}
    for name, value in candidates.items():
        if not isinstance(value, str) or not value:
            continue
        try:
            field = model._meta.get_field(name)
        except FieldDoesNotExist:
            continue
        fields[name] = value[: field.max_length] if field.max_length else value
    return fields


def user_for_claims(claims: Mapping[str, Any]) -> AbstractBaseUser:
    """Find or create the user of verified ``claims`` by ``sub``; update email/names.

    Raises :class:`AuthenticationError` when the user exists but is inactive.
    """
    model = get_user_model()
    manager = model._default_manager
    lookup = {model.USERNAME_FIELD: oidc_username(str(claims["sub"]))}
    fields = _profile_fields(claims)
    try:
        user = manager.get(**lookup)
    except model.DoesNotExist:
        try:
            with transaction.atomic():
                user = manager.create_user(**lookup, **fields)  # type: ignore[attr-defined]
            logger.info("created user %s from OIDC subject", user.pk)
            return user
        except IntegrityError:  # a concurrent first request created it
            user = manager.get(**lookup)
    changed = [name for name, value in fields.items() if getattr(user, name) != value]
    if changed:
        for name in changed:
            setattr(user, name, fields[name])
        user.save(update_fields=changed)
    if not user.is_active:
        raise AuthenticationError("User inactive or deleted.")
    return user


class AccessTokenBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc backend whose bearer path never calls the userinfo endpoint.

    - Bearer (DRF, ``id_token`` is ``None``): :func:`verify_access_token`, then the user by
      ``sub``. Raises :class:`InvalidAccessToken` / :class:`AuthenticationError`.
    - Browser code flow (``id_token`` given): the stock flow verifies the id token's
      signature (keys from our :class:`JWKSCache`) and nonce; here we also check its ``iss``
      and that ``aud`` holds ``OIDC_RP_CLIENT_ID``, then use the same user by ``sub``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Read settings like the stock backend, without raising when they are unset."""
        self.OIDC_OP_TOKEN_ENDPOINT = getattr(settings, "OIDC_OP_TOKEN_ENDPOINT", "")
        self.OIDC_OP_USER_ENDPOINT = getattr(settings, "OIDC_OP_USER_ENDPOINT", "")
        self.OIDC_OP_JWKS_ENDPOINT = getattr(settings, "OIDC_OP_JWKS_ENDPOINT", "") or None
        self.OIDC_RP_CLIENT_ID = getattr(settings, "OIDC_RP_CLIENT_ID", "")
        self.OIDC_RP_CLIENT_SECRET = getattr(settings, "OIDC_RP_CLIENT_SECRET", "")
        self.OIDC_RP_SIGN_ALGO = getattr(settings, "OIDC_RP_SIGN_ALGO", "RS256")
        self.OIDC_RP_IDP_SIGN_KEY = getattr(settings, "OIDC_RP_IDP_SIGN_KEY", None)
        self.UserModel = get_user_model()

    def retrieve_matching_jwk(self, token: str) -> jwt.PyJWK:
        """The id token's key from the shared, cached JWKS (browser flow)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            return get_jwks_cache().get_signing_key(kid if isinstance(kid, str) else None)
        except (jwt.InvalidTokenError, InvalidAccessToken) as exc:
            raise SuspiciousOperation("Could not find a valid JWKS.") from exc

    def get_userinfo(self, access_token: str, id_token: str | None, payload: Any) -> dict:
        """Never used for bearer tokens: :meth:`get_or_create_user` works from claims."""
        if id_token is None:
            raise InvalidAccessToken("The token is invalid.", reason="invalid")
        return super().get_userinfo(access_token, id_token, payload)

    def get_or_create_user(
        self, access_token: str, id_token: str | None, payload: dict[str, Any] | None
    ) -> AbstractBaseUser | None:
        """The user for a bearer access token (verified locally) or a browser login."""
        if id_token is None:
            return user_for_claims(verify_access_token(access_token))
        claims = payload or {}
        issuer = getattr(settings, "OIDC_OP_ISSUER", "")
        if issuer and claims.get("iss") != issuer:
            raise SuspiciousOperation("ID token issuer mismatch")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud or [])
        if self.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token audience mismatch")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise SuspiciousOperation("ID token without sub")
        try:
            return user_for_claims(claims)
        except AuthenticationError:
            return None


# --- DRF ----------------------------------------------------------------------------------------
def _parse_authorization(value: str | bytes | None) -> tuple[str, str] | None:
    """``(scheme, credentials)`` for ``Bearer``/``Token`` headers, ``None`` for other schemes.

    Raises :class:`AuthenticationError` for a ``Bearer``/``Token`` header without exactly one
    credential.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode(HTTP_HEADER_ENCODING)
        except UnicodeDecodeError:
            raise AuthenticationError("Invalid Authorization header.") from None
    parts = (value or "").split()
    if not parts:
        return None
    scheme = parts[0].lower()
    if scheme not in ("bearer", "token"):
        return None
    if len(parts) != 2:
        raise AuthenticationError(f"Invalid {parts[0]} header: expected exactly one credential.")
    return scheme, parts[1]


class BearerTokenAuthentication(OIDCAuthentication):
    """DRF authentication for ``Authorization: Bearer <jwt access token>``.

    Returns ``None`` without a bearer header (DRF tokens and sessions still work) or when
    bearer auth is disabled, ``(user, token)`` for a valid token, and raises
    ``AuthenticationFailed`` (401 with ``WWW-Authenticate: Bearer realm="api"``) otherwise.
    """

    def __init__(self, backend: OIDCAuthenticationBackend | None = None) -> None:
        super().__init__(backend or AccessTokenBackend())

    def get_access_token(self, request: Request) -> str | None:
        """The bearer token of the request, or ``None`` when there is none."""
        try:
            parsed = _parse_authorization(get_authorization_header(request))
        except AuthenticationError as exc:
            raise exceptions.AuthenticationFailed(exc.detail) from None
        if parsed is None or parsed[0] != "bearer":
            return None
        return parsed[1]

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, str] | None:
        """``(user, token)`` for a valid bearer token; see the class docstring."""
        if not bearer_enabled():
            return None
        access_token = self.get_access_token(request)
        if not access_token:
            return None
        try:
            user = self.backend.get_or_create_user(access_token, None, None)
        except InvalidAccessToken as exc:
            logger.info("bearer token rejected: %s", exc.reason)
            raise exceptions.AuthenticationFailed(exc.detail) from None
        except AuthenticationError as exc:
            raise exceptions.AuthenticationFailed(exc.detail) from None
        if user is None:
            raise exceptions.AuthenticationFailed("No user for this token.")
        return user, access_token

    def authenticate_header(self, request: Request) -> str:
        """``Bearer realm="api"``: DRF then answers 401 rather than 403."""
        return BEARER_CHALLENGE


# --- Views outside DRF ----------------------------------------------------------------------------
def _user_for_token_key(key: str) -> AbstractBaseUser:
    """The active user of API token ``key``: DRF's token checks, as this module's error."""
    try:
        user, _token = TokenAuthentication().authenticate_credentials(key)
    except exceptions.AuthenticationFailed as exc:
        raise AuthenticationError(str(exc.detail), challenge="Token") from None
    return user


def user_from_authorization(value: str | bytes | None) -> AbstractBaseUser | None:
    """The user named by an ``Authorization`` header value (sync; touches the database).

    ``Bearer <jwt>`` (when bearer auth is enabled) and ``Token <key>`` give the user or raise
    :class:`AuthenticationError` (401); no header, another scheme, or ``Bearer`` while bearer
    auth is disabled give ``None`` -- the caller then falls back to the session.
    """
    parsed = _parse_authorization(value)
    if parsed is None:
        return None
    scheme, credentials = parsed
    if scheme == "token":
        return _user_for_token_key(credentials)
    if not bearer_enabled():
        return None
    try:
        return user_for_claims(verify_access_token(credentials))
    except InvalidAccessToken as exc:
        logger.info("bearer token rejected: %s", exc.reason)
        raise


async def auser_from_authorization(value: str | bytes | None) -> AbstractBaseUser | None:
    """Async :func:`user_from_authorization` (e.g. for a WebSocket scope's headers)."""
    parsed = _parse_authorization(value)
    if parsed is None:
        return None
    scheme, credentials = parsed
    if scheme == "token":
        return await sync_to_async(_user_for_token_key)(credentials)
    if not bearer_enabled():
        return None
    return await sync_to_async(user_from_authorization)(value)


async def authenticate_request(request: HttpRequest) -> AbstractBaseUser | None:
    """The user named by the request's ``Authorization`` header, for async Django views.

    Returns ``None`` when the header carries no ``Bearer``/``Token`` credentials (fall back
    to ``await request.auser()``); raises :class:`AuthenticationError` for bad credentials::

        try:
            user = await authenticate_request(request) or await request.auser()
        except AuthenticationError as exc:
            return exc.as_response()  # 401 JSON {"detail", "code"} + WWW-Authenticate
    """
    return await auser_from_authorization(request.headers.get("Authorization"))
