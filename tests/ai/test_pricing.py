"""Prices and the cost of a call: lookup by date, each kind of token at its own rate for both
providers' usage (read by the real adapters from the fake servers), never counted twice;
a model without a price costs 0 and is reported by a check and in the admin."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from ai import checks as ai_checks
from ai import pricing
from ai.models import ModelPrice
from ai.pricing import cost_of, price_for, priced, unpriced_models
from ai.providers import get_provider
from ai.providers.base import Usage
from ai.services import usage_record_create
from tests import factories
from tests.fakes.anthropic_server import AnthropicScript
from tests.fakes.fixtures import collect
from tests.fakes.openai_server import OpenAIScript

D = Decimal


@pytest.fixture(autouse=True)
def fresh_prices() -> Iterator[None]:
    """Each test reads the prices of its own database (a rolled-back row sends no signal)."""
    pricing.clear_cache()
    yield
    pricing.clear_cache()


def make_price(provider: str, model: str, valid_from: date, **rates: str) -> ModelPrice:
    """A price with distinct rates per kind, so a token billed at the wrong rate shows."""
    values = {"input": "2", "output": "10", "cache_read": "0.5", "cache_write": "3", **rates}
    return ModelPrice.objects.create(
        provider=provider,
        model=model,
        valid_from=valid_from,
        **{f"{kind}_per_mtok": D(value) for kind, value in values.items()},
    )


@pytest.mark.django_db
def test_the_price_valid_on_the_day_of_the_call_is_used():
    old = make_price("openai", "gpt-x", date(2026, 1, 1), input="4")
    new = make_price("openai", "gpt-x", date(2026, 6, 1), input="1")
    assert price_for("openai", "gpt-x", date(2025, 12, 31)) is None
    assert price_for("openai", "gpt-x", date(2026, 1, 1)) == old
    assert price_for("openai", "gpt-x", date(2026, 5, 31)) == old
    assert price_for("openai", "gpt-x", datetime(2026, 6, 1, 9, tzinfo=UTC)) == new
    assert price_for("openai", "gpt-x", date(2027, 1, 1)) == new
    assert price_for("anthropic", "gpt-x", date(2027, 1, 1)) is None  # per provider


@pytest.mark.django_db
def test_a_snapshot_name_takes_its_base_price_unless_it_has_its_own():
    base = make_price("openai", "gpt-4o-mini", date(2026, 1, 1))
    assert price_for("openai", "gpt-4o-mini-2024-07-18", date(2026, 2, 1)) == base
    assert price_for("openai", "gpt-4o-mini-tts", date(2026, 2, 1)) is None  # not a date
    own = make_price("openai", "gpt-4o-mini-2024-07-18", date(2026, 1, 1))
    assert price_for("openai", "gpt-4o-mini-2024-07-18", date(2026, 2, 1)) == own
    haiku = make_price("anthropic", "claude-haiku-4-5", date(2026, 1, 1))
    assert price_for("anthropic", "claude-haiku-4-5-20251001", date(2026, 2, 1)) == haiku


#: A price (unsaved) with a distinct rate per kind of token.
PRICE = ModelPrice(
    input_per_mtok=D("2"),
    output_per_mtok=D("10"),
    cache_read_per_mtok=D("0.5"),
    cache_write_per_mtok=D("3"),
)


def test_each_kind_of_token_at_its_own_rate():
    price = PRICE
    usage = Usage(
        input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=600_000,
        cache_write_tokens=300_000,
    )  # fmt: skip
    # 100k uncached * 2 + 600k * 0.5 + 300k * 3 + 100k * 10, per million.
    assert cost_of(usage, price) == D("0.2") + D("0.3") + D("0.9") + D("1.0")
    assert cost_of(Usage(input_tokens=7), price) == D("0.00001400")
    assert cost_of(usage, None) == 0


async def test_openai_cached_tokens_are_read_and_priced_once(openai_settings, openai_server):
    """OpenAI's prompt_tokens includes cached_tokens: the cached part at the cache rate, the
    rest at the input rate, nothing twice."""
    openai_server.push(
        OpenAIScript(tokens=["Hi"], prompt_tokens=2000, cached_tokens=1536, completion_tokens=50)
    )
    result = await collect(get_provider())
    usage = result.end.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        2000,
        1536,
        0,
    )
    assert usage.output_tokens == 50
    # 464 * 2 + 1536 * 0.5 + 50 * 10 = 928 + 768 + 500 = 2196 per million.
    assert cost_of(usage, PRICE) == D("0.00219600")


async def test_anthropic_cache_reads_and_writes_are_read_and_priced_once(
    anthropic_settings, anthropic_server
):
    """Anthropic's input_tokens leaves the cache tokens out: they are added to the prompt
    once, each priced at its own rate."""
    anthropic_server.push(
        AnthropicScript(
            tokens=["Hi"],
            input_tokens=40,
            cache_read_input_tokens=3000,
            cache_creation_input_tokens=1000,
            output_tokens=20,
        )
    )
    result = await collect(get_provider())
    usage = result.end.usage
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (
        4040,
        3000,
        1000,
    )
    assert usage.total == 4060  # the quota counts each token once
    # 40 * 2 + 3000 * 0.5 + 1000 * 3 + 20 * 10 = 80 + 1500 + 3000 + 200 = 4780 per million.
    assert cost_of(usage, PRICE) == D("0.00478000")


async def test_anthropic_extraction_usage_carries_the_cache_tokens(
    anthropic_settings, anthropic_server
):
    anthropic_server.push(
        AnthropicScript(
            tool_input={"flows": []},
            input_tokens=10,
            cache_read_input_tokens=200,
            cache_creation_input_tokens=30,
        )
    )
    result = await get_provider().extract_structured(
        system="s", transcript="t", schema={"type": "object"}, schema_name="flows"
    )
    assert (result.usage.input_tokens, result.usage.cache_read_tokens) == (240, 200)
    assert result.usage.cache_write_tokens == 30


@pytest.mark.django_db
def test_a_model_without_a_price_costs_nothing_and_is_warned_about(settings, user):
    settings.AI_PROVIDER, settings.AI_MODEL = "openai", "gpt-unpriced"
    settings.OPENAI_API_KEY = "sk-test"
    usage = priced(Usage(input_tokens=100, output_tokens=5), provider="openai",
                   model="gpt-unpriced", at=timezone.now())  # fmt: skip
    assert (usage.cost, usage.currency) == (0, "USD")
    usage_record_create(user=user, provider="anthropic", model="claude-gone", purpose="reply",
                        input_tokens=1, output_tokens=1, estimated=False, tokens_charged=2,
                        outcome="complete")  # fmt: skip
    usage_record_create(user=user, provider="mock", model="mock-1", purpose="reply",
                        input_tokens=1, output_tokens=1, estimated=False, tokens_charged=2,
                        outcome="complete")  # fmt: skip

    assert ai_checks.check_model_prices() == []  # not a database check run
    messages = ai_checks.check_model_prices(databases=["default"])
    assert [m.id for m in messages] == ["ai.W001", "ai.W001"]
    assert "'claude-gone'" in messages[0].msg and "'gpt-unpriced'" in messages[1].msg
    assert "loaddata model_prices" in messages[0].hint and "admin" in messages[0].hint

    make_price("openai", "gpt-unpriced", timezone.localdate())
    make_price("anthropic", "claude-gone", timezone.localdate() + timedelta(days=1))
    assert unpriced_models() == [("anthropic", "claude-gone")]  # its price starts tomorrow


@pytest.mark.django_db
def test_the_admin_edits_prices_and_flags_unpriced_models(user):
    admin = factories.make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    usage_record_create(user=user, provider="openai", model="gpt-nopes", purpose="reply",
                        input_tokens=1, output_tokens=1, estimated=False, tokens_charged=2,
                        outcome="complete")  # fmt: skip
    response = client.get(reverse("admin:ai_modelprice_changelist"))
    assert response.status_code == 200
    warnings = [str(m) for m in get_messages(response.wsgi_request)]
    assert any("openai/gpt-nopes" in w for w in warnings), warnings

    response = client.post(
        reverse("admin:ai_modelprice_add"),
        {
            "provider": "openai",
            "model": "gpt-nopes",
            "input_per_mtok": "1.5",
            "output_per_mtok": "6",
            "cache_read_per_mtok": "0.75",
            "cache_write_per_mtok": "1.5",
            "currency": "EUR",
            "valid_from": "2026-01-01",
        },
    )
    assert response.status_code == 302, response.content[:500]
    price = price_for("openai", "gpt-nopes", timezone.now())  # the cache was dropped on save
    assert price is not None and price.currency == "EUR"
    response = client.get(reverse("admin:ai_usagerecord_changelist"))
    assert response.status_code == 200
    assert unpriced_models() == []


@pytest.mark.django_db
def test_the_shipped_fixture_loads_twice_without_duplicates():
    call_command("loaddata", "model_prices", verbosity=0)
    count = ModelPrice.objects.count()
    call_command("loaddata", "model_prices", verbosity=0)
    assert ModelPrice.objects.count() == count >= 5
    mini = price_for("openai", "gpt-4o-mini-2024-07-18", timezone.now())
    assert mini is not None and mini.cache_read_per_mtok < mini.input_per_mtok
    sonnet = price_for("anthropic", "claude-sonnet-4-6", timezone.now())
    assert sonnet is not None
    assert sonnet.cache_read_per_mtok < sonnet.input_per_mtok < sonnet.cache_write_per_mtok
