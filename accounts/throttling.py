"""Throttling of failed authentication (docs/api.md#throttling-failed-authentication).

A client that keeps presenting bad credentials gets 429 with ``Retry-After`` instead of
another 401: bad API tokens and bearer tokens on every transport, and wrong passwords on
the login pages (the chat page's and the admin's), per client address and, for
passwords, per username too. ``AUTH_FAILURES_PER_MINUTE`` failures are allowed a minute.

Counts live in Django's cache: per process by default, shared through Redis when
``REDIS_URL`` is set.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.core.cache import cache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse

from accounts.errors import TooManyAuthenticationFailures

logger = logging.getLogger("accounts")

WINDOW_SECONDS = 60


def _keys(client_ip: str, username: str | None, window: int) -> list[str]:
    keys = [f"authfail:ip:{client_ip or '-'}:{window}"]
    if username:
        digest = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
        keys.append(f"authfail:user:{digest}:{window}")
    return keys


def _retry_after(window: int, now: float) -> int:
    return max(1, int((window + 1) * WINDOW_SECONDS - now))


def failures_blocked(*, client_ip: str, username: str | None = None) -> int | None:
    """Seconds to wait when this client (or username) is past the limit, else ``None``."""
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    counts = cache.get_many(_keys(client_ip, username, window))
    if any(count >= settings.AUTH_FAILURES_PER_MINUTE for count in counts.values()):
        return _retry_after(window, now)
    return None


def failure_record(*, client_ip: str, username: str | None = None) -> None:
    """Count one failed authentication; raise :class:`TooManyAuthenticationFailures` (429)
    once the client (or the username) is past ``AUTH_FAILURES_PER_MINUTE`` this minute."""
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    highest = 0
    for key in _keys(client_ip, username, window):
        cache.add(key, 0, WINDOW_SECONDS * 2)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, WINDOW_SECONDS * 2)
            count = 1
        highest = max(highest, count)
    if highest > settings.AUTH_FAILURES_PER_MINUTE:
        logger.warning("auth.throttled", extra={"failures": highest})
        raise TooManyAuthenticationFailures(headers={"Retry-After": str(_retry_after(window, now))})


def client_ip(request: HttpRequest) -> str:
    """The client's address as the server saw it (daphne's ``--proxy-headers`` behind nginx)."""
    return request.META.get("REMOTE_ADDR") or "-"


@receiver(user_login_failed)
def _login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any):
    """A wrong password on a login form counts like a bad token (the 429 comes from
    :func:`login_throttled` on the next attempt)."""
    if request is None:
        return
    username = credentials.get("username")
    logger.info("auth.rejected", extra={"scheme": "password", "reason": "bad_password"})
    with contextlib.suppress(TooManyAuthenticationFailures):
        failure_record(client_ip=client_ip(request), username=username or None)


def login_throttled(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A login view that answers 429 with ``Retry-After``, without checking the password,
    while the client address or the username is past the failure limit."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            username = request.POST.get("username") or None
            wait = failures_blocked(client_ip=client_ip(request), username=username)
            if wait is not None:
                logger.warning("auth.throttled", extra={"scheme": "password"})
                response = HttpResponse(
                    "Too many failed login attempts. Wait a minute and try again.\n",
                    status=429,
                    content_type="text/plain; charset=utf-8",
                )
                response["Retry-After"] = str(wait)
                return response
        return view(request, *args, **kwargs)

    return wrapper
