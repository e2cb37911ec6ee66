"""Throttling of failed authentication: a client that keeps presenting bad credentials
gets 429 with ``Retry-After`` instead of another 401, per client address.

Counts live in Django's cache: per process by default, shared through Redis when
``REDIS_URL`` is set. Anonymous API traffic in general is throttled by DRF's
``AnonRateThrottle`` (``API_ANON_THROTTLE``).
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest

from chatproject.errors import ServiceError

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


class TooManyAuthenticationFailures(ServiceError):
    code = "too_many_authentication_failures"
    status_code = 429
    default_detail = "Too many failed authentication attempts. Wait and try again."


def _key(request: HttpRequest, window: int) -> str:
    return f"authfail:{request.META.get('REMOTE_ADDR', '-')}:{window}"


def auth_failure_record(request: HttpRequest) -> None:
    """Count one failed authentication of this client; raise 429 past the limit."""
    limit = settings.AUTH_FAILURES_PER_MINUTE
    now = time.time()
    window = int(now // WINDOW_SECONDS)
    key = _key(request, window)
    cache.add(key, 0, WINDOW_SECONDS * 2)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, WINDOW_SECONDS * 2)
        count = 1
    if count > limit:
        retry_after = max(1, int((window + 1) * WINDOW_SECONDS - now))
        logger.warning("auth.throttled", extra={"failures": count})
        raise TooManyAuthenticationFailures(headers={"Retry-After": str(retry_after)})
