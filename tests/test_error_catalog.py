"""The error catalog: one table that every error class and every database failure follows."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, InterfaceError, OperationalError
from django.test import AsyncClient

import accounts.errors
import ai.errors
from conversations import services
from conversations.streaming import views
from core.errors import CATALOG, PayloadTooLarge, ServiceError, database_error


def _all_subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


def test_every_error_class_says_what_the_catalog_says():
    assert accounts.errors and ai.errors  # their classes are registered by now
    classes = _all_subclasses(ServiceError)
    assert len(classes) >= 10
    for cls in classes:
        kind = CATALOG[cls.code]
        assert cls.status_code == kind.status, cls


def test_a_class_cannot_give_its_code_another_status():
    with pytest.raises(TypeError):
        type("Wrong", (ServiceError,), {"code": "not_found", "status_code": 400})


def test_an_error_made_from_a_code_takes_status_message_and_retry_hint_from_the_table():
    error = ServiceError(code="too_many_streams")
    assert (error.status_code, error.detail, error.retryable) == (
        429,
        CATALOG["too_many_streams"].message,
        True,
    )
    assert PayloadTooLarge(10).as_body() == {
        "detail": "The body is larger than 10 bytes.",
        "code": "payload_too_large",
    }


@pytest.mark.parametrize(
    ("exc", "code", "status"),
    [
        (OperationalError("server closed the connection"), "database_unavailable", 503),
        (InterfaceError("connection already closed"), "database_unavailable", 503),
        (IntegrityError("duplicate key value"), "internal_error", 500),
    ],
)
def test_only_an_unreachable_database_is_503(exc, code, status):
    error = database_error(exc)
    assert (error.code, error.status_code) == (code, status)


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (IntegrityError("duplicate key value"), 500, "internal_error"),
        (OperationalError("could not connect"), 503, "database_unavailable"),
    ],
)
async def test_the_chat_view_answers_a_database_failure_by_its_kind(
    transactional_db, monkeypatch, exc, status, code
):
    def failing(*args):  # type: ignore[no-untyped-def]
        raise exc

    monkeypatch.setattr(views, "_prepare", failing)
    response = await AsyncClient().post(
        "/api/v1/conversations/stream", data={"message": "hi"}, content_type="application/json"
    )
    assert response.status_code == status
    assert response.json()["code"] == code


def test_the_rest_api_answers_an_integrity_error_as_500_not_503(api, monkeypatch):
    def failing(**_: object) -> None:
        raise IntegrityError("duplicate key value")

    monkeypatch.setattr(services, "context_create", failing)
    response = api.post("/api/v1/contexts/", {"name": "Work"}, format="json")
    assert response.status_code == 500, response.content
    assert response.json()["code"] == "internal_error"
