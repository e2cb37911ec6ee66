"""A flow's history over the API (docs/api.md#flow-history): a user's PATCH is an event,
``GET /api/v1/flows/{id}/events/`` lists them oldest first, 404 for another user's flow;
the admin shows them read-only."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from flows.models import FlowEvent
from flows.signals import flow_events_recorded
from tests import factories

pytestmark = pytest.mark.django_db


@pytest.fixture
def flow(user):
    return factories.make_flow(factories.make_context(user, name="Work"), "Book a flight")


def events_of(api, flow_id) -> list[dict]:
    response = api.get(f"/api/v1/flows/{flow_id}/events/")
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_patching_status_done_records_a_done_event_by_the_user(api, flow):
    sent: list[tuple[list[str], bool]] = []

    def receiver(sender, events, **kwargs):
        sent.append(([e.kind for e in events], transaction.get_connection().in_atomic_block))

    flow_events_recorded.connect(receiver)
    try:
        response = api.patch(f"/api/v1/flows/{flow.id}/", {"status": "done"}, format="json")
    finally:
        flow_events_recorded.disconnect(receiver)
    assert response.status_code == 200 and response.json()["status"] == "done"
    (event,) = events_of(api, flow.id)
    assert event["kind"] == "done" and event["actor"] == "user"
    assert event["changes"] == {"status": "done"}
    assert event["flow_id"] == str(flow.id) and event["source_message_id"] is None
    assert set(event) == {
        "id",
        "flow_id",
        "kind",
        "actor",
        "source_message_id",
        "changes",
        "created_at",
    }
    assert sent == [(["done"], True)]


def test_each_kind_of_patch_and_a_no_op(api, flow):
    url = f"/api/v1/flows/{flow.id}/"
    assert api.patch(url, {"status": "done"}, format="json").status_code == 200
    assert api.patch(url, {"status": "open"}, format="json").status_code == 200
    body = {"due_date": "2025-02-03", "priority": "high"}
    assert api.patch(url, body, format="json").status_code == 200
    assert api.patch(url, {"priority": "high"}, format="json").status_code == 200  # no change
    events = events_of(api, flow.id)
    assert [(e["kind"], e["changes"]) for e in events] == [
        ("done", {"status": "done"}),
        ("reopened", {"status": "open"}),
        ("updated", {"due_date": "2025-02-03", "priority": "high"}),
    ]
    assert [e["created_at"] for e in events] == sorted(e["created_at"] for e in events)


def test_a_new_due_date_is_reminded_of_again(api, flow):
    flow.due_notified_at = timezone.now()
    flow.save()
    api.patch(f"/api/v1/flows/{flow.id}/", {"due_date": "2025-02-03"}, format="json")
    flow.refresh_from_db()
    assert flow.due_notified_at is None


def test_a_refused_patch_records_nothing(api, user, flow):
    factories.make_flow(flow.context, "Call Anna")
    response = api.patch(f"/api/v1/flows/{flow.id}/", {"title": "call anna"}, format="json")
    assert response.status_code == 400 and "title" in response.json()["errors"]
    assert not FlowEvent.objects.exists()


def test_events_of_another_users_flow_answer_404(api, other_api, flow):
    api.patch(f"/api/v1/flows/{flow.id}/", {"status": "done"}, format="json")
    assert other_api.get(f"/api/v1/flows/{flow.id}/events/").status_code == 404
    assert api.get(f"/api/v1/flows/{uuid.uuid4()}/events/").status_code == 404
    assert (
        other_api.patch(f"/api/v1/flows/{flow.id}/", {"status": "open"}, format="json").status_code
        == 404
    )
    assert FlowEvent.objects.count() == 1


def test_events_are_paginated_oldest_first(api, user, flow):
    start = timezone.now()
    FlowEvent.objects.bulk_create(
        FlowEvent(flow=flow, user=user, kind="updated", actor="user", changes={"n": i})
        for i in range(51)
    )
    for i, event in enumerate(FlowEvent.objects.order_by("changes__n")):
        FlowEvent.objects.filter(pk=event.pk).update(created_at=start + timedelta(seconds=i))
    first = api.get(f"/api/v1/flows/{flow.id}/events/").json()
    assert first["count"] == 51 and first["next"] and first["previous"] is None
    second = api.get(first["next"]).json()
    numbers = [e["changes"]["n"] for e in first["results"] + second["results"]]
    assert numbers == list(range(51))


def test_the_admin_shows_the_history_read_only(api, flow):
    admin = factories.make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    api.patch(f"/api/v1/flows/{flow.id}/", {"status": "done"}, format="json")
    page = client.get(reverse("admin:flows_flow_change", args=[flow.id]))
    assert page.status_code == 200
    inline = page.context["inline_admin_formsets"][0]
    assert inline.formset.model is FlowEvent
    assert len(inline.formset.forms) == 1
    assert not inline.has_add_permission and not inline.has_change_permission
    assert not inline.has_delete_permission
