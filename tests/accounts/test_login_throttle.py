"""Password logins are throttled like bad tokens: per client address and per username."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client

from tests import factories

LIMIT = 5


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.AUTH_FAILURES_PER_MINUTE = LIMIT
    cache.clear()
    yield
    cache.clear()


def _post(path: str, username: str, password: str, ip: str = "10.0.0.1") -> int:
    client = Client(REMOTE_ADDR=ip)
    return client.post(path, {"username": username, "password": password}).status_code


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/admin/login/"])
def test_wrong_passwords_get_429_after_the_limit(path):
    factories.make_user("mallory-target", is_staff=True)
    answers = [_post(path, "mallory-target", f"guess-{n}") for n in range(LIMIT)]
    assert answers == [200] * LIMIT  # the form again, with its error
    client = Client(REMOTE_ADDR="10.0.0.1")
    response = client.post(path, {"username": "mallory-target", "password": "pw-mallory-target"})
    assert response.status_code == 429  # even the right password waits now
    assert 1 <= int(response["Retry-After"]) <= 60


@pytest.mark.django_db
def test_the_username_is_throttled_across_addresses():
    factories.make_user("victim")
    for n in range(LIMIT):
        assert _post("/accounts/login/", "victim", "wrong", ip=f"10.0.1.{n}") == 200
    assert _post("/accounts/login/", "victim", "pw-victim", ip="10.0.2.1") == 429
    # another user from a fresh address is not affected
    factories.make_user("bystander")
    assert _post("/accounts/login/", "bystander", "pw-bystander", ip="10.0.3.1") == 302


@pytest.mark.django_db
def test_a_right_password_under_the_limit_logs_in():
    factories.make_user("erin")
    for _ in range(LIMIT - 1):
        assert _post("/accounts/login/", "erin", "nope") == 200
    assert _post("/accounts/login/", "erin", "pw-erin") == 302


@pytest.mark.django_db
def test_bad_tokens_and_passwords_share_the_address_budget(api):
    client = Client(REMOTE_ADDR="10.9.9.9")
    for _ in range(LIMIT):
        response = client.get("/api/v1/contexts/", HTTP_AUTHORIZATION="Token nope")
        assert response.status_code == 401
    assert client.get("/api/v1/contexts/", HTTP_AUTHORIZATION="Token nope").status_code == 429
    assert _post("/accounts/login/", "anyone", "x", ip="10.9.9.9") == 429
