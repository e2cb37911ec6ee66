"""Shared fixtures: users, authenticated API clients, and data of two users."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from tests import factories


@pytest.fixture
def user(db):
    return factories.make_user("alice")


@pytest.fixture
def other_user(db):
    return factories.make_user("mallory")


@pytest.fixture
def token(user) -> str:
    return factories.make_token(user)


@pytest.fixture
def api(user, token) -> APIClient:
    """An API client authenticated as ``user`` with a DRF token."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def other_api(other_user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {factories.make_token(other_user)}")
    return client


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()
