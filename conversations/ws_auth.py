"""WebSocket authentication (contract 3.4 and 4): a token, or the Django session cookie.

Browsers cannot set ``Authorization`` on a WebSocket, so a token travels as a pair of
subprotocols, the scheme then the credentials::

    new WebSocket(url, ["token", "<DRF token key>"])     // Authorization: Token <key>
    new WebSocket(url, ["bearer", "<OIDC access JWT>"])  // Authorization: Bearer <jwt>

The consumer accepts the connection with the scheme (``token`` / ``bearer``) as its
subprotocol, never echoing the credentials. Non-browser clients may send an
``Authorization: Token <key>`` / ``Bearer <jwt>`` header instead. Without either, the
session cookie of a logged-in browser is used (channels' ``AuthMiddlewareStack``; the
``AllowedHostsOriginValidator`` in ``chatproject/asgi.py`` guards it against cross-site
WebSocket hijacking, so every client must send an ``Origin`` of an allowed host).

Credentials that are presented and wrong never fall back to the session: the scope's user
is anonymous and ``scope["auth_error"]`` holds the error's code. The consumer then accepts,
sends ``{"type": "error", "code": "not_authenticated" | "authentication_failed",
"detail": ..., "status": 401}`` and closes with code :data:`CLOSE_UNAUTHENTICATED` (4401).

Tokens are never logged; a rejection is logged with its scheme and code only.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.middleware import BaseMiddleware
from channels.security.websocket import OriginValidator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from chatproject.authentication import AuthenticationError, auser_from_authorization

logger = logging.getLogger("conversations.ws")

#: The close code of a connection without (valid) credentials: 4000 + HTTP 401.
CLOSE_UNAUTHENTICATED = 4401
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


class TokenAuthMiddleware(BaseMiddleware):
    """Put the user named by a token (subprotocol pair or header) in ``scope["user"]``.

    Runs inside channels' ``AuthMiddleware``, so without a token the session's user stays.
    Sets ``scope["auth_subprotocol"]`` to the subprotocol the consumer must accept with.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = dict(scope)
        authorization, subprotocol = credentials_from_scope(scope)
        scope["auth_subprotocol"] = subprotocol
        if authorization is not None:
            try:
                user = await auser_from_authorization(authorization)
            except AuthenticationError as exc:
                logger.info(
                    "ws.auth_rejected",
                    extra={"scheme": authorization.split(" ", 1)[0].lower(), "code": exc.code},
                )
                scope["user"] = AnonymousUser()
                scope["auth_error"] = exc.code
            else:
                if user is not None:
                    scope["user"] = user
                elif subprotocol is not None:  # e.g. "bearer" while bearer auth is off
                    logger.info(
                        "ws.auth_rejected",
                        extra={"scheme": subprotocol.lower(), "code": "scheme_disabled"},
                    )
                    scope["user"] = AnonymousUser()
                    scope["auth_error"] = "authentication_failed"
        return await super().__call__(scope, receive, send)


def TokenOrSessionAuthMiddlewareStack(inner: Any) -> Any:
    """Cookies, session and session user (channels), then a token when one is presented."""
    return AuthMiddlewareStack(TokenAuthMiddleware(inner))


class BrowserOriginValidator(OriginValidator):
    """Refuses WebSockets that a browser opens from a foreign origin.

    Browsers always send ``Origin``, so cross-site WebSocket hijacking is stopped by
    checking it against ``ALLOWED_HOSTS``. A connection without ``Origin`` is not a
    browser's (scripts, servers); it carries its own credentials and is let through.
    """

    def valid_origin(self, parsed_origin: Any) -> bool:
        if parsed_origin is None:
            return True
        return super().valid_origin(parsed_origin)


def AllowedOriginValidator(application: Any) -> BrowserOriginValidator:
    """:class:`BrowserOriginValidator` with ``ALLOWED_HOSTS`` (like channels' own factory)."""
    allowed_hosts = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed_hosts:
        allowed_hosts = ["localhost", "127.0.0.1", "[::1]"]
    return BrowserOriginValidator(application, allowed_hosts)
