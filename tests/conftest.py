"""Shared fixtures: users, authenticated API clients, and data of two users."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from chatproject.db import db_pool_close
from tests import factories


@pytest.fixture(scope="session", autouse=True)
def _close_db_pool_connections(django_db_setup, django_db_blocker):
    """In-process async tests leave pool threads holding connections; close them before
    the test database is dropped."""
    yield
    with django_db_blocker.unblock():
        db_pool_close()


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
