"""Every problem before the first byte is plain JSON with ``detail`` and ``code``.

See docs/api.md#checks-before-the-stream.
"""

from __future__ import annotations

import httpx
import pytest

from ai.models import Quota
from ai.quota.services import quota_get_or_create
from conversations.models import Message
from tests import factories

pytestmark = pytest.mark.e2e


@pytest.fixture
def setup(transactional_db):
    alice = factories.make_user("alice")
    mallory = factories.make_user("mallory")
    return {
        "alice": alice,
        "token": factories.make_token(alice),
        "context": factories.make_context(alice, name="Work"),
        "foreign_context": factories.make_context(mallory, name="Secret"),
        "mallory": mallory,
    }


def post(server, token, body, **headers):
    all_headers = {"Accept": "text/event-stream", **headers}
    if token:
        all_headers["Authorization"] = f"Token {token}"
    kwargs = {"content": body} if isinstance(body, bytes | str) else {"json": body}
    if isinstance(body, bytes | str):
        all_headers.setdefault("Content-Type", "application/json")
    return httpx.post(
        f"{server.url}/api/v1/conversations/stream", headers=all_headers, timeout=20, **kwargs
    )


def msg(text="hi", role="user"):
    return {"role": role, "content": text}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": [msg()]}, "context_id"),
        ({"context_id": "not-a-uuid", "messages": [msg()]}, "context_id"),
        ({"context_id": "CTX", "messages": []}, "messages"),
        ({"context_id": "CTX", "messages": [msg("")]}, "messages"),
        ({"context_id": "CTX", "messages": [msg("x" * 10_001)]}, "messages"),
        ({"context_id": "CTX", "messages": [msg("hi", "robot")]}, "messages"),
        ({"context_id": "CTX", "messages": [msg(), msg("ok", "assistant")]}, "messages"),
        ({"context_id": "CTX", "messages": [msg()] * 101}, "messages"),
        ({"conversation_id": None, "message": "hi"}, "conversation_id"),
        ({"context_id": "CTX"}, "messages"),
        ({"context_id": "CTX", "messages": [msg()], "message": "hi"}, "message"),
        ({"context_id": "CTX", "messages": "hi"}, "messages"),
    ],
)
def test_invalid_bodies_name_the_field(daphne, setup, body, field):
    if body.get("context_id") == "CTX":
        body = {**body, "context_id": str(setup["context"].id)}
    response = post(daphne, setup["token"], body)
    assert response.status_code == 400, response.text
    data = response.json()
    assert data["code"] == "invalid" and field in data["errors"] and field in data["detail"]
    assert not Message.objects.exists()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b"[1, 2]", "invalid"),
    ],
)
def test_malformed_json(daphne, setup, raw, code):
    response = post(daphne, setup["token"], raw)
    assert response.status_code in (400, 413) and response.json()["code"] in (
        code,
        "payload_too_large",
    )


def test_wrong_content_type_and_huge_body(daphne, setup):
    response = post(daphne, setup["token"], b"hello", **{"Content-Type": "text/plain"})
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    response = post(daphne, setup["token"], b'{"a": "' + b"x" * 10_000_000 + b'"}')
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


def test_authentication_required(daphne, setup):
    response = post(daphne, None, {"context_id": str(setup["context"].id), "messages": [msg()]})
    assert response.status_code == 401 and response.json()["code"] == "not_authenticated"
    response = post(
        daphne, "bad-token", {"context_id": str(setup["context"].id), "messages": [msg()]}
    )
    assert response.status_code == 401 and response.json()["code"] == "authentication_failed"


def test_foreign_or_missing_context_and_conversation_are_404(daphne, setup):
    token = setup["token"]
    for body in (
        {"context_id": str(setup["foreign_context"].id), "messages": [msg()]},
        {"context_id": "00000000-0000-0000-0000-000000000000", "messages": [msg()]},
        {
            "conversation_id": str(factories.make_conversation(setup["foreign_context"]).id),
            "message": "hi",
        },
    ):
        response = post(daphne, token, body)
        assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert not Message.objects.filter(user=setup["alice"]).exists()


def test_context_must_match_conversation(daphne, setup):
    conversation = factories.make_conversation(setup["context"])
    other = factories.make_context(setup["alice"], name="Other")
    response = post(
        daphne,
        setup["token"],
        {"conversation_id": str(conversation.id), "context_id": str(other.id), "message": "hi"},
    )
    assert response.status_code == 400 and "context_id" in response.json()["errors"]


def test_conversation_busy_is_409(daphne, setup):
    conversation = factories.make_conversation(setup["context"])
    factories.make_message(conversation, role="assistant", content="", status="streaming")
    response = post(
        daphne, setup["token"], {"conversation_id": str(conversation.id), "message": "hi"}
    )
    assert response.status_code == 409 and response.json()["code"] == "conversation_busy"


def test_too_many_streams_is_429(daphne, setup):
    for i in range(3):  # CHAT_MAX_CONCURRENT_STREAMS defaults to 3
        conversation = factories.make_conversation(factories.make_context(setup["alice"], f"B{i}"))
        factories.make_message(conversation, role="assistant", content="", status="streaming")
    response = post(
        daphne, setup["token"], {"context_id": str(setup["context"].id), "messages": [msg()]}
    )
    assert response.status_code == 429 and response.json()["code"] == "too_many_streams"
    assert "retry-after" in response.headers


def test_quota_exceeded_is_429_with_quota_and_retry_after(daphne, setup):
    quota = quota_get_or_create(user=setup["alice"])
    Quota.objects.filter(pk=quota.pk).update(requests_used=quota.requests_limit)
    response = post(
        daphne, setup["token"], {"context_id": str(setup["context"].id), "messages": [msg()]}
    )
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "quota_exceeded" and body["quota"]["requests_remaining"] == 0
    assert int(response.headers["retry-after"]) >= 1
    assert not Message.objects.exists()


def test_provider_not_configured_is_503(daphne_factory, setup):
    server = daphne_factory(AI_PROVIDER="openai", OPENAI_API_KEY="", OPENAI_BASE_URL="")
    response = post(
        server, setup["token"], {"context_id": str(setup["context"].id), "messages": [msg()]}
    )
    assert response.status_code == 503 and response.json()["code"] == "ai_unavailable"


def test_cors_headers_for_allowed_origins(daphne_factory, setup):
    server = daphne_factory(CORS_ALLOWED_ORIGINS="https://app.example.com")
    body = {"context_id": str(setup["context"].id), "messages": [msg()]}
    allowed = post(server, setup["token"], body, Origin="https://app.example.com")
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    other = post(server, setup["token"], body, Origin="https://evil.example")
    assert "access-control-allow-origin" not in other.headers
    preflight = httpx.options(
        f"{server.url}/api/v1/conversations/stream",
        timeout=10,
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,last-event-id",
        },
    )
    assert preflight.status_code == 200
    assert "authorization" in preflight.headers["access-control-allow-headers"]


def test_session_post_needs_csrf(daphne, setup):
    setup["alice"].is_staff = True  # to log in through the admin's login form
    setup["alice"].save()
    client = httpx.Client(base_url=daphne.url, timeout=20)
    page = client.get("/admin/login/")
    csrf = client.cookies["csrftoken"]
    login = client.post(
        "/admin/login/",
        data={
            "username": "alice",
            "password": "pw-alice",
            "csrfmiddlewaretoken": csrf,
            "next": "/admin/",
        },
        headers={"Referer": f"{daphne.url}/admin/login/"},
    )
    assert page.status_code == 200 and login.status_code in (200, 302)
    assert "sessionid" in client.cookies
    body = {"context_id": str(setup["context"].id), "messages": [msg()]}
    refused = client.post("/api/v1/conversations/stream", json=body)
    assert refused.status_code == 403 and refused.json()["code"] == "permission_denied"
    accepted = client.post(
        "/api/v1/conversations/stream",
        json=body,
        headers={"X-CSRFToken": client.cookies["csrftoken"], "Referer": f"{daphne.url}/"},
    )
    assert accepted.status_code == 200
