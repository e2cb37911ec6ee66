"""Throttling: anonymous callers of public API views, and repeated failed authentication."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from rest_framework.throttling import AnonRateThrottle

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counters():
    cache.clear()
    yield
    cache.clear()


def test_repeated_bad_credentials_get_429_with_retry_after(anon_api, settings, user, token):
    settings.AUTH_FAILURES_PER_MINUTE = 3
    anon_api.credentials(HTTP_AUTHORIZATION="Token not-a-real-key")
    codes = [anon_api.get("/api/v1/contexts/").status_code for _ in range(3)]
    assert codes == [401, 401, 401]
    throttled = anon_api.get("/api/v1/contexts/")
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "too_many_authentication_failures"
    assert 1 <= int(throttled["Retry-After"]) <= 60
    # Other clients are not affected, and good credentials still work from elsewhere.
    anon_api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert anon_api.get("/api/v1/contexts/", REMOTE_ADDR="10.0.0.9").status_code == 200


def test_anonymous_callers_of_public_views_are_throttled(anon_api, monkeypatch):
    monkeypatch.setattr(AnonRateThrottle, "THROTTLE_RATES", {"anon": "3/min"})
    codes = [anon_api.get("/api/v1/schema/").status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    throttled = anon_api.get("/api/v1/schema/")
    assert throttled.status_code == 429 and int(throttled["Retry-After"]) >= 1
    assert throttled.data["code"] == "throttled"


def test_bad_credentials_on_the_stream_endpoint_are_throttled_too(client, settings):
    settings.AUTH_FAILURES_PER_MINUTE = 2

    def post():
        return client.post(
            "/api/v1/conversations/stream",
            data="{}",
            content_type="application/json",
            HTTP_AUTHORIZATION="Token not-a-real-key",
        )

    assert [post().status_code for _ in range(2)] == [401, 401]
    throttled = post()
    assert throttled.status_code == 429
    assert throttled.json()["code"] == "too_many_authentication_failures"
    assert 1 <= int(throttled["Retry-After"]) <= 60
