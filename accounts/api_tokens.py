"""API tokens (``Authorization: Token <key>``): DRF's token model, read cheaply.

Every chat turn authenticates, so the read is plain SQL (:mod:`core.sql`): the token's
user in one statement (a primary-key read through the token's key) costs less CPU than
the ORM's ``select_related`` query. Nothing is cached: a deleted token or a deactivated
user is refused at the next request, on every process.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from rest_framework.authtoken.models import Token

from accounts.errors import AuthenticationError
from core import sql


def token_lookup(key: str) -> Token | None:
    """The API token ``key`` with its user loaded, or ``None`` (sync; touches the database)."""
    tokens = sql.select(Token, {"key": key})
    if not tokens:
        return None
    token = tokens[0]
    users = sql.select(get_user_model(), {"pk": token.user_id})
    if not users:
        return None
    token.user = users[0]
    return token


def user_for_api_token(key: str) -> AbstractBaseUser:
    """The active user of API token ``key``; :class:`AuthenticationError` otherwise, with
    DRF's own words ("Invalid token.", "User inactive or deleted.")."""
    user = sql.select_through(get_user_model(), via=Token, fk="user", where={"key": key})
    if user is None:
        raise AuthenticationError("Invalid token.", reason="unknown_token", challenge="Token")
    if not user.is_active:
        raise AuthenticationError(
            "User inactive or deleted.", reason="inactive_user", challenge="Token"
        )
    return user
