"""Routes: which provider and model serve a turn, and failing over between them
(docs/api.md#routing).

A route is ``provider:model``. ``AI_ROUTES`` lists them in order (default: the one
``AI_PROVIDER`` / ``AI_MODEL``); a turn tries them in that order, skipping those whose
breaker (:mod:`ai.breaker`) is open. A retryable failure (429, 5xx, timeout, refused
connection, a stream that ends before any text) before the first text moves the turn to
the next route; after the first text a failure is the turn's error, never a silent switch.
A client may pick a route of ``AI_ALLOWED_MODELS`` (the chat body's ``model``): it is
tried first, the configured routes after it. ``AI_SYSTEM_ROUTE`` (default: the first
route) serves flow extraction and titles (:func:`system_provider`).

The SDKs' own retries (``AI_MAX_RETRIES``) are used only on the last route a turn may
try: before it, a 429 or a 5xx moves to the next route at once instead of making the user
wait through the SDK's back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from django.conf import settings

from ai import breaker
from ai.errors import AIError, AINotConfigured, AIStreamIncomplete
from ai.providers import (
    DEFAULT_MODELS,
    PROVIDER_NAMES,
    configured_model,
    configured_provider_name,
    provider_for,
)
from ai.providers.base import ChatMessage, Provider, StreamEnd, Usage
from core import metrics

logger = logging.getLogger("ai.routing")


@dataclass(frozen=True, slots=True)
class Route:
    """One provider and model that may serve a turn."""

    provider: str
    model: str

    @property
    def name(self) -> str:
        """``provider:model``, as ``AI_ROUTES`` spells it."""
        return f"{self.provider}:{self.model}"

    def as_dict(self) -> dict[str, str]:
        """``{"provider", "model"}`` (the ``failover`` event's ``from`` and ``to``)."""
        return {"provider": self.provider, "model": self.model}


def parse_route(text: str) -> Route:
    """A route from ``provider:model`` (``provider`` alone: its default model).

    Raises ``ValueError`` saying what is wrong.
    """
    raw = (text or "").strip()
    provider, sep, model = raw.partition(":")
    provider, model = provider.strip().lower(), model.strip()
    if not provider:
        raise ValueError(f"{raw!r} names no provider; write provider:model.")
    if provider not in PROVIDER_NAMES:
        raise ValueError(
            f"{raw!r} names the provider {provider!r}; use one of {', '.join(PROVIDER_NAMES)}."
        )
    if sep and not model:
        raise ValueError(f"{raw!r} names no model after the colon; write provider:model.")
    return Route(provider, model or DEFAULT_MODELS[provider])


def parse_routes(value: str | Sequence[str] | None) -> list[Route]:
    """The routes of a comma-separated list (or a list of names), duplicates dropped.

    Raises ``ValueError`` naming the first malformed entry.
    """
    items = value.split(",") if isinstance(value, str) else list(value or ())
    routes: list[Route] = []
    for item in items:
        if not str(item).strip():
            continue
        route = parse_route(str(item))
        if route not in routes:
            routes.append(route)
    return routes


def configured_routes() -> list[Route]:
    """``AI_ROUTES`` in order, or the one ``AI_PROVIDER`` / ``AI_MODEL`` route.

    Malformed entries are left out (the system checks report them: ``ai.E009``).
    """
    routes: list[Route] = []
    for item in _setting_items("AI_ROUTES"):
        try:
            route = parse_route(item)
        except ValueError:
            continue
        if route not in routes:
            routes.append(route)
    if routes:
        return routes
    name = configured_provider_name()
    return [Route(name, configured_model(name))]


def allowed_routes() -> list[Route]:
    """The routes a client may pick with ``model`` (``AI_ALLOWED_MODELS``; default: the
    configured routes)."""
    routes: list[Route] = []
    for item in _setting_items("AI_ALLOWED_MODELS"):
        try:
            route = parse_route(item)
        except ValueError:
            continue
        if route not in routes:
            routes.append(route)
    return routes or configured_routes()


def system_route() -> Route:
    """``AI_SYSTEM_ROUTE``, else the first configured route."""
    raw = str(getattr(settings, "AI_SYSTEM_ROUTE", "") or "").strip()
    if raw:
        try:
            return parse_route(raw)
        except ValueError:
            pass  # reported by the system checks (ai.E011)
    return configured_routes()[0]


def system_provider() -> Provider:
    """The provider of :func:`system_route`: flow extraction and titles.

    Raises :class:`ai.errors.AINotConfigured` when it is not configured.
    """
    route = system_route()
    return provider_for(route.provider, route.model)


def route_choice(model: str | None) -> Route | None:
    """The allowed route a chat body's ``model`` names, or ``None`` when it names none.

    Raises ``ValueError`` (the 400 naming ``model``) for a value that is not allowed.
    """
    if model is None or not str(model).strip():
        return None
    try:
        route = parse_route(str(model))
    except ValueError as exc:
        raise ValueError(f"Not a model this server offers: {exc}") from None
    if route not in allowed_routes():
        raise ValueError(
            "Not a model this server offers; GET /api/v1/models/ lists the ones you may pick."
        )
    return route


def _setting_items(name: str) -> list[str]:
    value = getattr(settings, name, None) or ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


# --- one turn's routes ------------------------------------------------------------------


@dataclass(slots=True)
class TurnRoutes:
    """The routes one turn may try, in order, as the breakers allowed them at its start."""

    routes: list[Route]
    #: Routes whose breaker had failures (a success must reset them) or that this turn
    #: probes (half-open).
    watched: set[Route] = field(default_factory=set)

    @property
    def first(self) -> Route:
        """The route tried first (the ``metadata`` event's provider and model)."""
        return self.routes[0]


def plan_routes(choice: Route | None = None) -> TurnRoutes:
    """The routes a turn tries: ``choice`` (a client's pick) first, then the configured
    routes; a route whose breaker is open is skipped, a half-open one goes first when this
    turn wins its probe. When every breaker is open the turn tries them all anyway (a
    breaker never leaves a turn with nothing to try: a lone route still answers with its
    own error). Sync: reads the shared cache (one round trip, more only to probe).
    """
    order = configured_routes()
    if choice is not None:
        order = [choice, *(route for route in order if route != choice)]
    states = breaker.breaker_states([route.name for route in order])
    probes: list[Route] = []
    closed: list[Route] = []
    watched: set[Route] = set()
    for route, state in zip(order, states, strict=True):
        if state.state == breaker.CLOSED:
            closed.append(route)
            if state.failures:
                watched.add(route)
        elif state.state == breaker.HALF_OPEN and breaker.try_probe(route.name):
            probes.append(route)
            watched.add(route)
    routes = probes + closed
    if not routes:
        routes, watched = order, set(order)
    return TurnRoutes(routes=routes, watched=watched)


@dataclass(frozen=True, slots=True)
class FailedAttempt:
    """A route that failed before the first text, and what it used if it said."""

    route: Route
    code: str
    usage: Usage | None = None


#: Called on a failover with (from, to, code), before the next route is called.
OnFailover = Callable[[Route, Route, str], Awaitable[None] | None]


def _fails_over(exc: BaseException) -> bool:
    """A failure another route may not have: 429, 5xx, timeout, refused connection, a
    stream that ended before any text (not a bad key, a bad request or a missing one)."""
    return isinstance(exc, AIError) and not isinstance(exc, AINotConfigured) and bool(exc.retryable)


class RoutedReply:
    """A reply streamed from the first route of ``plan`` that answers.

    Iterate :meth:`stream` like a provider's ``stream_reply``; afterwards :attr:`route`
    is the route that served (or failed last) and :attr:`failed` the attempts that failed
    over. Breakers are told of every failure and of a success after failures.
    """

    def __init__(self, plan: TurnRoutes, *, on_failover: OnFailover | None = None) -> None:
        self.plan = plan
        self.route = plan.first
        self.failed: list[FailedAttempt] = []
        self._on_failover = on_failover

    def _provider(self, index: int) -> Provider:
        route = self.plan.routes[index]
        last = index == len(self.plan.routes) - 1
        # The SDK's retries only where no route is left to move to.
        return provider_for(route.provider, route.model, max_retries=None if last else 0)

    async def stream(
        self, *, messages: Sequence[ChatMessage], system: str, max_output_tokens: int
    ) -> AsyncIterator[str | StreamEnd]:
        """``str`` deltas, then one :class:`StreamEnd`, from the route that serves."""
        routes = self.plan.routes
        index = 0
        while True:
            route = self.route = routes[index]
            relayed = False
            try:
                provider = self._provider(index)
                stream = provider.stream_reply(
                    messages=messages, system=system, max_output_tokens=max_output_tokens
                )
                ended = False
                try:
                    async for item in stream:
                        if item.__class__ is str:
                            relayed = True
                        else:
                            ended = True
                            if route in self.plan.watched:
                                await asyncio.to_thread(breaker.record_success, route.name)
                        yield item
                finally:
                    await stream.aclose()
                if not ended:  # a provider must end with StreamEnd: never a cut as done
                    raise AIStreamIncomplete()
                return
            except Exception as exc:
                if _fails_over(exc):
                    await asyncio.to_thread(breaker.record_failure, route.name)
                code = exc.code if isinstance(exc, AIError) else "internal_error"
                metrics.ROUTE_ERRORS.labels(route.provider, route.model, code).inc()
                following = self._next(index) if not relayed and _fails_over(exc) else None
                if following is None:
                    raise
                index, next_route = following
                self.failed.append(FailedAttempt(route, code, getattr(exc, "usage", None)))
                metrics.FAILOVERS.labels(
                    route.provider, route.model, next_route.provider, next_route.model, code
                ).inc()
                logger.warning(
                    "turn.failover",
                    extra={"from_route": route.name, "to_route": next_route.name, "code": code},
                )
                if self._on_failover is not None:
                    result = self._on_failover(route, next_route, code)
                    if result is not None:
                        await result

    def _next(self, index: int) -> tuple[int, Route] | None:
        """The next route after ``index`` whose provider is configured, or ``None``."""
        for position in range(index + 1, len(self.plan.routes)):
            route = self.plan.routes[position]
            try:
                self._provider(position)
            except AINotConfigured:
                logger.warning("turn.route_not_configured", extra={"route": route.name})
                continue
            return position, route
        return None


__all__ = [
    "FailedAttempt",
    "Route",
    "RoutedReply",
    "TurnRoutes",
    "allowed_routes",
    "configured_routes",
    "parse_route",
    "parse_routes",
    "plan_routes",
    "route_choice",
    "system_provider",
    "system_route",
]
