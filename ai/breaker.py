"""A circuit breaker per route, shared by every server process (docs/api.md#routing).

A route that failed ``AI_BREAKER_FAILURES`` (5) times in a row opens: turns skip it for
``AI_BREAKER_COOLDOWN_SECONDS`` (30). Then it is half-open: one turn (the one whose atomic
``cache.add`` of the probe key wins) tries it first; a success closes it, a failure opens
it again for another cooldown. The state lives in Django's cache (Redis when
``REDIS_URL`` is set, so four daphne processes share one count; the process's memory
otherwise), under three keys per route: the consecutive failures, when it opened, and the
probe lock. Our own few lines rather than a library: the breaker libraries (pybreaker,
aiobreaker) keep their state in process memory or their own Redis client, not in
Django's cache.

A cache that fails is never a turn's failure: the breaker then reads as closed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from prometheus_client.core import GaugeMetricFamily, Metric

logger = logging.getLogger("ai.routing")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
#: The ``chat_breaker_state`` gauge's value of each state.
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

_PREFIX = "ai:breaker:"
#: How long a failure count lives without news (a route idle this long starts afresh).
_FAILURES_TTL = 24 * 3600


def _keys(route: str) -> tuple[str, str, str]:
    base = _PREFIX + route
    return base + ":failures", base + ":opened_at", base + ":probe"


def failure_threshold() -> int:
    """``AI_BREAKER_FAILURES`` (at least 1)."""
    return max(1, int(getattr(settings, "AI_BREAKER_FAILURES", 5)))


def cooldown_seconds() -> float:
    """``AI_BREAKER_COOLDOWN_SECONDS`` (at least 0)."""
    return max(0.0, float(getattr(settings, "AI_BREAKER_COOLDOWN_SECONDS", 30)))


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One route's breaker as read from the cache."""

    route: str
    state: str
    failures: int
    #: Unix time it opened (``None`` when closed).
    opened_at: float | None

    @property
    def retry_in(self) -> float:
        """Seconds until an open breaker half-opens (0 otherwise)."""
        if self.state != OPEN or self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + cooldown_seconds() - time.time())


def _state_of(route: str, failures: int | None, opened_at: float | None) -> BreakerState:
    if opened_at is None:
        return BreakerState(route, CLOSED, int(failures or 0), None)
    opened = float(opened_at)
    state = OPEN if time.time() - opened < cooldown_seconds() else HALF_OPEN
    return BreakerState(route, state, int(failures or 0), opened)


def breaker_states(routes: list[str]) -> list[BreakerState]:
    """The breakers of ``routes`` (one cache round trip), closed when the cache fails."""
    keys = {route: _keys(route) for route in routes}
    try:
        found = cache.get_many([k for route in routes for k in keys[route][:2]])
    except Exception:
        logger.warning("breaker.cache_failed", exc_info=True)
        found = {}
    return [
        _state_of(route, found.get(keys[route][0]), found.get(keys[route][1])) for route in routes
    ]


def try_probe(route: str) -> bool:
    """Claim the half-open ``route``'s one probe (atomic ``cache.add``): True for one
    caller per cooldown, across processes."""
    _, _, probe = _keys(route)
    try:
        # The claim lapses after a cooldown, in case its turn never reports back.
        return bool(cache.add(probe, 1, timeout=max(cooldown_seconds(), 1.0)))
    except Exception:
        logger.warning("breaker.cache_failed", exc_info=True)
        return True


def record_failure(route: str) -> BreakerState:
    """Count a failure of ``route``; open its breaker at the threshold (or again, when the
    failure was a half-open probe's)."""
    failures_key, opened_key, probe_key = _keys(route)
    try:
        cache.add(failures_key, 0, timeout=_FAILURES_TTL)
        try:
            failures = int(cache.incr(failures_key))
        except ValueError:  # expired between add and incr
            cache.set(failures_key, 1, timeout=_FAILURES_TTL)
            failures = 1
        if failures >= failure_threshold():
            opened_at = time.time()
            cache.set(opened_key, opened_at, timeout=None)
            cache.delete(probe_key)
            logger.warning(
                "breaker.open",
                extra={"route": route, "failures": failures, "cooldown": cooldown_seconds()},
            )
            return BreakerState(route, OPEN, failures, opened_at)
        return BreakerState(route, CLOSED, failures, None)
    except Exception:
        logger.warning("breaker.cache_failed", exc_info=True)
        return BreakerState(route, CLOSED, 0, None)


def record_success(route: str) -> None:
    """``route`` served a reply: its breaker closes and its failures are forgotten."""
    try:
        cache.delete_many(list(_keys(route)))
    except Exception:
        logger.warning("breaker.cache_failed", exc_info=True)
        return
    logger.info("breaker.closed", extra={"route": route})


def breaker_close(route: str) -> None:
    """Close ``route``'s breaker by hand (the admin's action)."""
    record_success(route)


class BreakerCollector:
    """``chat_breaker_state{provider,model,route}`` (0 closed, 1 half-open, 2 open) and
    ``chat_breaker_failures{...}`` (failures in a row) of every configured route, read from
    the shared cache at each scrape, so every process answers the same."""

    def __init__(self, routes: Callable[[], list[tuple[str, str]]]) -> None:
        self._routes = routes

    def collect(self) -> Iterator[Metric]:
        """The two gauges (prometheus-client's collector protocol)."""
        state = GaugeMetricFamily(
            "chat_breaker_state",
            "Circuit breaker of each route: 0 closed, 1 half-open, 2 open.",
            labels=["provider", "model", "route"],
        )
        failures = GaugeMetricFamily(
            "chat_breaker_failures",
            "Failures in a row of each route.",
            labels=["provider", "model", "route"],
        )
        pairs = self._routes()
        names = [f"{provider}:{model}" for provider, model in pairs]
        for (provider, model), found in zip(pairs, breaker_states(names), strict=True):
            labels = [provider, model, found.route]
            state.add_metric(labels, STATE_VALUES[found.state])
            failures.add_metric(labels, found.failures)
        yield state
        yield failures
