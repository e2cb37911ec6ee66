"""The outbox: deliveries written with the flow change, claims under a lease, outcomes,
backoff, giving up, ``flow.due`` once, and the admin (docs/operations.md#webhooks)."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from flows.models import Flow, FlowEvent
from flows.signals import flow_events_recorded
from tests import factories
from tests.webhooks.conftest import make_subscription, record
from webhooks.models import Delivery, DeliveryAttempt
from webhooks.services import (
    deliveries_claim,
    deliveries_retry_now,
    delivery_record,
    flows_due_notify,
    retry_delay,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def context(user):
    return factories.make_context(user, name="Work")


def test_each_kind_maps_to_its_event(user, context):
    sub = make_subscription(user)
    flow = factories.make_flow(context, "Book flight")
    record(flow, "created", {"title": "Book flight"})
    record(flow, "updated", {"priority": "high"})
    record(flow, "done", {"status": "done"})
    record(flow, "reopened", {"status": "open"})
    deliveries = list(Delivery.objects.order_by("created_at", "webhook_id"))
    assert sorted(d.event_type for d in deliveries) == sorted(
        ["flow.created", "flow.updated", "flow.done", "flow.updated"]
    )
    assert {d.subscription_id for d in deliveries} == {sub.id}
    assert len({d.webhook_id for d in deliveries}) == 4
    assert all(d.webhook_id.startswith("msg_") for d in deliveries)
    created = Delivery.objects.get(event_type="flow.created")
    assert created.status == "pending" and created.attempts == 0
    assert created.flow_id == flow.id
    payload = created.payload
    assert payload["type"] == "flow.created"
    assert payload["data"]["flow"]["id"] == str(flow.id)
    assert payload["data"]["flow"]["title"] == "Book flight"
    assert payload["data"]["change"]["kind"] == "created"
    assert payload["data"]["change"]["actor"] == "user"
    assert payload["data"]["change"]["changes"] == {"title": "Book flight"}


def test_only_subscribed_events_of_active_subscriptions_of_the_owner(user, other_user, context):
    make_subscription(user, events=["flow.done"])
    make_subscription(user, active=False)
    make_subscription(other_user)
    flow = factories.make_flow(context)
    record(flow, "created")
    assert not Delivery.objects.exists()
    record(flow, "done", {"status": "done"})
    assert list(Delivery.objects.values_list("event_type", flat=True)) == ["flow.done"]


def test_no_subscription_costs_one_query(user, context, django_assert_num_queries):
    flow = factories.make_flow(context)
    event = FlowEvent.objects.create(flow=flow, user=user, kind="created", actor="extraction")
    with django_assert_num_queries(1):
        flow_events_recorded.send(sender=FlowEvent, events=[event])
    assert not Delivery.objects.exists()


def test_deliveries_roll_back_with_the_flow_change(user, context):
    make_subscription(user)
    flow = factories.make_flow(context)
    with pytest.raises(RuntimeError), transaction.atomic():
        event = FlowEvent.objects.create(flow=flow, user=user, kind="updated", actor="user")
        flow_events_recorded.send(sender=FlowEvent, events=[event])
        assert Delivery.objects.count() == 1
        raise RuntimeError("the flow change failed")
    assert not Delivery.objects.exists()


def test_a_new_due_date_rearms_flow_due(user, context):
    flow = factories.make_flow(context, due_date=dt.date(2026, 1, 1))
    Flow.objects.filter(pk=flow.pk).update(due_notified_at=timezone.now())
    flow.refresh_from_db()
    record(flow, "updated", {"title": "Renamed"})
    flow.refresh_from_db()
    assert flow.due_notified_at is not None
    event = record(flow, "updated", {"due_date": "2026-02-01"})
    flow.refresh_from_db()
    assert flow.due_notified_at is None
    assert event.flow.due_notified_at is None


# --- flow.due ----------------------------------------------------------------------------


def test_flow_due_fires_once_for_flows_that_reached_their_date(user, context):
    make_subscription(user, events=["flow.due"])
    today = timezone.localdate()
    due = factories.make_flow(context, "Due today", due_date=today)
    late = factories.make_flow(context, "Late", due_date=today - timedelta(days=3))
    factories.make_flow(context, "Future", due_date=today + timedelta(days=1))
    factories.make_flow(context, "No date")
    factories.make_flow(context, "Quiet", due_date=today, reminder_enabled=False)
    factories.make_flow(context, "Done", due_date=today, status="done")
    assert flows_due_notify() == 2
    assert flows_due_notify() == 0
    deliveries = Delivery.objects.filter(event_type="flow.due")
    assert sorted(d.flow_id for d in deliveries) == sorted([due.id, late.id])
    assert deliveries.get(flow_id=due.id).payload["data"]["flow"]["title"] == "Due today"
    assert Flow.objects.filter(due_notified_at__isnull=False).count() == 2


def test_flow_due_marks_flows_of_users_without_subscriptions(user, context):
    flow = factories.make_flow(context, due_date=timezone.localdate())
    assert flows_due_notify() == 1
    flow.refresh_from_db()
    assert flow.due_notified_at is not None
    assert not Delivery.objects.exists()


# --- claims, outcomes, backoff -----------------------------------------------------------


def _pending(user, context, count=1):
    make_subscription(user, events=["flow.created"])
    for _ in range(count):
        record(factories.make_flow(context), "created")
    return list(Delivery.objects.all())


def test_a_claimed_delivery_is_not_claimed_again_until_its_lease_ends(user, context, settings):
    settings.WEBHOOK_LEASE_SECONDS = 30
    _pending(user, context, 3)
    now = timezone.now()
    first = deliveries_claim(limit=2, now=now)
    assert len(first) == 2
    second = deliveries_claim(limit=10, now=now)
    assert len(second) == 1
    assert not {c.delivery_id for c in first} & {c.delivery_id for c in second}
    assert deliveries_claim(limit=10, now=now + timedelta(seconds=29)) == []
    again = deliveries_claim(limit=10, now=now + timedelta(seconds=31))
    assert len(again) == 3  # the leases ran out: a dead process loses nothing
    claim = first[0]
    assert claim.secret.startswith("whsec_") and claim.url.startswith("http")


def test_success_is_recorded_with_its_attempt(user, context):
    (delivery,) = _pending(user, context)
    (claim,) = deliveries_claim(limit=1)
    outcome = delivery_record(
        claim=claim, started_at=timezone.now(), duration_ms=12, status_code=204, error=""
    )
    assert outcome == "delivered"
    delivery.refresh_from_db()
    assert delivery.status == "delivered" and delivery.attempts == 1
    assert delivery.delivered_at is not None and delivery.locked_until is None
    attempt = DeliveryAttempt.objects.get(delivery=delivery)
    assert attempt.succeeded and attempt.status_code == 204 and attempt.number == 1
    assert deliveries_claim(limit=1) == []


def test_failures_back_off_then_give_up_after_the_max_age(user, context, settings):
    settings.WEBHOOK_RETRY_SCHEDULE = [5.0, 30.0, 120.0]
    settings.WEBHOOK_MAX_AGE_SECONDS = 200
    (delivery,) = _pending(user, context)
    now = timezone.now()
    waits = []
    for _ in range(3):
        (claim,) = deliveries_claim(limit=1, now=now)
        outcome = delivery_record(
            claim=claim, started_at=now, duration_ms=5, status_code=500, error="HTTP 500", now=now
        )
        assert outcome == "retry"
        delivery.refresh_from_db()
        waits.append((delivery.next_attempt_at - now).total_seconds())
        assert deliveries_claim(limit=1, now=now) == []
        now = delivery.next_attempt_at
    assert waits == [5.0, 30.0, 120.0]
    (claim,) = deliveries_claim(limit=1, now=now)
    outcome = delivery_record(
        claim=claim, started_at=now, duration_ms=5, status_code=None, error="timeout", now=now
    )
    assert outcome == "failed"  # 155 s + 120 s is past the 200 s max age
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == 4
    assert delivery.last_error == "timeout" and delivery.last_status_code is None
    assert DeliveryAttempt.objects.filter(delivery=delivery).count() == 4
    assert deliveries_claim(limit=1, now=now + timedelta(days=2)) == []
    # "Retry now" (the admin's action): pending and due again.
    assert deliveries_retry_now(delivery_ids=[delivery.pk]) == 1
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert len(deliveries_claim(limit=1)) == 1


def test_default_schedule_is_capped():
    assert [retry_delay(n) for n in (1, 2, 3, 4, 5, 6, 20)] == [5, 30, 120, 600, 3600, 3600, 3600]


def test_a_redirect_is_a_failure(user, context):
    (delivery,) = _pending(user, context)
    (claim,) = deliveries_claim(limit=1)
    outcome = delivery_record(
        claim=claim, started_at=timezone.now(), duration_ms=5, status_code=302, error="HTTP 302"
    )
    assert outcome == "retry"
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.last_status_code == 302


def test_an_outcome_after_the_lease_was_lost_changes_nothing(user, context, settings):
    settings.WEBHOOK_LEASE_SECONDS = 10
    (delivery,) = _pending(user, context)
    now = timezone.now()
    (stale,) = deliveries_claim(limit=1, now=now)
    (fresh,) = deliveries_claim(limit=1, now=now + timedelta(seconds=11))
    assert (
        delivery_record(
            claim=stale, started_at=now, duration_ms=5, status_code=500, error="HTTP 500"
        )
        == "lease_lost"
    )
    delivery.refresh_from_db()
    assert delivery.attempts == 0 and delivery.lease_token == fresh.lease_token
    assert delivery_record(
        claim=fresh, started_at=now, duration_ms=5, status_code=200, error=""
    ) == ("delivered")


def test_deliveries_of_a_paused_subscription_are_given_up(user, context):
    (delivery,) = _pending(user, context)
    delivery.subscription.active = False
    delivery.subscription.save()
    assert deliveries_claim(limit=5) == []
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.last_error == "subscription paused"


# --- the admin ---------------------------------------------------------------------------


def test_admin_pages_and_retry_now(user, context, client):
    (delivery,) = _pending(user, context)
    Delivery.objects.filter(pk=delivery.pk).update(status="failed", last_error="HTTP 500")
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=1,
        started_at=timezone.now(),
        duration_ms=40,
        status_code=500,
        error="HTTP 500",
    )
    admin = factories.make_user("root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    secret = delivery.subscription.secret
    page = client.get(f"/admin/webhooks/subscription/{delivery.subscription_id}/change/")
    assert page.status_code == 200 and secret not in page.content.decode()
    listing = client.get("/admin/webhooks/delivery/?status=failed")
    assert listing.status_code == 200 and delivery.webhook_id in listing.content.decode()
    detail = client.get(f"/admin/webhooks/delivery/{delivery.pk}/change/")
    assert detail.status_code == 200
    assert "HTTP 500" in detail.content.decode()
    assert secret not in detail.content.decode()
    response = client.post(
        "/admin/webhooks/delivery/",
        {"action": "retry_now", "_selected_action": [str(delivery.pk)]},
    )
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.next_attempt_at <= timezone.now()


def test_admin_refuses_an_inner_url(user, client, settings):
    settings.WEBHOOK_ALLOW_PRIVATE_URLS = False
    sub = make_subscription(user, url="https://93.184.215.14/hook")
    admin = factories.make_user("root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    response = client.post(
        f"/admin/webhooks/subscription/{sub.pk}/change/",
        {"user": user.pk, "url": "http://10.0.0.1/x", "events": '["flow.due"]', "active": "on"},
    )
    assert response.status_code == 200  # the form again, with the error
    assert "private" in response.content.decode()
    sub.refresh_from_db()
    assert sub.url == "https://93.184.215.14/hook"


def test_signed_headers_verify_with_standardwebhooks(user, context):
    import json

    from standardwebhooks import Webhook, WebhookVerificationError

    from webhooks.delivery import signed_headers

    (delivery,) = _pending(user, context)
    (claim,) = deliveries_claim(limit=1)
    body = json.dumps(claim.payload, separators=(",", ":"))
    headers = signed_headers(claim, body, timezone.now())
    assert headers["Webhook-Id"] == delivery.webhook_id
    assert headers["Webhook-Signature"].startswith("v1,")
    assert Webhook(claim.secret).verify(body, headers)["type"] == "flow.created"
    with pytest.raises(WebhookVerificationError):
        Webhook(claim.secret).verify(body.replace("flow", "FLOW"), headers)
    other = make_subscription(user)
    with pytest.raises(WebhookVerificationError):
        Webhook(other.secret).verify(body, headers)


def test_a_patch_through_the_api_writes_its_delivery(api, user, context, settings):
    make_subscription(user, events=["flow.done", "flow.updated"])
    flow = factories.make_flow(context, "Call the bank", due_date=dt.date(2026, 1, 5))
    Flow.objects.filter(pk=flow.pk).update(due_notified_at=timezone.now())
    response = api.patch(f"/api/v1/flows/{flow.id}/", {"status": "done"}, format="json")
    assert response.status_code == 200
    delivery = Delivery.objects.get()
    assert delivery.event_type == "flow.done"
    change = delivery.payload["data"]["change"]
    assert change["actor"] == "user" and change["source_message_id"] is None
    assert change["changes"] == {"status": "done"}
    assert delivery.payload["data"]["flow"]["status"] == "done"
    api.patch(f"/api/v1/flows/{flow.id}/", {"due_date": "2026-02-01"}, format="json")
    assert Delivery.objects.filter(event_type="flow.updated").count() == 1
    flow.refresh_from_db()
    assert flow.due_notified_at is None  # flow.due may fire for the new date


def test_a_flow_created_already_due_gets_flow_due_with_it(user, context):
    make_subscription(user, events=["flow.created", "flow.due"])
    flow = factories.make_flow(context, "Pay the rent", due_date=timezone.localdate())
    record(flow, "created")
    assert sorted(Delivery.objects.values_list("event_type", flat=True)) == [
        "flow.created",
        "flow.due",
    ]
    flow.refresh_from_db()
    assert flow.due_notified_at is not None
    assert flows_due_notify() == 0  # the scan does not send it again
    record(flow, "updated", {"priority": "high"})
    assert Delivery.objects.filter(event_type="flow.due").count() == 1


def test_moving_a_notified_flow_to_a_past_date_sends_flow_due_again(user, context):
    make_subscription(user, events=["flow.due"])
    flow = factories.make_flow(context, due_date=timezone.localdate() + timedelta(days=3))
    Flow.objects.filter(pk=flow.pk).update(due_notified_at=timezone.now())
    flow.refresh_from_db()
    Flow.objects.filter(pk=flow.pk).update(due_date=timezone.localdate() - timedelta(days=1))
    flow.refresh_from_db()
    record(flow, "updated", {"due_date": flow.due_date.isoformat()})
    assert Delivery.objects.filter(event_type="flow.due").count() == 1
    flow.refresh_from_db()
    assert flow.due_notified_at is not None


def test_no_immediate_flow_due_without_a_subscriber_or_for_a_done_flow(user, context):
    make_subscription(user, events=["flow.created", "flow.done"])
    flow = factories.make_flow(context, due_date=timezone.localdate())
    record(flow, "created")
    flow.refresh_from_db()
    assert flow.due_notified_at is None  # left to the scan
    make_subscription(user, events=["flow.due"])
    Flow.objects.filter(pk=flow.pk).update(status="done")
    flow.refresh_from_db()
    record(flow, "done", {"status": "done"})
    assert not Delivery.objects.filter(event_type="flow.due").exists()


def test_old_finished_deliveries_are_pruned(user, context, settings):
    from webhooks.services import deliveries_prune

    settings.WEBHOOK_RETENTION_DAYS = 30
    old_done, old_failed, old_pending, new_done = _pending(user, context, 4)
    Delivery.objects.filter(pk=old_done.pk).update(status="delivered")
    Delivery.objects.filter(pk=old_failed.pk).update(status="failed")
    Delivery.objects.filter(pk=new_done.pk).update(status="delivered")
    DeliveryAttempt.objects.create(
        delivery=old_done, number=1, started_at=timezone.now(), duration_ms=1, succeeded=True
    )
    long_ago = timezone.now() - timedelta(days=31)
    Delivery.objects.filter(pk__in=[old_done.pk, old_failed.pk, old_pending.pk]).update(
        created_at=long_ago
    )
    assert deliveries_prune() == 2
    assert set(Delivery.objects.values_list("pk", flat=True)) == {old_pending.pk, new_done.pk}
    assert not DeliveryAttempt.objects.exists()
    assert deliveries_prune() == 0
