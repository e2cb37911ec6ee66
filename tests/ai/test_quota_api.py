"""GET /api/v1/quota/: the caller's quota."""

from __future__ import annotations

import pytest
from django.urls import reverse

from ai.models import Quota
from ai.quota.services import quota_get_or_create
from tests.ai.quota_turns import reserve

pytestmark = pytest.mark.django_db


def test_url_is_the_contracts() -> None:
    assert reverse("quota") == "/api/v1/quota/"


def test_new_user_gets_the_default_quota(api, user, settings) -> None:
    response = api.get("/api/v1/quota/")
    assert response.status_code == 200
    body = response.json()
    assert body["period"] == settings.QUOTA_PERIOD
    assert body["requests_limit"] == settings.QUOTA_REQUESTS_LIMIT
    assert body["tokens_limit"] == settings.QUOTA_TOKENS_LIMIT
    assert body["requests_used"] == body["tokens_used"] == 0
    assert body["requests_remaining"] == settings.QUOTA_REQUESTS_LIMIT
    assert body["resets_at"].endswith("+00:00")
    # A read: the row is created by the user's first turn, with these same values.
    assert not Quota.objects.filter(user=user).exists()


def test_shows_used_and_what_remains_with_replies_in_flight(api, user, other_user) -> None:
    quota = quota_get_or_create(user=user)
    Quota.objects.filter(pk=quota.pk).update(
        period="none",
        resets_at=None,
        requests_limit=10,
        requests_used=3,
        tokens_limit=1000,
        tokens_used=100,
    )
    reserve(user, 250)
    reserve(other_user, 5)  # someone else's is not counted
    body = api.get("/api/v1/quota/").json()
    assert body == {
        "period": "none",
        "requests_limit": 10,
        "requests_used": 3,
        "requests_remaining": 6,
        "tokens_limit": 1000,
        "tokens_used": 100,
        "tokens_remaining": 650,
        "cost_limit": None,
        "cost_used": "0.00000000",
        "cost_remaining": None,
        "resets_at": None,
    }


def test_anonymous_is_401(anon_api) -> None:
    response = anon_api.get("/api/v1/quota/")
    assert response.status_code == 401
    assert response.json()["code"] == "not_authenticated"
    assert not Quota.objects.exists()


def test_documented_in_the_schema(api) -> None:
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    text = response.content.decode()
    assert "/api/v1/quota/" in text
    assert "tokens_remaining" in text
