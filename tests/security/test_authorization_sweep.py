"""Every URL pattern of the project, classified and checked for protection.

The sweep walks ``django.urls.get_resolver()`` recursively. Each route must fall in one
class below; an unclassified route fails the test, so a route added later without a
decision about its protection cannot slip in. For each class:

- ``PUBLIC``: open to anyone, each with the reason why;
- ``LOGIN_PAGE``: anonymous visitors are redirected to the login page;
- ``IP_RESTRICTED``: answered only to allowed addresses (``METRICS_ALLOWED_IPS``);
- ``admin/...``: anonymous and logged-in non-staff users are sent to the admin login;
- ``API`` (everything else under ``api/``): anonymous -> 401 with a JSON ``code``;
  routes naming an object (``<pk>``): another user's id -> 404 for every method allowed,
  and the object is unchanged; session-authenticated writes without the CSRF token -> 403.

The streaming routes are async views; Django's test client runs them (their database
units run on the db_run threads, hence ``transactional_db``).
"""

from __future__ import annotations

import json
import re

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from conversations.models import Context, Conversation, Message
from flows.models import Flow
from tests import factories
from tests.webhooks.conftest import make_subscription
from webhooks.models import Subscription

pytestmark = pytest.mark.django_db(transaction=True)

PUBLIC = {
    "healthz": "liveness probe for the load balancer; says only 'ok'",
    "readyz": "readiness probe for the load balancer; says only which dependency is down",
    "api/v1/schema/": "the API's own OpenAPI description; no user data",
    "api/v1/docs/": "the browsable rendering of that schema; no user data",
    "accounts/login/": "the login form itself",
    "accounts/logout/": "logging out (POST with CSRF) needs no login",
    "admin/login/": "the admin's login form itself",
    "admin/logout/": "logging out of the admin needs no login (sends anonymous users to /admin/)",
}
LOGIN_PAGE = {"": "the chat page: anonymous visitors go to the login page"}
IP_RESTRICTED = {"metrics": "Prometheus text, open only to METRICS_ALLOWED_IPS"}

#: Async function views: their methods cannot be read off a class.
FUNCTION_VIEW_METHODS = {
    "api/v1/conversations/stream": ["POST"],
    "api/ai/chat/stream": ["POST"],
    "api/v1/messages/<uuid:pk>/stream": ["GET"],
    "api/v1/messages/<uuid:pk>/cancel": ["POST"],
    "api/v1/messages/<uuid:pk>/regenerate": ["POST"],
    "api/v1/messages/<uuid:pk>/edit": ["POST"],
}

#: Which model a ``<pk>`` names, by the resource segment of the route.
PK_MODELS = {
    "contexts": Context,
    "conversations": Conversation,
    "messages": Message,
    "flows": Flow,
    "webhooks": Subscription,
}

WRITE_BODY = {
    "name": "Pwned",
    "title": "Pwned",
    "status": "done",
    "message": "hi",
    "content": "hi",
}


def walk(patterns, prefix=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            yield from walk(pattern.url_patterns, prefix + str(pattern.pattern))
        else:
            assert isinstance(pattern, URLPattern)
            yield prefix + str(pattern.pattern), pattern


ROUTES = sorted(walk(get_resolver().url_patterns), key=lambda item: item[0])


def classify(route: str) -> str:
    if route in PUBLIC:
        return "public"
    if route in LOGIN_PAGE:
        return "login_page"
    if route in IP_RESTRICTED:
        return "ip_restricted"
    if route.startswith("admin/"):
        return "admin"
    if route.startswith("api/"):
        return "api"
    return "unclassified"


def methods_of(route: str, pattern: URLPattern) -> list[str]:
    if route in FUNCTION_VIEW_METHODS:
        return FUNCTION_VIEW_METHODS[route]
    cls = getattr(pattern.callback, "cls", None) or getattr(pattern.callback, "view_class", None)
    assert cls is not None, f"{route}: a function view: add its methods to FUNCTION_VIEW_METHODS"
    return [
        m.upper()
        for m in cls.http_method_names
        if m not in ("head", "options", "trace") and hasattr(cls, m)
    ]


def sample_path(route: str, value: str = "00000000-0000-4000-8000-000000000001") -> str:
    path = re.sub(r"<(?:\w+:)?\w+>", value, route)
    path = re.sub(r"\(\?P<app_label>([\w]+)[^)]*\)", r"\1", path)  # the admin's app list
    path = path.replace("(?P<url>.*)", "no-such-page/")  # the admin's catch-all
    return "/" + path.replace("^", "").replace("$", "")


@pytest.fixture
def world():
    alice = factories.make_user("alice")
    mallory = factories.make_user("mallory")
    mine = factories.make_context(alice, name="Work")
    theirs = factories.make_context(mallory, name="Secret")
    their_conversation = factories.make_conversation(theirs, title="Private")
    their_reply = factories.make_message(
        their_conversation, role="assistant", content="secret", status="complete"
    )
    their_flow = factories.make_flow(theirs, title="Secret plan")
    return {
        "alice": alice,
        "token": factories.make_token(alice),
        "mine": mine,
        "foreign": {
            "contexts": theirs,
            "conversations": their_conversation,
            "messages": their_reply,
            "flows": their_flow,
            "webhooks": make_subscription(mallory),
        },
    }


def test_every_route_is_classified():
    unclassified = [route for route, _ in ROUTES if classify(route) == "unclassified"]
    assert not unclassified, f"classify these routes in {__name__}: {unclassified}"
    for route, pattern in ROUTES:
        if classify(route) == "api" and "<" in route:
            resource = route.split("/")[2]
            assert resource in PK_MODELS, f"{route}: which model does <pk> name?"
        if classify(route) == "api":
            assert methods_of(route, pattern), route


@pytest.mark.parametrize(("route", "pattern"), ROUTES, ids=[r or "/" for r, _ in ROUTES])
def test_anonymous_access(route, pattern, world):
    kind = classify(route)
    client = Client()
    path = sample_path(route)
    if kind == "public":
        response = client.get(path)
        assert response.status_code in (200, 302, 405, 503), (route, response.status_code)
    elif kind == "login_page":
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    elif kind == "ip_restricted":
        response = client.get(path, REMOTE_ADDR="203.0.113.9")
        assert response.status_code in (403, 404), (route, response.status_code)
    elif kind == "admin":
        response = client.get(path)
        assert response.status_code == 302, (route, response.status_code)
        assert response["Location"].startswith("/admin/login/"), response["Location"]
    else:
        assert kind == "api", route
        for method in methods_of(route, pattern):
            response = client.generic(method, path, data=b"{}", content_type="application/json")
            assert response.status_code == 401, (method, route, response.status_code)
            assert response.json()["code"] in ("not_authenticated", "authentication_failed")


@pytest.mark.parametrize(
    ("route", "pattern"),
    [(r, p) for r, p in ROUTES if classify(r) == "admin"],
    ids=[r for r, _ in ROUTES if classify(r) == "admin"],
)
def test_admin_needs_a_staff_user(route, pattern, world):
    client = Client()
    client.force_login(world["alice"])  # logged in, not staff
    response = client.get(sample_path(route))
    assert response.status_code == 302, (route, response.status_code)
    assert response["Location"].startswith("/admin/login/")


def test_a_staff_user_reaches_the_admin(world):
    staff = factories.make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/conversations/message/").status_code == 200


OBJECT_ROUTES = [(r, p) for r, p in ROUTES if classify(r) == "api" and "<" in r]


@pytest.mark.parametrize(("route", "pattern"), OBJECT_ROUTES, ids=[r for r, _ in OBJECT_ROUTES])
def test_another_users_object_is_404_for_every_method(route, pattern, world):
    resource = route.split("/")[2]
    target = world["foreign"][resource]
    before = {
        model: sorted(model.objects.values_list("pk", "updated_at")) for model in PK_MODELS.values()
    }
    accept = "text/event-stream" if route in FUNCTION_VIEW_METHODS else "application/json"
    client = Client(HTTP_AUTHORIZATION=f"Token {world['token']}", HTTP_ACCEPT=accept)
    for method in methods_of(route, pattern):
        response = client.generic(
            method,
            sample_path(route, str(target.pk)),
            data=b'{"name": "Pwned", "title": "Pwned", "status": "done", "content": "hi"}',
            content_type="application/json",
        )
        assert response.status_code == 404, (method, route, response.status_code)
        assert response.json()["code"] == "not_found"
        assert "secret" not in response.content.decode().lower()
    after = {
        model: sorted(model.objects.values_list("pk", "updated_at")) for model in PK_MODELS.values()
    }
    assert before == after, "another user's data changed"


def test_chat_into_another_users_context_or_conversation_is_404(world):
    client = Client(HTTP_AUTHORIZATION=f"Token {world['token']}", HTTP_ACCEPT="text/event-stream")
    for path in ("/api/v1/conversations/stream", "/api/ai/chat/stream"):
        for body in (
            {
                "context_id": str(world["foreign"]["contexts"].pk),
                "messages": [{"role": "user", "content": "hi"}],
            },
            {"conversation_id": str(world["foreign"]["conversations"].pk), "message": "hi"},
        ):
            response = client.post(path, data=body, content_type="application/json")
            assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert Message.objects.count() == 1


def csrf_targets(world):
    own_conversation = factories.make_conversation(world["mine"])
    own_flow = factories.make_flow(world["mine"], title="Mine")
    own_reply = factories.make_message(
        own_conversation, role="assistant", content="ok", status="complete"
    )
    own = {
        "contexts": world["mine"],
        "conversations": own_conversation,
        "messages": own_reply,
        "flows": own_flow,
        "webhooks": make_subscription(world["alice"]),
    }
    for route, pattern in ROUTES:
        if classify(route) != "api":
            continue
        for method in methods_of(route, pattern):
            if method in ("GET", "HEAD", "OPTIONS"):
                continue
            pk = str(own[route.split("/")[2]].pk) if "<" in route else "1"
            yield method, route, sample_path(route, pk)


def test_session_writes_need_the_csrf_token(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["alice"])
    checked = []
    for method, route, path in csrf_targets(world):
        body = (
            {"context_id": str(world["mine"].pk), "messages": [{"role": "user", "content": "hi"}]}
            if route.endswith("stream")
            else WRITE_BODY
        )
        response = client.generic(
            method, path, data=json.dumps(body), content_type="application/json"
        )
        assert response.status_code == 403, (method, route, response.status_code)
        checked.append((method, route))
    assert {m for m, _ in checked} >= {"POST", "PATCH", "DELETE"}
    assert Context.objects.filter(user=world["alice"]).count() == 1
    assert Context.objects.get(pk=world["mine"].pk).name == "Work"
    assert not Message.objects.filter(user=world["alice"], role="user").exists()


def test_session_writes_with_the_csrf_token_pass(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world["alice"])
    client.get("/")  # the chat page sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    response = client.patch(
        f"/api/v1/contexts/{world['mine'].pk}/",
        data={"description": "updated"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 200, response.content
    response = client.post(
        "/api/v1/contexts/",
        data={"name": "New"},
        content_type="application/json",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 201
