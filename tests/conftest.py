"""Shared fixtures: users, authenticated API clients, and data of two users."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from core.db import db_pool_close
from tests import factories


@pytest.fixture(scope="session", autouse=True)
def _close_db_pool_connections(django_db_setup, django_db_blocker):
    """In-process async tests leave pool threads holding connections; close them before
    the test database is dropped."""
    yield
    with django_db_blocker.unblock():
        db_pool_close()
        _end_other_sessions()


def _end_other_sessions() -> None:
    """On PostgreSQL, end what else is still connected to the test database (a connection
    kept by a thread of asgiref's or by a server process being stopped), so that dropping
    it does not fail with "being accessed by other users"."""
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


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
