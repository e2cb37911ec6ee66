"""The mozilla-django-oidc backend: browser login by the code flow, bearer tokens locally.

The stock backend asks the userinfo endpoint for bearer tokens, which real providers
refuse for ``typ: at+jwt`` access tokens, and its ``verify_token`` checks neither ``aud``
nor ``iss``. Here a bearer token goes through :func:`accounts.services.authenticate`'s own
verification, and a browser login's id token is checked for ``iss`` and ``aud`` too; both
find the user by ``(issuer, sub)``.
"""

from __future__ import annotations

from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import SuspiciousOperation
from mozilla_django_oidc.auth import OIDCAuthenticationBackend

from accounts.access_tokens import verify_access_token
from accounts.errors import AuthenticationError, InvalidAccessToken
from accounts.jwks import get_jwks_cache
from accounts.services import user_for_claims


class AccessTokenBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc backend whose bearer path never calls the userinfo endpoint.

    - Bearer (``id_token`` is ``None``): :func:`verify_access_token`, then the user by
      ``(iss, sub)``. Raises :class:`InvalidAccessToken` / :class:`AuthenticationError`.
    - Browser code flow (``id_token`` given): the stock flow verifies the id token's
      signature (keys from our JWKS cache) and nonce; here we also check its ``iss`` and
      that ``aud`` holds ``OIDC_RP_CLIENT_ID``, then use the same user by ``(iss, sub)``.
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
        """The id token's key from the shared JWKS cache (browser flow; its callback view
        runs in a thread of its own, so waiting for a fetch blocks nobody else)."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            return get_jwks_cache().key_for_blocking(kid if isinstance(kid, str) else None)
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
        issuer = settings.OIDC_OP_ISSUER
        if id_token is None:
            return user_for_claims(verify_access_token(access_token), issuer=issuer)
        claims = payload or {}
        if issuer and claims.get("iss") != issuer:
            raise SuspiciousOperation("ID token issuer mismatch")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else list(aud or [])
        if self.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("ID token audience mismatch")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise SuspiciousOperation("ID token without a valid sub")
        try:
            return user_for_claims(claims, issuer=str(claims.get("iss") or issuer))
        except AuthenticationError:
            return None
