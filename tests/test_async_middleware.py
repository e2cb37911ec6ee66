"""Django's stock middleware run inline under ASGI (core.async_middleware): the same
behaviour, without a thread hop per hook."""

from __future__ import annotations

import asgiref.sync
import pytest
from django.contrib.sessions.models import Session
from django.test import AsyncClient

from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def thread_hops(monkeypatch):
    """Counts ``sync_to_async`` calls (each one a hop to a thread and back)."""
    calls = []
    original = asgiref.sync.SyncToAsync.__call__

    def counting(self, *args, **kwargs):
        calls.append(getattr(self.func, "__qualname__", repr(self.func)))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(asgiref.sync.SyncToAsync, "__call__", counting)
    return calls


async def test_no_middleware_hook_hops_to_a_thread(thread_hops):
    user = await asgiref.sync.sync_to_async(factories.make_user)("hops")
    token = await asgiref.sync.sync_to_async(factories.make_token)(user)
    thread_hops.clear()
    response = await AsyncClient().get(
        "/api/v1/contexts/", headers={"authorization": f"Token {token}"}
    )
    assert response.status_code == 200
    assert response["X-Frame-Options"] == "DENY"  # XFrameOptions ran
    assert response["X-Content-Type-Options"] == "nosniff"  # Security ran
    # What remains is Django's own (signals, the sync DRF view, render, close); with the
    # stock middleware every process_request / process_view / process_response was a hop.
    assert thread_hops and not [hop for hop in thread_hops if ".process_" in hop], thread_hops


async def test_a_login_still_saves_its_session():
    await asgiref.sync.sync_to_async(factories.make_user)("staff", is_staff=True)
    client = AsyncClient()
    page = await client.get("/admin/login/")
    assert page.status_code == 200 and "csrftoken" in page.cookies
    response = await client.post(
        "/admin/login/?next=/admin/",
        {
            "username": "staff",
            "password": "pw-staff",
            "csrfmiddlewaretoken": page.cookies["csrftoken"].value,
        },
    )
    assert response.status_code == 302
    key = response.cookies["sessionid"].value
    assert await Session.objects.filter(session_key=key).aexists()
    admin = await client.get("/admin/")
    assert admin.status_code == 200


async def test_csrf_is_still_enforced_inline():
    await asgiref.sync.sync_to_async(factories.make_user)("staff2", is_staff=True)
    client = AsyncClient(enforce_csrf_checks=True)
    response = await client.post("/admin/login/", {"username": "staff2", "password": "pw-staff2"})
    assert response.status_code == 403


async def test_append_slash_redirect_still_works():
    response = await AsyncClient().get("/api/v1/contexts")
    assert response.status_code == 301 and response["Location"].endswith("/api/v1/contexts/")
