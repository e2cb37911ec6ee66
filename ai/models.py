"""Quota per user, reservations in flight, a usage record for every AI call, and the prices
that turn its tokens into money."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q


class Quota(models.Model):
    """Limits and counters for one user. Counters reset when ``resets_at`` passes.

    ``*_reserved`` hold what replies in flight may still use; they move to ``*_used`` (or
    back to nothing) when a reservation is settled or released.
    """

    class Period(models.TextChoices):
        DAY = "day"
        WEEK = "week"
        MONTH = "month"
        NONE = "none"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota"
    )
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.DAY)
    requests_limit = models.PositiveIntegerField()
    tokens_limit = models.PositiveBigIntegerField()
    requests_used = models.PositiveIntegerField(default=0)
    tokens_used = models.PositiveBigIntegerField(default=0)
    requests_reserved = models.PositiveIntegerField(default=0)
    tokens_reserved = models.PositiveBigIntegerField(default=0)
    # Money, in the prices' currency (docs/api.md#quota): no limit when null.
    cost_limit = models.DecimalField(
        max_digits=14,
        decimal_places=8,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal(0))],
    )
    cost_used = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    cost_reserved = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    period_started_at = models.DateTimeField()
    resets_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(requests_reserved__gte=0) & Q(tokens_reserved__gte=0),
                name="quota_reserved_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(cost_reserved__gte=0), name="quota_cost_reserved_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"quota of user {self.user_id}"


class Reservation(models.Model):
    """One reply's hold on the quota, from reserve to settle or release (exactly once)."""

    class Status(models.TextChoices):
        HELD = "held"
        SETTLED = "settled"
        RELEASED = "released"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota_reservations"
    )
    message = models.OneToOneField(
        "conversations.Message",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="reservation",
    )
    tokens = models.PositiveBigIntegerField(default=0)
    # The most the reply may cost (its worst case at the model's price).
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    # The period the reservation was taken in: a reset in between must not make it count twice.
    period_started_at = models.DateTimeField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.HELD)
    requests_charged = models.PositiveIntegerField(default=0)
    tokens_charged = models.PositiveBigIntegerField(default=0)
    cost_charged = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["user"], condition=Q(status="held"), name="reservation_held_idx"),
        ]

    def __str__(self) -> str:
        return f"reservation {self.id} ({self.status})"


class UsageRecord(models.Model):
    """An audit line for one AI call: who, where, which model, how many tokens, outcome."""

    class Purpose(models.TextChoices):
        REPLY = "reply"
        EXTRACTION = "extraction"
        TITLE = "title"

    class Outcome(models.TextChoices):
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    id = models.BigAutoField(primary_key=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ai_usage"
    )
    context = models.ForeignKey(
        "conversations.Context", on_delete=models.SET_NULL, null=True, blank=True
    )
    conversation = models.ForeignKey(
        "conversations.Conversation", on_delete=models.SET_NULL, null=True, blank=True
    )
    message = models.ForeignKey(
        "conversations.Message", on_delete=models.SET_NULL, null=True, blank=True
    )
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=128, blank=True, default="")
    purpose = models.CharField(max_length=16, choices=Purpose.choices)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # Parts of input_tokens read from / written to the provider's prompt cache.
    cache_read_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    estimated = models.BooleanField(default=False)
    # What the call cost at the price valid that day (0 when the model has no price).
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=Decimal(0))
    currency = models.CharField(max_length=3, default="USD")
    # Tokens counted against the quota for this call (what was delivered).
    tokens_charged = models.PositiveIntegerField(default=0)
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    error_code = models.CharField(max_length=32, blank=True, default="")
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="usage_user_created_idx")]

    def __str__(self) -> str:
        return f"{self.purpose} {self.provider}/{self.model} user {self.user_id}"


PRICE_FIELD = {
    "max_digits": 12,
    "decimal_places": 6,
    "validators": [MinValueValidator(Decimal(0))],
}


class ModelPrice(models.Model):
    """A model's list price per million tokens of each kind, from ``valid_from`` until the
    next price of the same provider and model (docs/api.md#cost).

    ``input_per_mtok`` is for uncached input; ``cache_read_per_mtok`` for input read from
    the provider's prompt cache, ``cache_write_per_mtok`` for input written to it.
    ``model`` is the name the provider is called with; a dated snapshot name
    (``gpt-4o-mini-2024-07-18``) also takes the price of its base name (``gpt-4o-mini``).
    """

    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=128)
    input_per_mtok = models.DecimalField("input / MTok", **PRICE_FIELD)
    output_per_mtok = models.DecimalField("output / MTok", **PRICE_FIELD)
    cache_read_per_mtok = models.DecimalField("cache read / MTok", **PRICE_FIELD)
    cache_write_per_mtok = models.DecimalField("cache write / MTok", **PRICE_FIELD)
    currency = models.CharField(max_length=3, default="USD", help_text="ISO 4217 code.")
    valid_from = models.DateField()

    class Meta:
        ordering = ["provider", "model", "-valid_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model", "valid_from"], name="model_price_unique_from"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}/{self.model} from {self.valid_from}"
