"""System checks: configuration mistakes reported at start-up, in words that say what to set.

=========  ==================================================================
ai.E001    ``AI_PROVIDER`` is not one of ``mock``, ``openai``, ``anthropic``
ai.E002    ``AI_PROVIDER=openai`` without ``OPENAI_API_KEY`` (nor ``OPENAI_BASE_URL``)
ai.E003    ``AI_PROVIDER=anthropic`` without ``ANTHROPIC_API_KEY``
ai.E006    ``QUOTA_PERIOD`` not one of ``day``, ``week``, ``month``, ``none``
ai.E007    ``AI_TIMEOUT_SECONDS`` or ``AI_MAX_OUTPUT_TOKENS`` not positive
ai.E008    ``AI_HTTP_CLIENT`` not one of ``aiohttp``, ``httpx``
ai.E009    an ``AI_ROUTES`` entry is not ``provider:model`` of a known provider
ai.E010    an ``AI_ALLOWED_MODELS`` entry is not ``provider:model`` of a known provider
ai.E011    ``AI_SYSTEM_ROUTE`` is not ``provider:model`` of a known provider
ai.E012    a route's provider has no key (nor, for OpenAI, a base URL)
ai.E013    ``AI_BREAKER_FAILURES`` below 1 or ``AI_BREAKER_COOLDOWN_SECONDS`` negative
ai.W001    a model in use (configured, or seen in the usage ledger) has no price:
           its calls cost 0 (a database check: ``migrate``, ``check --database``)
=========  ==================================================================

(OIDC is checked by accounts.checks.)

A keyless OpenAI-compatible server (a local model server) needs only
``OPENAI_BASE_URL``; a placeholder key is then sent.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.db import DatabaseError

from ai.pricing import unpriced_models
from ai.providers import (
    DEFAULT_MODELS,
    PROVIDER_NAMES,
    configured_http_client,
    configured_provider_name,
)
from ai.providers._clients import HTTP_CLIENTS
from ai.routing import allowed_routes, configured_routes, parse_route, system_route

QUOTA_PERIODS = ("day", "week", "month", "none")


def _setting(name: str, default: Any = "") -> Any:
    return getattr(settings, name, default)


@register("ai")
def check_ai_provider(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The provider is known and has what it needs (a key, or a base URL for OpenAI)."""
    errors: list[CheckMessage] = []
    name = configured_provider_name()
    if name not in PROVIDER_NAMES:
        errors.append(
            Error(
                f"AI_PROVIDER is set to {name!r}, which is not a provider this server knows.",
                hint="Set AI_PROVIDER to one of: " + ", ".join(PROVIDER_NAMES) + ".",
                id="ai.E001",
            )
        )
    elif name == "openai" and not _setting("OPENAI_API_KEY") and not _setting("OPENAI_BASE_URL"):
        errors.append(
            Error(
                "AI_PROVIDER is 'openai' but OPENAI_API_KEY is not set.",
                hint=(
                    "Set OPENAI_API_KEY to your OpenAI API key. For a keyless "
                    "OpenAI-compatible server (e.g. a local model server), set "
                    "OPENAI_BASE_URL to its URL instead (a placeholder key is then sent). "
                    "Or set AI_PROVIDER=mock to run offline."
                ),
                id="ai.E002",
            )
        )
    elif name == "anthropic" and not _setting("ANTHROPIC_API_KEY"):
        errors.append(
            Error(
                "AI_PROVIDER is 'anthropic' but ANTHROPIC_API_KEY is not set.",
                hint=(
                    "Set ANTHROPIC_API_KEY to your Anthropic API key, "
                    "or set AI_PROVIDER=mock to run offline."
                ),
                id="ai.E003",
            )
        )
    try:
        timeout_ok = float(_setting("AI_TIMEOUT_SECONDS", 30.0)) > 0
        tokens_ok = int(_setting("AI_MAX_OUTPUT_TOKENS", 1024)) > 0
    except (TypeError, ValueError):
        timeout_ok = tokens_ok = False
    if not (timeout_ok and tokens_ok):
        errors.append(
            Error(
                "AI_TIMEOUT_SECONDS and AI_MAX_OUTPUT_TOKENS must be positive numbers.",
                hint="Set AI_TIMEOUT_SECONDS (e.g. 30) and AI_MAX_OUTPUT_TOKENS (e.g. 1024).",
                id="ai.E007",
            )
        )
    http_client = configured_http_client()
    if http_client not in HTTP_CLIENTS:
        errors.append(
            Error(
                f"AI_HTTP_CLIENT is set to {http_client!r}, which is not an HTTP client "
                "this server knows.",
                hint="Set AI_HTTP_CLIENT to one of: " + ", ".join(HTTP_CLIENTS) + ".",
                id="ai.E008",
            )
        )
    return errors


_ROUTE_SETTINGS = (("AI_ROUTES", "ai.E009"), ("AI_ALLOWED_MODELS", "ai.E010"))
_ROUTE_EXAMPLE = "e.g. openai:gpt-4o-mini,anthropic:claude-sonnet-4-6"


def _route_items(name: str) -> list[str]:
    value = _setting(name, "") or ()
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()]


def _route_missing_key(provider: str) -> str | None:
    """What to set for ``provider`` to be usable, or ``None`` when it is."""
    if provider == "openai" and not _setting("OPENAI_API_KEY") and not _setting("OPENAI_BASE_URL"):
        return "OPENAI_API_KEY (or OPENAI_BASE_URL for a keyless OpenAI-compatible server)"
    if provider == "anthropic" and not _setting("ANTHROPIC_API_KEY"):
        return "ANTHROPIC_API_KEY"
    return None


@register("ai")
def check_ai_routes(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``AI_ROUTES``, ``AI_ALLOWED_MODELS`` and ``AI_SYSTEM_ROUTE`` are well-formed
    ``provider:model`` names whose providers have their keys; the breaker's settings are
    sensible (docs/api.md#routing)."""
    errors: list[CheckMessage] = []
    for name, check_id in _ROUTE_SETTINGS:
        for item in _route_items(name):
            try:
                parse_route(item)
            except ValueError as exc:
                errors.append(
                    Error(
                        f"{name} has an entry that is not a route: {exc}",
                        hint=f"Set {name} to comma-separated provider:model names "
                        f"({_ROUTE_EXAMPLE}); providers: {', '.join(PROVIDER_NAMES)}.",
                        id=check_id,
                    )
                )
    system = str(_setting("AI_SYSTEM_ROUTE", "") or "").strip()
    if system:
        try:
            parse_route(system)
        except ValueError as exc:
            errors.append(
                Error(
                    f"AI_SYSTEM_ROUTE is not a route: {exc}",
                    hint="Set AI_SYSTEM_ROUTE to one provider:model (e.g. "
                    "openai:gpt-4o-mini), or leave it unset to use the first of AI_ROUTES.",
                    id="ai.E011",
                )
            )
    if _route_items("AI_ROUTES") or system:  # AI_PROVIDER alone is ai.E002/E003's
        reported: set[str] = set()
        for route in [*configured_routes(), system_route()]:
            missing = _route_missing_key(route.provider)
            if missing and route.provider not in reported:
                reported.add(route.provider)
                errors.append(
                    Error(
                        f"The route {route.name!r} uses the provider {route.provider!r}, "
                        "which is not configured.",
                        hint=f"Set {missing}, or remove the route from AI_ROUTES / "
                        "AI_SYSTEM_ROUTE.",
                        id="ai.E012",
                    )
                )
    try:
        breaker_ok = (
            int(_setting("AI_BREAKER_FAILURES", 5)) >= 1
            and float(_setting("AI_BREAKER_COOLDOWN_SECONDS", 30)) >= 0
        )
    except (TypeError, ValueError):
        breaker_ok = False
    if not breaker_ok:
        errors.append(
            Error(
                "AI_BREAKER_FAILURES must be at least 1 and AI_BREAKER_COOLDOWN_SECONDS "
                "not negative.",
                hint="Set AI_BREAKER_FAILURES (e.g. 5) and AI_BREAKER_COOLDOWN_SECONDS (e.g. 30).",
                id="ai.E013",
            )
        )
    return errors


@register("ai")
def check_quota_period(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``QUOTA_PERIOD`` is one of the periods the quota knows."""
    period = str(_setting("QUOTA_PERIOD", "day"))
    if period in QUOTA_PERIODS:
        return []
    return [
        Error(
            f"QUOTA_PERIOD is set to {period!r}, which is not a quota period.",
            hint="Set QUOTA_PERIOD to one of: " + ", ".join(QUOTA_PERIODS) + ".",
            id="ai.E006",
        )
    ]


@register("ai", Tags.database)
def check_model_prices(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """Every model in use has a price (docs/api.md#cost): the configured one and those in
    the usage ledger. Run only where the database may be read (``migrate``,
    ``check --database default``); a database without the tables yet is skipped."""
    if not databases:
        return []
    name = configured_provider_name()
    model = (str(_setting("AI_MODEL", "") or "")).strip() or DEFAULT_MODELS.get(name, "")
    extra = [(name, model)] if name in PROVIDER_NAMES else []
    for route in [*configured_routes(), *allowed_routes(), system_route()]:
        if route.provider in PROVIDER_NAMES and (route.provider, route.model) not in extra:
            extra.append((route.provider, route.model))
    try:
        missing = unpriced_models(extra)
    except DatabaseError:
        return []
    return [
        Warning(
            f"The model {model!r} of provider {provider!r} has no price: its calls are "
            "recorded with a cost of 0.",
            hint=(
                "Add a price in the admin (AI usage and quota > Model prices: provider "
                f"{provider!r}, model {model!r}, the prices per million tokens and the "
                "date they are valid from), or load the shipped list prices with "
                "`manage.py loaddata model_prices`."
            ),
            id="ai.W001",
        )
        for provider, model in missing
    ]
