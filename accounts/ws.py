"""WebSocket authentication, origin check and socket limit (docs/api.md#websocket).

Browsers cannot set ``Authorization`` on a WebSocket, so a token travels as a pair of
subprotocols, the scheme then the credentials::

    new WebSocket(url, ["token", "<DRF token key>"])     // Authorization: Token <key>
    new WebSocket(url, ["bearer", "<OIDC access JWT>"])  // Authorization: Bearer <jwt>

The consumer accepts the connection with the scheme (``token`` / ``bearer``) as its
subprotocol, never echoing the credentials. Non-browser clients may send an
``Authorization`` header instead. Without either, the session cookie of a logged-in
browser is used (channels' ``AuthMiddlewareStack``; :class:`SameOriginValidator` guards
it against cross-site WebSocket hijacking).

Credentials go through :func:`accounts.services.authenticate`, the path of every other
transport (same answer, throttle and log line). Credentials that are presented and wrong
never fall back to the session: the scope's user is anonymous and ``scope["auth_error"]``
holds the error's code. :func:`scope_user_recheck` checks the same credentials again for
every frame that starts work, so a deleted token, a deactivated user, an expired JWT or a
logged-out session stops the socket (the consumer closes it with 4401).
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.middleware import BaseMiddleware
from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http.request import split_domain_port, validate_host

from accounts.access_tokens import prefetch_key
from accounts.errors import AuthenticationError, TooManyAuthenticationFailures
from accounts.services import authenticate, parse_authorization
from core.db import db_run

logger = logging.getLogger("accounts.ws")

#: The close code of a connection without (valid) credentials: 4000 + HTTP 401.
CLOSE_UNAUTHENTICATED = 4401
#: The close code of a socket over the user's ``CHAT_MAX_SOCKETS``: 4000 + HTTP 429.
CLOSE_TOO_MANY = 4429
#: Subprotocol scheme -> ``Authorization`` scheme.
SUBPROTOCOL_SCHEMES = {"token": "Token", "bearer": "Bearer"}


def credentials_from_scope(scope: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(Authorization value, subprotocol to accept)`` from a WebSocket scope.

    The subprotocol pair wins over the header; ``(None, None)`` when neither is there.
    """
    subprotocols = list(scope.get("subprotocols") or [])
    for position, name in enumerate(subprotocols[:-1]):
        scheme = SUBPROTOCOL_SCHEMES.get(name.lower())
        if scheme is not None:
            return f"{scheme} {subprotocols[position + 1]}", name
    for header, value in scope.get("headers") or []:
        if header.lower() == b"authorization":
            return value.decode("latin-1"), None
    return None, None


def _client_ip(scope: dict[str, Any]) -> str:
    client = scope.get("client") or ("-", 0)
    return str(client[0])


async def _authenticate(authorization: str, scope: dict[str, Any]) -> AbstractBaseUser | None:
    parsed = None
    with contextlib.suppress(AuthenticationError):  # authenticate() below refuses it
        parsed = parse_authorization(authorization)
    if parsed is not None and parsed[0] == "bearer":
        await prefetch_key(parsed[1])  # in the event loop, never in a database thread
    return await db_run(authenticate, authorization, client_ip=_client_ip(scope), transport="ws")


def _session_user(session_key: str | None) -> AbstractBaseUser:
    """The session's user as stored now (sync): anonymous once logged out or inactive."""
    if not session_key:
        return AnonymousUser()
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return get_user(SimpleNamespace(session=store))  # type: ignore[arg-type]


async def scope_user_recheck(scope: dict[str, Any]) -> AbstractBaseUser:
    """The socket's user, checked again now with the credentials it opened with.

    Raises :class:`AuthenticationError` when they no longer hold (token deleted, user
    deactivated, JWT expired, session logged out) or the 429 past the failure limit.
    """
    authorization = scope.get("auth_authorization")
    if authorization is not None:
        user = await _authenticate(authorization, scope)
    else:
        session = scope.get("session")
        user = await db_run(_session_user, getattr(session, "session_key", None))
    if user is None or not user.is_authenticated:
        raise AuthenticationError(
            "The credentials of this socket no longer hold.", reason="expired"
        )
    return user


class TokenAuthMiddleware(BaseMiddleware):
    """Put the user named by a token (subprotocol pair or header) in ``scope["user"]``.

    Runs inside channels' ``AuthMiddleware``, so without a token the session's user stays.
    Sets ``scope["auth_subprotocol"]`` (the subprotocol the consumer must accept with) and
    ``scope["auth_authorization"]`` (what :func:`scope_user_recheck` checks again).
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = dict(scope)
        authorization, subprotocol = credentials_from_scope(scope)
        scope["auth_subprotocol"] = subprotocol
        scope["auth_authorization"] = authorization
        if authorization is not None:
            try:
                user = await _authenticate(authorization, scope)
            except (AuthenticationError, TooManyAuthenticationFailures) as exc:
                scope["user"] = AnonymousUser()
                scope["auth_error"] = exc.code
            else:
                if user is not None:
                    scope["user"] = user
                else:  # e.g. "bearer" while bearer auth is off: never the session
                    logger.info(
                        "auth.rejected",
                        extra={"scheme": "bearer", "reason": "scheme_disabled", "transport": "ws"},
                    )
                    scope["user"] = AnonymousUser()
                    scope["auth_error"] = "authentication_failed"
        return await super().__call__(scope, receive, send)


def TokenOrSessionAuthMiddlewareStack(inner: Any) -> Any:
    """Cookies, session and session user (channels), then a token when one is presented."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))


# --- origin -------------------------------------------------------------------------------------
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


def _origin_key(origin: str) -> tuple[str, str] | None:
    """``(host, port)`` of an origin, the scheme's default port filled in."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname.lower(), str(port or _DEFAULT_PORTS[parts.scheme])


def origin_allowed(origin: str, host: str) -> bool:
    """Whether a browser's ``Origin`` may open a socket on ``host`` (the ``Host`` header).

    Same origin: the origin's host and port are those of ``Host``, and ``Host`` is in
    ``ALLOWED_HOSTS``. Or the origin is one of ``CSRF_TRUSTED_ORIGINS`` /
    ``CORS_ALLOWED_ORIGINS`` exactly (host and port).
    """
    key = _origin_key(origin)
    if key is None:
        return False
    trusted = [*settings.CSRF_TRUSTED_ORIGINS, *settings.CORS_ALLOWED_ORIGINS]
    if any(_origin_key(other) == key for other in trusted):
        return True
    domain, port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return False
    scheme = urlsplit(origin).scheme
    return key == (domain.strip("[]").lower(), port or _DEFAULT_PORTS[scheme])


class SameOriginValidator:
    """Refuses WebSockets that a browser opens from another origin (scheme, host and port).

    Browsers always send ``Origin``; a connection without one is not a browser's (scripts,
    servers), carries its own credentials and is let through.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            headers = dict(scope.get("headers") or [])
            origin = headers.get(b"origin")
            if origin is not None and not origin_allowed(
                origin.decode("latin-1"), headers.get(b"host", b"").decode("latin-1")
            ):
                logger.info("ws.origin_refused")
                denier = WebsocketDenier()
                return await denier(scope, receive, send)
        return await self.application(scope, receive, send)


# --- socket limit -------------------------------------------------------------------------------
class SocketCounter:
    """Open sockets per user in this process (``CHAT_MAX_SOCKETS`` each)."""

    def __init__(self) -> None:
        self._open: Counter[int] = Counter()

    def acquire(self, user_id: int) -> bool:
        """Count one more socket of ``user_id``; ``False`` (not counted) past the limit."""
        if self._open[user_id] >= settings.CHAT_MAX_SOCKETS:
            return False
        self._open[user_id] += 1
        return True

    def release(self, user_id: int) -> None:
        """One socket of ``user_id`` closed."""
        self._open[user_id] -= 1
        if self._open[user_id] <= 0:
            del self._open[user_id]

    def count(self, user_id: int) -> int:
        """Open sockets of ``user_id``."""
        return self._open[user_id]


sockets = SocketCounter()
