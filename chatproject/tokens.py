"""API tokens (``Authorization: Token <key>``): DRF's authentication, with a cheaper read.

Its own module, importing no view code: DRF imports the authentication classes named in
its settings while its own views module loads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication as DRFTokenAuthentication

from chatproject import sql

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from rest_framework.authtoken.models import Token


def token_lookup(key: str) -> Token | None:
    """The API token ``key`` with its user loaded, or ``None`` (sync; touches the database).

    Every chat turn authenticates, so this is plain SQL (:mod:`chatproject.sql`): two
    primary-key reads cost less CPU than the ORM's one ``select_related`` query.
    """
    from rest_framework.authtoken.models import Token  # not before the app registry is ready

    tokens = sql.select(Token, {"key": key})
    if not tokens:
        return None
    token = tokens[0]
    users = sql.select(get_user_model(), {"pk": token.user_id})
    if not users:
        return None
    token.user = users[0]
    return token


class TokenAuthentication(DRFTokenAuthentication):
    """DRF's ``Token <key>`` authentication, with the token read by :func:`token_lookup`;
    the same answers (401 "Invalid token." and "User inactive or deleted.")."""

    def authenticate_credentials(self, key: str) -> tuple[AbstractBaseUser, Token]:
        """``(user, token)`` for an active user's token; ``AuthenticationFailed`` otherwise."""
        token = token_lookup(key)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return token.user, token
