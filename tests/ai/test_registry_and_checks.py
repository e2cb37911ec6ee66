"""The provider registry (choice, defaults, caching, lazy imports) and the system checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core import checks
from django.test import override_settings

from accounts.checks import check_oidc
from ai import checks as ai_checks
from ai.errors import AINotConfigured
from ai.providers import get_provider, reset_provider_cache
from ai.providers.anthropic import AnthropicProvider
from ai.providers.mock import MockProvider
from ai.providers.openai import OpenAIProvider
from tests.fakes.fixtures import collect

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _clean_ai_settings(settings):
    settings.AI_PROVIDER = "mock"
    settings.AI_MODEL = ""
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""
    settings.ANTHROPIC_API_KEY = ""
    settings.ANTHROPIC_BASE_URL = ""
    settings.QUOTA_PERIOD = "day"
    settings.OIDC_OP_ISSUER = ""
    settings.OIDC_OP_JWKS_ENDPOINT = ""
    settings.OIDC_API_AUDIENCE = ""


# --- registry -------------------------------------------------------------------------------


def test_mock_is_the_default_with_its_model(settings):
    settings.MOCK_TOKEN_DELAY_MS = 7
    provider = get_provider()
    assert isinstance(provider, MockProvider)
    assert (provider.name, provider.model, provider.token_delay_ms) == ("mock", "mock-1", 7)


@pytest.mark.parametrize(
    ("name", "key_setting", "provider_class", "model"),
    [
        ("openai", "OPENAI_API_KEY", OpenAIProvider, "gpt-4o-mini"),
        ("anthropic", "ANTHROPIC_API_KEY", AnthropicProvider, "claude-sonnet-4-6"),
    ],
)
def test_real_providers_with_default_and_chosen_models(
    settings, name, key_setting, provider_class, model
):
    settings.AI_PROVIDER = name
    setattr(settings, key_setting, "sk-fake")
    provider = get_provider()
    assert isinstance(provider, provider_class)
    assert (provider.name, provider.model) == (name, model)
    settings.AI_MODEL = "custom-model"
    assert get_provider().model == "custom-model"


def test_provider_name_is_normalized(settings):
    settings.AI_PROVIDER = "  OpenAI "
    settings.OPENAI_API_KEY = "sk-fake"
    assert isinstance(get_provider(), OpenAIProvider)


@pytest.mark.parametrize(
    "changes",
    [
        {"AI_PROVIDER": "llama"},
        {"AI_PROVIDER": "openai"},
        {"AI_PROVIDER": "anthropic"},
        {"AI_PROVIDER": "anthropic", "ANTHROPIC_BASE_URL": "http://127.0.0.1:9"},
    ],
)
def test_unknown_or_keyless_provider_is_not_configured(settings, changes):
    for name, value in changes.items():
        setattr(settings, name, value)
    with pytest.raises(AINotConfigured) as caught:
        get_provider()
    assert caught.value.status_code == 503
    assert caught.value.code == "ai_unavailable"


async def test_keyless_openai_compatible_server_gets_a_placeholder_key(settings, openai_server):
    settings.AI_PROVIDER = "openai"
    settings.OPENAI_BASE_URL = openai_server.base_url
    settings.AI_MAX_RETRIES = 0
    result = await collect(get_provider())
    assert result.error is None
    assert openai_server.requests[0].header("authorization") == "Bearer not-needed"


def test_provider_is_cached_until_settings_change(settings):
    first = get_provider()
    assert get_provider() is first
    with override_settings(MOCK_TOKEN_DELAY_MS=1):
        inside = get_provider()
        assert inside is not first and inside.token_delay_ms == 1
    assert get_provider() is not inside
    again = get_provider()
    reset_provider_cache()
    assert get_provider() is not again


def test_override_settings_switches_provider(settings):
    assert isinstance(get_provider(), MockProvider)
    with override_settings(AI_PROVIDER="anthropic", ANTHROPIC_API_KEY="sk-fake"):
        assert isinstance(get_provider(), AnthropicProvider)
    assert isinstance(get_provider(), MockProvider)


def test_adapters_and_sdks_are_imported_lazily():
    code = (
        "import django, sys; django.setup()\n"
        "from ai.providers import get_provider\n"
        "get_provider()\n"
        "print(sorted(m for m in ('openai', 'anthropic', 'ai.providers.openai', "
        "'ai.providers.anthropic', 'ai.providers.mock') if m in sys.modules))\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "AI_PROVIDER": "mock"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "['ai.providers.mock']"


# --- system checks ----------------------------------------------------------------------------


def ids(messages: list[checks.CheckMessage]) -> list[str]:
    return [m.id for m in messages]


def test_checks_are_registered():
    registered = checks.registry.registry.get_checks()
    for check in (ai_checks.check_ai_provider, check_oidc, ai_checks.check_quota_period):
        assert check in registered


def test_default_configuration_passes():
    assert ai_checks.check_ai_provider() == []
    assert check_oidc() == []
    assert ai_checks.check_quota_period() == []


def test_unknown_provider_names_the_allowed_values(settings):
    settings.AI_PROVIDER = "gemini"
    (message,) = ai_checks.check_ai_provider()
    assert message.id == "ai.E001" and message.level == checks.ERROR
    assert "gemini" in message.msg
    assert "mock, openai, anthropic" in message.hint


def test_openai_without_key_says_what_to_set(settings):
    settings.AI_PROVIDER = "openai"
    (message,) = ai_checks.check_ai_provider()
    assert message.id == "ai.E002"
    assert "OPENAI_API_KEY" in message.msg
    assert "OPENAI_BASE_URL" in message.hint
    settings.OPENAI_BASE_URL = "http://127.0.0.1:11434/v1"
    assert ai_checks.check_ai_provider() == []


def test_anthropic_without_key(settings):
    settings.AI_PROVIDER = "anthropic"
    (message,) = ai_checks.check_ai_provider()
    assert message.id == "ai.E003" and "ANTHROPIC_API_KEY" in message.hint
    settings.ANTHROPIC_API_KEY = "sk-fake"
    assert ai_checks.check_ai_provider() == []


def test_non_positive_limits(settings):
    settings.AI_TIMEOUT_SECONDS = 0
    assert ids(ai_checks.check_ai_provider()) == ["ai.E007"]


@pytest.mark.parametrize(
    ("issuer", "jwks", "audience", "expected"),
    [
        ("https://id.example", "", "", ["accounts.E001"]),
        ("", "https://id.example/jwks", "api", ["accounts.E001"]),
        ("https://id.example", "https://id.example/jwks", "", ["accounts.E002"]),
        ("https://id.example", "https://id.example/jwks", "api", []),
    ],
)
def test_oidc_half_configured(settings, issuer, jwks, audience, expected):
    settings.OIDC_OP_ISSUER = issuer
    settings.OIDC_OP_JWKS_ENDPOINT = jwks
    settings.OIDC_API_AUDIENCE = audience
    messages = check_oidc()
    assert ids(messages) == expected
    if expected == ["accounts.E001"]:
        missing = "OIDC_OP_JWKS_ENDPOINT" if issuer else "OIDC_OP_ISSUER"
        assert missing in messages[0].hint


@pytest.mark.parametrize("period", ["daily", "year", ""])
def test_quota_period_must_be_known(settings, period):
    settings.QUOTA_PERIOD = period
    (message,) = ai_checks.check_quota_period()
    assert message.id == "ai.E006"
    assert "day, week, month, none" in message.hint


def test_manage_py_check_reports_in_words():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "AI_PROVIDER": "openai",
        "OPENAI_API_KEY": "",
        "OPENAI_BASE_URL": "",
    }
    out = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "ai.E002" in out.stderr and "Set OPENAI_API_KEY" in out.stderr
