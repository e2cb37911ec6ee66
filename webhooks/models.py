"""Webhooks: subscriptions, the outbox of deliveries, and each delivery's attempts.

A flow change and its deliveries are written in one transaction (the outbox); the
server processes send them later (:mod:`webhooks.delivery`), each delivery by one
process at a time under a lease (docs/api.md#webhooks).
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class EventType(models.TextChoices):
    """What a subscription may ask for."""

    FLOW_CREATED = "flow.created"
    FLOW_UPDATED = "flow.updated"
    FLOW_DONE = "flow.done"
    FLOW_DUE = "flow.due"


def new_webhook_id() -> str:
    """A delivery's ``Webhook-Id``: ``msg_`` and a random UUID (stable across retries)."""
    return f"msg_{uuid.uuid4().hex}"


class Subscription(models.Model):
    """A user's webhook endpoint and the events it receives."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_subscriptions"
    )
    url = models.URLField(max_length=2000)
    # Standard Webhooks form: ``whsec_`` and the base64 of 32 random bytes. Shown once.
    secret = models.CharField(max_length=100, editable=False)
    events = models.JSONField(default=list)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "active"], name="webhook_sub_user_active_idx")]

    def __str__(self) -> str:
        return self.url


class Delivery(models.Model):
    """One event for one subscription: a row of the outbox, sent until 2xx or given up."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # given up

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    webhook_id = models.CharField(max_length=40, unique=True, default=new_webhook_id)
    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_type = models.CharField(max_length=16, choices=EventType.choices)
    # The flow the event is about (no foreign key: the delivery outlives a deleted flow).
    flow_id = models.UUIDField(null=True, blank=True)
    payload = models.JSONField()
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField()
    # The lease: a process that claimed the delivery owns it until then.
    locked_until = models.DateTimeField(null=True, blank=True)
    lease_token = models.UUIDField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "deliveries"
        indexes = [
            # The delivery loop's claim: pending rows by due time.
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="webhook_delivery_due_idx",
            ),
            models.Index(fields=["subscription", "-created_at"], name="webhook_delivery_sub_idx"),
        ]

    def __str__(self) -> str:
        return self.webhook_id


class DeliveryAttempt(models.Model):
    """One POST of a delivery (for the admin): when, how long, and what came back."""

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="attempts_made")
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True, default="")
    succeeded = models.BooleanField(default=False)

    class Meta:
        ordering = ["delivery", "number"]

    def __str__(self) -> str:
        return f"{self.delivery_id} #{self.number}"
