"""Routes, breakers, the models list, the ``model`` field and the routing checks
(docs/api.md#routing), on the process's own cache (locmem in the tests)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from django.core import checks
from django.core.cache import cache
from django.test import RequestFactory

from ai import breaker
from ai.models import ModelPrice
from ai.providers.base import ChatMessage
from ai.routing import (
    Route,
    allowed_routes,
    configured_routes,
    parse_route,
    parse_routes,
    plan_routes,
    route_choice,
    system_provider,
    system_route,
)
from conversations.turn_start import turn_reservation
from core.metrics import metrics_view
from tests import factories

OPENAI = Route("openai", "gpt-4o-mini")
ANTHROPIC = Route("anthropic", "claude-sonnet-4-6")


@pytest.fixture(autouse=True)
def _routes(settings):
    cache.clear()
    settings.AI_ROUTES = ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-6"]
    settings.OPENAI_API_KEY = "sk-test"
    settings.ANTHROPIC_API_KEY = "sk-ant-test"
    settings.AI_BREAKER_FAILURES = 2
    settings.AI_BREAKER_COOLDOWN_SECONDS = 30
    yield
    cache.clear()


def test_route_names_parse_and_default_models():
    assert parse_route(" OpenAI:gpt-4o ") == Route("openai", "gpt-4o")
    assert parse_route("anthropic") == Route("anthropic", "claude-sonnet-4-6")
    assert parse_routes("openai:a, openai:a ,mock:m") == [Route("openai", "a"), Route("mock", "m")]
    for bad in ("gemini:pro", ":gpt-4o", "openai:"):
        with pytest.raises(ValueError):
            parse_route(bad)


def test_default_route_is_ai_provider_and_model(settings):
    settings.AI_ROUTES = []
    settings.AI_PROVIDER, settings.AI_MODEL = "mock", ""
    assert configured_routes() == [Route("mock", "mock-1")]
    assert system_route() == Route("mock", "mock-1")


def test_allowed_models_and_system_route(settings):
    assert allowed_routes() == [OPENAI, ANTHROPIC]  # default: the routes
    settings.AI_ALLOWED_MODELS = ["anthropic:claude-haiku-4-5"]
    assert route_choice("anthropic:claude-haiku-4-5") == Route("anthropic", "claude-haiku-4-5")
    assert route_choice(None) is None
    with pytest.raises(ValueError):
        route_choice("openai:gpt-4o-mini")
    assert system_route() == OPENAI
    settings.AI_SYSTEM_ROUTE = "anthropic:claude-haiku-4-5"
    provider = system_provider()
    assert (provider.name, provider.model) == ("anthropic", "claude-haiku-4-5")


def test_a_choice_goes_first_then_the_routes():
    assert plan_routes(ANTHROPIC).routes == [ANTHROPIC, OPENAI]


def test_the_breaker_opens_after_n_failures_then_one_probe_half_opens_it():
    assert plan_routes().routes == [OPENAI, ANTHROPIC]
    breaker.record_failure(OPENAI.name)
    plan = plan_routes()
    assert plan.routes == [OPENAI, ANTHROPIC] and OPENAI in plan.watched
    breaker.record_failure(OPENAI.name)
    assert breaker.breaker_states([OPENAI.name])[0].state == breaker.OPEN
    assert plan_routes().routes == [ANTHROPIC]  # open: skipped

    # The cooldown passed: half-open, one turn (and only one) probes it first.
    cache.set("ai:breaker:openai:gpt-4o-mini:opened_at", 1.0, timeout=None)
    assert breaker.breaker_states([OPENAI.name])[0].state == breaker.HALF_OPEN
    assert plan_routes().routes == [OPENAI, ANTHROPIC]
    assert plan_routes().routes == [ANTHROPIC]
    breaker.record_success(OPENAI.name)
    assert breaker.breaker_states([OPENAI.name])[0] == breaker.BreakerState(
        OPENAI.name, breaker.CLOSED, 0, None
    )


def test_with_every_breaker_open_the_turn_tries_them_all():
    for route in (OPENAI, ANTHROPIC):
        breaker.record_failure(route.name)
        breaker.record_failure(route.name)
    assert plan_routes().routes == [OPENAI, ANTHROPIC]


def test_the_breaker_gauge_is_on_metrics():
    breaker.record_failure(OPENAI.name)
    breaker.record_failure(OPENAI.name)
    request = RequestFactory().get("/metrics", REMOTE_ADDR="127.0.0.1")
    text = metrics_view(request).content.decode()
    labels = 'model="gpt-4o-mini",provider="openai",route="openai:gpt-4o-mini"'
    assert f"chat_breaker_state{{{labels}}} 2.0" in text
    assert f"chat_breaker_failures{{{labels}}} 2.0" in text
    labels = 'model="claude-sonnet-4-6",provider="anthropic",route="anthropic:claude-sonnet-4-6"'
    assert f"chat_breaker_state{{{labels}}} 0.0" in text


@pytest.mark.django_db
def test_the_reservation_takes_the_dearest_route():
    for provider, model, rate in (("openai", "gpt-4o-mini", "1"), ("anthropic", "x", "10")):
        ModelPrice.objects.create(
            provider=provider,
            model=model,
            valid_from=date(2026, 1, 1),
            input_per_mtok=Decimal(rate),
            output_per_mtok=Decimal(rate) * 4,
            cache_read_per_mtok=Decimal(0),
            cache_write_per_mtok=Decimal(0),
        )
    history = [ChatMessage("user", "hello")]
    now = datetime(2026, 6, 1, tzinfo=UTC)
    tokens, cheap = turn_reservation(
        "sys", history, context_name="W", provider="openai", model="gpt-4o-mini", at=now
    )
    tokens2, dear = turn_reservation(
        "sys",
        history,
        context_name="W",
        provider="openai",
        model="gpt-4o-mini",
        at=now,
        also_priced=[("anthropic", "x")],
    )
    assert tokens == tokens2 and dear == cheap * 10


def _errors(check_id: str) -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks(tags=["ai"]) if m.id == check_id]


def test_checks_name_malformed_routes(settings):
    settings.AI_ROUTES = ["openai:gpt-4o-mini", "gemini:pro"]
    [error] = _errors("ai.E009")
    assert "gemini" in error.msg and "AI_ROUTES" in error.hint
    settings.AI_ALLOWED_MODELS = ["openai:"]
    assert "AI_ALLOWED_MODELS" in _errors("ai.E010")[0].hint
    settings.AI_SYSTEM_ROUTE = "nope:x"
    assert "AI_SYSTEM_ROUTE" in _errors("ai.E011")[0].hint
    settings.AI_SYSTEM_ROUTE = ""
    settings.ANTHROPIC_API_KEY = ""
    settings.AI_ROUTES = ["openai:gpt-4o-mini", "anthropic:claude-sonnet-4-6"]
    [error] = _errors("ai.E012")
    assert "ANTHROPIC_API_KEY" in error.hint
    settings.AI_BREAKER_FAILURES = 0
    assert _errors("ai.E013")


@pytest.mark.django_db(transaction=True)  # the chat view reads on its own threads
def test_the_models_list_and_the_model_field(client):
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o-mini",
        valid_from=date(2025, 1, 1),
        input_per_mtok=Decimal("0.15"),
        output_per_mtok=Decimal("0.6"),
        cache_read_per_mtok=Decimal("0.075"),
        cache_write_per_mtok=Decimal(0),
    )
    user = factories.make_user("alice")
    token = factories.make_token(user)
    context = factories.make_context(user, name="Work")
    auth = {"HTTP_AUTHORIZATION": f"Token {token}"}
    assert client.get("/api/v1/models/").status_code == 401
    body = client.get("/api/v1/models/", **auth).json()
    assert body["count"] == 2
    first, second = body["results"]
    assert (first["id"], first["provider"], first["model"], first["default"]) == (
        "openai:gpt-4o-mini",
        "openai",
        "gpt-4o-mini",
        True,
    )
    assert first["price"]["input_per_mtok"] == "0.150000"
    assert first["price"]["currency"] == "USD"
    assert (second["id"], second["default"], second["price"]) == (
        "anthropic:claude-sonnet-4-6",
        False,
        None,
    )
    answer = client.post(
        "/api/v1/conversations/stream",
        {
            "context_id": str(context.id),
            "model": "openai:gpt-4",
            "messages": [{"role": "user", "content": "hi"}],
        },
        content_type="application/json",
        **auth,
    )
    assert answer.status_code == 400
    assert "model" in answer.json()["errors"]


@pytest.mark.django_db
def test_the_admin_routes_page_shows_and_closes_breakers(client):
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-root-1")
    client.force_login(admin)
    breaker.record_failure(OPENAI.name)
    breaker.record_failure(OPENAI.name)
    page = client.get("/admin/ai/modelprice/routes/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "openai:gpt-4o-mini" in html and "anthropic:claude-sonnet-4-6" in html
    assert 'class="route-open"' in html and "Close breaker" in html
    assert "/admin/ai/modelprice/routes/" in client.get("/admin/ai/modelprice/").content.decode()
    answer = client.post("/admin/ai/modelprice/routes/", {"close": OPENAI.name})
    assert answer.status_code == 302
    assert breaker.breaker_states([OPENAI.name])[0].state == breaker.CLOSED
    assert 'class="route-open"' not in client.get("/admin/ai/modelprice/routes/").content.decode()


@pytest.mark.django_db
def test_the_routes_page_is_for_staff_only(client):
    user = factories.make_user("bob")
    client.force_login(user)
    assert client.get("/admin/ai/modelprice/routes/").status_code == 302  # to the login
