"""Flows: actionable tasks found in what the user said."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Flow(models.Model):
    """A task extracted from a conversation, kept per context."""

    class Priority(models.TextChoices):
        LOW = "low"
        MEDIUM = "medium"
        HIGH = "high"

    class Status(models.TextChoices):
        OPEN = "open"
        DONE = "done"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="flows"
    )
    context = models.ForeignKey(
        "conversations.Context", on_delete=models.CASCADE, related_name="flows"
    )
    conversation = models.ForeignKey(
        "conversations.Conversation",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="flows",
    )
    source_message = models.ForeignKey(
        "conversations.Message",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="flows",
    )
    title = models.CharField(max_length=200)
    # Normalized title (case-folded, spaces collapsed): the key for "not stored twice".
    title_key = models.CharField(max_length=200, editable=False)
    description = models.TextField(blank=True, default="", max_length=2000)
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.MEDIUM)
    due_date = models.DateField(null=True, blank=True)
    reminder_enabled = models.BooleanField(default=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    # When the ``flow.due`` reminder was handed to the webhooks outbox (once per due date).
    due_notified_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["context", "title_key"],
                condition=Q(status="open"),
                name="flow_unique_open_title_per_context",
            ),
        ]
        indexes = [
            models.Index(fields=["user", "status", "-created_at"], name="flow_user_status_idx"),
            models.Index(fields=["context", "status"], name="flow_context_status_idx"),
            # The flow.due scan (webhooks) reads only the open, reminded, not yet notified
            # flows, by due date.
            models.Index(
                fields=["due_date", "id"],
                condition=Q(status="open", reminder_enabled=True, due_notified_at__isnull=True),
                name="flow_due_scan_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.title


class FlowEvent(models.Model):
    """One change of a flow, for its history (docs/api.md#flow-history) and its webhooks.

    ``changes`` holds the changed fields' new values (for ``created``, the flow's fields).
    ``source_message`` is the message whose turn made the change (none for a user's PATCH).
    """

    class Kind(models.TextChoices):
        CREATED = "created"
        UPDATED = "updated"
        DONE = "done"
        REOPENED = "reopened"

    class Actor(models.TextChoices):
        USER = "user"
        EXTRACTION = "extraction"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    flow = models.ForeignKey(Flow, on_delete=models.CASCADE, related_name="events")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="flow_events"
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    actor = models.CharField(max_length=16, choices=Actor.choices)
    source_message = models.ForeignKey(
        "conversations.Message",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    changes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["flow", "created_at"], name="flow_event_flow_idx")]

    def __str__(self) -> str:
        return f"{self.kind} {self.flow_id}"
