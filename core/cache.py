"""Django's Redis cache with one connection pool per process (docs/operations.md#scaling-out).

Django's ``RedisCache`` builds its client, and with it its connection pool, per cache
instance, and ``django.core.cache.caches`` makes one instance per thread and per async
context. Under ASGI every request is a new context: every chat turn (whose route plan
reads the circuit breakers from the cache) opened a new connection to Redis (connect,
``HELLO``, ``SELECT``), used it once and dropped it when the request's context went.
Django tickets #33625 and #35651 (open) describe it; the patches proposed there share the
pool the same way. Our few lines rather than a library: django-redis shares pools but is
a whole second cache backend with its own settings, for this one fix.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property


class _LockedPoolsClient(RedisCacheClient):
    """``RedisCacheClient`` whose lazily made pools are made once when threads share it."""

    def __init__(self, servers: list[str], **options: Any) -> None:
        super().__init__(servers, **options)
        self._pools_lock = threading.Lock()

    def _get_connection_pool(self, write: bool) -> Any:
        with self._pools_lock:
            return super()._get_connection_pool(write)


class PooledRedisCache(RedisCache):
    """``RedisCache`` whose client (and so its connection pool) is shared by every instance
    with the same servers and options in the process. redis-py's connection pool is
    thread-safe and re-made in a forked child; a connection goes back to the pool after
    each command, as with Django's own client."""

    _clients: ClassVar[dict[tuple[Any, ...], RedisCacheClient]] = {}
    _clients_lock: ClassVar[threading.Lock] = threading.Lock()

    @cached_property
    def _cache(self) -> RedisCacheClient:
        key = (tuple(self._servers), repr(sorted(self._options.items())))
        with self._clients_lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = _LockedPoolsClient(self._servers, **self._options)
        return client
