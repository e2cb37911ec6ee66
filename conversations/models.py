"""Contexts, conversations and messages: fields and constraints only; logic is in services."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class Context(models.Model):
    """A user's area of work ("Work", "Trip to Rome") with optional custom instructions."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="contexts"
    )
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True, default="", max_length=2000)
    instructions = models.TextField(blank=True, default="", max_length=4000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="context_unique_name_per_user"),
        ]

    def __str__(self) -> str:
        return self.name


class Conversation(models.Model):
    """A thread of messages inside one context."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    context = models.ForeignKey(Context, on_delete=models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True, default="")
    # A title the user set (PATCH, admin) is never overwritten by a generated one
    # (docs/api.md#titles).
    title_set_by_user = models.BooleanField(default=False)
    # A generated title is still due: set when the conversation is created, cleared once
    # a title call ran (whatever it answered). A turn that ended with its process too
    # busy to call leaves it set, so the next turn makes the call.
    title_pending = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["user", "-updated_at"], name="conv_user_updated_idx"),
            models.Index(fields=["context", "-updated_at"], name="conv_context_updated_idx"),
        ]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    """One message of a conversation. Assistant replies carry status, usage and provider."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"
        SYSTEM = "system"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    class FinishReason(models.TextChoices):
        STOP = "stop"
        LENGTH = "length"
        CANCELLED = "cancelled"
        ERROR = "error"
        TIMEOUT = "timeout"
        INTERRUPTED = "interrupted"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="messages"
    )
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    finish_reason = models.CharField(
        max_length=16, choices=FinishReason.choices, blank=True, default=""
    )
    error_code = models.CharField(max_length=32, blank=True, default="")
    error_retryable = models.BooleanField(default=False)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # Parts of input_tokens read from / written to the provider's prompt cache.
    cache_read_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False)
    # The reply's cost at its model's price (docs/api.md#cost); 0 when it has none.
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    currency = models.CharField(max_length=3, default="USD")
    provider = models.CharField(max_length=32, blank=True, default="")
    model = models.CharField(max_length=128, blank=True, default="")
    # Which server process runs the generation (for resume across processes and recovery).
    worker = models.CharField(max_length=128, blank=True, default="")
    # Set by a cancel that reached another process; the generation's owner honours it.
    cancel_requested = models.BooleanField(default=False)
    # Replaced by a regenerate or an edit (docs/api.md#steering): kept, never shown to the
    # model again, left out of the messages list unless asked for.
    superseded = models.BooleanField(default=False)
    # An assistant reply's user message (the one it answers; regenerate answers it again).
    reply_to = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="replies"
    )
    # The title this reply's turn generated for its conversation (its ``title`` event,
    # replayed on resume); empty when the turn made none.
    generated_title = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            # At most one reply streams into a conversation: the database answers 409.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status="streaming"),
                name="message_one_streaming_per_conversation",
            ),
        ]
        indexes = [
            models.Index(fields=["conversation", "created_at"], name="message_conv_created_idx"),
            # A turn's check of its user's streaming replies (and the stale-reply sweeper)
            # reads only the few rows that are streaming, never all of a user's messages.
            models.Index(
                fields=["user"],
                condition=Q(status="streaming"),
                name="message_user_streaming_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.id}"


class IdempotencyKey(models.Model):
    """A chat POST's ``Idempotency-Key`` and the turn it started (docs/api.md#idempotency).

    The unique constraint (not a check-then-insert) makes a retry that reaches another
    process at the same moment find the first turn instead of starting a second one. Keys
    older than ``IDEMPOTENCY_KEY_TTL_SECONDS`` (24 hours) are free to be used again.
    """

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="idempotency_keys"
    )
    key = models.CharField(max_length=255)
    # SHA-256 of the request's route and canonical body: the same key with another body is 422.
    request_hash = models.CharField(max_length=64)
    message = models.ForeignKey(
        Message, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_unique_per_user"),
        ]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created_idx")]

    def __str__(self) -> str:
        return f"{self.user_id}:{self.key}"
