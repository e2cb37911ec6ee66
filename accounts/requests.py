"""The caller of a plain (non-DRF) Django view: credentials, else the session with CSRF."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

from accounts.errors import BEARER_CHALLENGE
from accounts.services import authenticate
from accounts.throttling import client_ip
from core.errors import ServiceError

_csrf = CsrfViewMiddleware(lambda _request: HttpResponse())


def request_user(request: HttpRequest, *, transport: str) -> AbstractBaseUser:
    """The caller (sync; touches the database), as DRF would find it.

    ``Authorization`` credentials through :func:`accounts.services.authenticate`, else the
    Django session, which must carry the CSRF token on writes (as DRF's
    ``SessionAuthentication`` enforces). Raises :class:`ServiceError` 401 without
    credentials, 403 for a missing CSRF token, and the 401/429 of bad credentials.
    """
    user = authenticate(
        request.headers.get("Authorization"), client_ip=client_ip(request), transport=transport
    )
    if user is not None:
        return user
    user = request.user
    if not user.is_authenticated:
        raise ServiceError(
            "Authentication credentials were not provided.",
            code="not_authenticated",
            status_code=401,
            headers={"WWW-Authenticate": BEARER_CHALLENGE},
        )
    if request.method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
        _csrf.process_request(request)
        if _csrf.process_view(request, None, (), {}) is not None:
            raise ServiceError(
                "CSRF verification failed.", code="permission_denied", status_code=403
            )
    return user
