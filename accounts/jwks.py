"""The OpenID provider's signing keys (JWKS), fetched asynchronously and cached.

Fetching never blocks the event loop or a database thread (docs/api.md#oidc-bearer-tokens):

- :meth:`JWKSCache.key_for` (async) is awaited in the event loop before any database unit
  runs: by :class:`accounts.middleware.BearerKeysMiddleware` for HTTP and by the WebSocket
  authentication for sockets. It returns a held key at once; it waits only when the key
  it needs is not held, and then only for the one fetch in flight (every waiter shares it).
- :meth:`JWKSCache.cached_key` (sync) is what verification in a database thread uses: a
  dictionary read, never I/O.
- Keys past their ``ttl`` keep working while a background refresh runs, and through an
  outage for ``max_stale`` seconds more. A token naming an unknown ``kid`` causes at most
  one fetch per ``min_refetch_interval`` (key rotation works; forged kids cause no fetch
  storm); after a failed fetch nothing is fetched for ``failure_backoff`` seconds.

We do not use PyJWT's ``PyJWKClient``: it fetches synchronously with urllib, on every
unknown ``kid``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
from asgiref.sync import async_to_sync
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from accounts.errors import InvalidAccessToken, JWKSUnavailable

logger = logging.getLogger("accounts.jwks")

#: Signature algorithms accepted for access tokens, with the JWK key type each needs.
ALLOWED_ALGORITHMS: dict[str, str] = {"RS256": "RSA", "ES256": "EC"}


class JWKSCache:
    """One provider's keys; safe to share between the event loop and threads."""

    def __init__(
        self,
        url: str,
        *,
        ttl: float = 300.0,
        min_refetch_interval: float = 30.0,
        failure_backoff: float = 5.0,
        max_stale: float = 3600.0,
        timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.ttl = ttl
        self.min_refetch_interval = min_refetch_interval
        self.failure_backoff = failure_backoff
        self.max_stale = max_stale
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()  # guards the fields below; never held across I/O
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._last_forced: float | None = None
        self._last_failure: float | None = None
        self._inflight: asyncio.Task[None] | None = None
        #: Fetches started (for tests and metrics).
        self.fetch_count = 0

    # --- reading ---------------------------------------------------------------------
    def cached_key(self, kid: str | None) -> jwt.PyJWK:
        """The held key for ``kid`` (the only key when ``kid`` is ``None``); no I/O.

        Raises :class:`JWKSUnavailable` when no keys can be had, :class:`InvalidAccessToken`
        (reason ``unknown_key``) when the held key set has no such key.
        """
        with self._lock:
            key = self._lookup(kid, self._clock())
            if key is not None:
                return key
            if not self._keys and self._last_failure is not None:
                raise JWKSUnavailable()
        raise InvalidAccessToken("The token is signed by an unknown key.", reason="unknown_key")

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key for ``kid``, fetching the key set first when it is not held.

        A held key answers at once (an expired key set is refreshed in the background);
        an unknown ``kid`` waits for the one fetch in flight, if a fetch is allowed now.
        Raises like :meth:`cached_key`.
        """
        task: asyncio.Task[None] | None = None
        with self._lock:
            now = self._clock()
            key = self._lookup(kid, now)
            expired = self._fetched_at is None or now - self._fetched_at >= self.ttl
            if key is not None:
                if expired and self._may_fetch(now):
                    self._start_fetch()  # old keys keep working meanwhile
                return key
            if expired:
                wait = self._may_fetch(now)
            else:
                wait = self._may_force(now)
                if wait:
                    self._last_forced = now
            if wait:
                task = self._start_fetch()
        if task is not None:
            await asyncio.shield(task)
        return self.cached_key(kid)

    def key_for_blocking(self, kid: str | None) -> jwt.PyJWK:
        """:meth:`key_for` from sync code outside any database unit (the browser login's
        callback view, which runs in a thread of its own)."""
        return async_to_sync(self.key_for)(kid)

    def clear(self) -> None:
        """Forget every key and timer (tests, settings changes)."""
        with self._lock:
            self._keys = {}
            self._fetched_at = self._last_forced = self._last_failure = None
            self._inflight = None

    # --- internals (called with the lock held) ----------------------------------------
    def _lookup(self, kid: str | None, now: float) -> jwt.PyJWK | None:
        if self._fetched_at is not None and now - self._fetched_at > self.ttl + self.max_stale:
            self._keys = {}
        if kid is None:
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _may_fetch(self, now: float) -> bool:
        return self._last_failure is None or now - self._last_failure >= self.failure_backoff

    def _may_force(self, now: float) -> bool:
        if not self._may_fetch(now) or self._fetched_at == now:
            return False
        return self._last_forced is None or now - self._last_forced >= self.min_refetch_interval

    def _start_fetch(self) -> asyncio.Task[None]:
        """The fetch in flight on this event loop, or a new one."""
        task = self._inflight
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            self.fetch_count += 1
            task = self._inflight = loop.create_task(self._refresh())
        return task

    # --- the fetch (no lock held across I/O) --------------------------------------------
    async def _refresh(self) -> None:
        started = time.monotonic()
        try:
            keys = await self._fetch()
        except (httpx.HTTPError, ValueError) as exc:
            with self._lock:
                self._last_failure = self._clock()
            logger.warning(
                "jwks.fetch_failed",
                extra={
                    "error": type(exc).__name__,
                    "ms": round(1000 * (time.monotonic() - started)),
                },
            )
            return
        with self._lock:
            self._keys = keys
            self._fetched_at = self._clock()
            self._last_failure = None
        logger.info(
            "jwks.fetched",
            extra={"keys": len(keys), "ms": round(1000 * (time.monotonic() - started))},
        )

    async def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.get(self.url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str | None, jwt.PyJWK] = {}
        for data in document["keys"]:
            key = usable_jwk(data)
            if key is not None:
                keys[data.get("kid")] = key
        return keys


def usable_jwk(data: Any) -> jwt.PyJWK | None:
    """A PyJWK for a JWKS entry usable for access tokens, else ``None`` (skipped)."""
    if not isinstance(data, dict) or data.get("use", "sig") != "sig":
        return None
    kid = data.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    try:
        key = jwt.PyJWK(data)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        return None
    if ALLOWED_ALGORITHMS.get(key.algorithm_name) != data.get("kty"):
        return None
    return key


_cache_lock = threading.Lock()
_cache: JWKSCache | None = None


def get_jwks_cache() -> JWKSCache:
    """The process-wide cache for ``settings.OIDC_OP_JWKS_ENDPOINT``."""
    global _cache
    url = settings.OIDC_OP_JWKS_ENDPOINT
    ttl = float(settings.OIDC_JWKS_CACHE_SECONDS)
    with _cache_lock:
        if _cache is None or _cache.url != url or _cache.ttl != ttl:
            _cache = JWKSCache(url, ttl=ttl, timeout=float(settings.OIDC_JWKS_TIMEOUT_SECONDS))
        return _cache


def reset_jwks_cache() -> None:
    """Drop the process-wide cache (the next token fetches the JWKS again)."""
    global _cache
    with _cache_lock:
        _cache = None


@receiver(setting_changed)
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting.startswith("OIDC_"):
        reset_jwks_cache()
