"""DRF's authentication class: the one path of :func:`accounts.services.authenticate`."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.access_tokens import bearer_enabled
from accounts.errors import BEARER_CHALLENGE, AuthenticationError
from accounts.services import authenticate
from accounts.throttling import client_ip


class CredentialsAuthentication(BaseAuthentication):
    """``Authorization: Token <key>`` and ``Bearer <jwt>`` for the REST API.

    Returns ``None`` without such a header (the session is tried next), ``(user, None)``
    for good credentials, and raises ``AuthenticationFailed`` (401 with
    ``WWW-Authenticate``) for bad ones; past the failure limit the 429 of
    :mod:`accounts.throttling` propagates to the exception handler.
    """

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, None] | None:
        """``(user, None)`` for good credentials; see the class docstring."""
        try:
            user = authenticate(
                get_authorization_header(request),
                client_ip=client_ip(request._request),
                transport="rest",
            )
        except AuthenticationError as exc:
            raise exceptions.AuthenticationFailed(exc.detail) from None
        return None if user is None else (user, None)

    def authenticate_header(self, request: Request) -> str:
        """The challenge of a 401 (so DRF answers 401 rather than 403)."""
        return BEARER_CHALLENGE if bearer_enabled() else "Token"
