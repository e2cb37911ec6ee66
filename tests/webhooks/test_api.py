"""The webhooks REST endpoints (docs/api.md#webhooks): shapes, scoping, refusals."""

from __future__ import annotations

import base64

import pytest
from standardwebhooks import Webhook

from webhooks.models import Subscription

pytestmark = pytest.mark.django_db

URL = "https://93.184.215.14/hook"  # a public address: no DNS needed


def create(api, **body):
    return api.post(
        "/api/v1/webhooks/", {"url": URL, "events": ["flow.created"], **body}, format="json"
    )


def test_create_shows_the_secret_once(api, user):
    response = create(api, events=["flow.created", "flow.done", "flow.created"])
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["url"] == URL
    assert body["events"] == ["flow.created", "flow.done"]
    assert body["active"] is True
    secret = body["secret"]
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    Webhook(secret)  # the package reads it
    stored = Subscription.objects.get(pk=body["id"])
    assert stored.user == user and stored.secret == secret
    # Never again: not in the detail, not in the list.
    detail = api.get(f"/api/v1/webhooks/{body['id']}/").json()
    assert "secret" not in detail
    listed = api.get("/api/v1/webhooks/").json()
    assert listed["count"] == 1 and "secret" not in listed["results"][0]


def test_two_subscriptions_have_different_secrets(api):
    first, second = create(api).json(), create(api).json()
    assert first["secret"] != second["secret"]


def test_patch_and_delete(api):
    sub = create(api).json()
    response = api.patch(
        f"/api/v1/webhooks/{sub['id']}/",
        {"events": ["flow.due"], "active": False},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["events"] == ["flow.due"]
    assert response.json()["active"] is False
    assert "secret" not in response.json()
    stored = Subscription.objects.get(pk=sub["id"])
    assert stored.events == ["flow.due"] and not stored.active
    assert stored.secret == sub["secret"]
    assert api.delete(f"/api/v1/webhooks/{sub['id']}/").status_code == 204
    assert not Subscription.objects.filter(pk=sub["id"]).exists()


def test_another_users_subscription_is_not_found(api, other_api):
    sub = create(api).json()
    path = f"/api/v1/webhooks/{sub['id']}/"
    assert other_api.get(path).status_code == 404
    assert other_api.patch(path, {"active": False}, format="json").status_code == 404
    assert other_api.delete(path).status_code == 404
    assert other_api.get("/api/v1/webhooks/").json()["count"] == 0
    assert Subscription.objects.get(pk=sub["id"]).active


def test_anonymous_is_refused(anon_api):
    assert anon_api.get("/api/v1/webhooks/").status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "not a url"}, "url"),
        ({"url": "ftp://93.184.215.14/x"}, "url"),
        ({"url": "https://user:pw@93.184.215.14/x"}, "url"),
        ({"url": 5}, "url"),
        ({"events": []}, "events"),
        ({"events": ["flow.deleted"]}, "events"),
        ({"events": "flow.created"}, "events"),
        ({"active": "yes"}, "active"),
    ],
)
def test_bad_input_names_the_field(api, body, field):
    response = create(api, **body)
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"]
    assert not Subscription.objects.exists()


def test_missing_url_is_named(api):
    response = api.post("/api/v1/webhooks/", {}, format="json")
    assert response.status_code == 400
    assert set(response.json()["errors"]) == {"url"}


def test_events_default_to_all(api):
    response = api.post("/api/v1/webhooks/", {"url": URL}, format="json")
    assert response.status_code == 201
    assert response.json()["events"] == ["flow.created", "flow.updated", "flow.done", "flow.due"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://224.0.0.1/hook",
        "http://240.0.0.1/hook",
        "http://localhost:8000/hook",  # a name that resolves to loopback
        "http://2130706433/hook",  # 127.0.0.1 as one number
    ],
)
def test_inner_addresses_are_refused(api, settings, url):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    response = create(api, url=url)
    assert response.status_code == 400, response.content
    assert "url" in response.json()["errors"]
    assert not Subscription.objects.exists()


def test_patching_to_an_inner_address_is_refused(api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    sub = create(api).json()
    response = api.patch(
        f"/api/v1/webhooks/{sub['id']}/", {"url": "http://10.0.0.1/x"}, format="json"
    )
    assert response.status_code == 400
    assert "url" in response.json()["errors"]
    assert Subscription.objects.get(pk=sub["id"]).url == URL


def test_unresolvable_host_is_refused(api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    response = create(api, url="http://no-such-host.invalid/hook")
    assert response.status_code == 400
    assert "url" in response.json()["errors"]


def test_inner_addresses_allowed_when_configured(api, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = True
    response = create(api, url="http://127.0.0.1:9/hook")
    assert response.status_code == 201
