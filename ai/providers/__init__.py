"""The provider registry: ``get_provider()`` builds the provider the settings name, and
``provider_for(name, model)`` the provider of one route (:mod:`ai.routing`).

``AI_PROVIDER`` is ``mock`` (default, offline), ``openai`` or ``anthropic``; ``AI_MODEL``
overrides the provider's default model. The adapter module is imported only when its
provider is chosen (so only that SDK is loaded), and the provider is cached for as long
as the settings it was built from do not change. Django's ``setting_changed`` signal
(``override_settings``, pytest-django's ``settings`` fixture) clears the cache.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from ai.errors import AINotConfigured
from ai.providers.base import Provider

DEFAULT_MODELS: dict[str, str] = {
    "mock": "mock-1",
    "openai": "gpt-4o-mini",
    "anthropic": "claude-sonnet-4-6",
}
PROVIDER_NAMES: tuple[str, ...] = tuple(DEFAULT_MODELS)
# The key sent to a keyless OpenAI-compatible server (OPENAI_BASE_URL without a key).
KEYLESS_PLACEHOLDER = "not-needed"

_SETTINGS_USED = frozenset(
    {
        "AI_PROVIDER",
        "AI_MODEL",
        "AI_TIMEOUT_SECONDS",
        "AI_MAX_RETRIES",
        "AI_HTTP_CLIENT",
        "AI_PROMPT_CACHE",
        "CHAT_HISTORY_LIMIT",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "MOCK_TOKEN_DELAY_MS",
    }
)

_lock = threading.Lock()
_cached: tuple[tuple[Any, ...], Provider] | None = None


def configured_provider_name() -> str:
    """``settings.AI_PROVIDER`` normalized (stripped, lower case; empty means mock)."""
    return (str(getattr(settings, "AI_PROVIDER", "") or "mock")).strip().lower()


def configured_http_client() -> str:
    """``settings.AI_HTTP_CLIENT`` normalized (stripped, lower case; empty means aiohttp)."""
    return (str(getattr(settings, "AI_HTTP_CLIENT", "") or "aiohttp")).strip().lower()


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _settings_key() -> tuple[Any, ...]:
    return tuple(_hashable(getattr(settings, name, None)) for name in sorted(_SETTINGS_USED))


def configured_model(name: str) -> str:
    """``settings.AI_MODEL`` (stripped), else ``name``'s default model."""
    return (getattr(settings, "AI_MODEL", "") or "").strip() or DEFAULT_MODELS.get(name, "")


def _build(name: str, model: str | None = None, max_retries: int | None = None) -> Provider:
    model = model or configured_model(name)
    timeout = float(getattr(settings, "AI_TIMEOUT_SECONDS", 30.0))
    if max_retries is None:
        max_retries = int(getattr(settings, "AI_MAX_RETRIES", 2))
    http_client = configured_http_client()
    if name == "mock":
        from ai.providers.mock import MockProvider  # noqa: PLC0415 (lazy: only this SDK loads)

        return MockProvider(
            model=model, token_delay_ms=float(getattr(settings, "MOCK_TOKEN_DELAY_MS", 30.0))
        )
    if name == "openai":
        api_key = getattr(settings, "OPENAI_API_KEY", "") or ""
        base_url = getattr(settings, "OPENAI_BASE_URL", "") or ""
        if not api_key and not base_url:
            raise AINotConfigured()
        from ai.providers.openai import OpenAIProvider  # noqa: PLC0415 (lazy: only this SDK loads)

        return OpenAIProvider(
            model=model,
            api_key=api_key or KEYLESS_PLACEHOLDER,
            base_url=base_url or None,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
        )
    if name == "anthropic":
        api_key = getattr(settings, "ANTHROPIC_API_KEY", "") or ""
        if not api_key:
            raise AINotConfigured()
        from ai.providers.anthropic import AnthropicProvider  # noqa: PLC0415 (lazy: only this SDK loads)

        return AnthropicProvider(
            model=model,
            api_key=api_key,
            base_url=getattr(settings, "ANTHROPIC_BASE_URL", "") or None,
            timeout=timeout,
            max_retries=max_retries,
            http_client=http_client,
            prompt_cache=bool(getattr(settings, "AI_PROMPT_CACHE", True)),
            history_limit=getattr(settings, "CHAT_HISTORY_LIMIT", None),
        )
    raise AINotConfigured()


def get_provider() -> Provider:
    """The provider named by ``settings.AI_PROVIDER``, built once per settings values.

    Raises :class:`ai.errors.AINotConfigured` when the provider is unknown or its API key
    is missing (the system checks in ``ai.checks`` say the same at start-up).
    """
    global _cached
    key = _settings_key()
    cached = _cached
    if cached is not None and cached[0] == key:
        return cached[1]
    with _lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
        provider = _build(configured_provider_name())
        _cached = (key, provider)
        return provider


_routes_cache: dict[tuple[Any, ...], Provider] = {}


def provider_for(name: str, model: str, *, max_retries: int | None = None) -> Provider:
    """The provider ``name`` serving ``model`` (one route of ``AI_ROUTES``), built once per
    settings values; ``max_retries`` overrides ``AI_MAX_RETRIES`` (the SDK's own retries).

    Raises :class:`ai.errors.AINotConfigured` like :func:`get_provider`.
    """
    key = (_settings_key(), name, model, max_retries)
    provider = _routes_cache.get(key)
    if provider is not None:
        return provider
    with _lock:
        provider = _routes_cache.get(key)
        if provider is None:
            if len(_routes_cache) > 64:  # settings changed many times (tests): start over
                _routes_cache.clear()
            provider = _routes_cache[key] = _build(name, model, max_retries)
        return provider


def reset_provider_cache() -> None:
    """Forget the cached providers (tests; settings changes do this by themselves)."""
    global _cached
    with _lock:
        _cached = None
        _routes_cache.clear()


@receiver(setting_changed, dispatch_uid="ai.providers.reset_provider_cache")
def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting in _SETTINGS_USED:
        reset_provider_cache()


__all__ = [
    "DEFAULT_MODELS",
    "PROVIDER_NAMES",
    "Provider",
    "configured_http_client",
    "configured_model",
    "configured_provider_name",
    "get_provider",
    "provider_for",
    "reset_provider_cache",
]
