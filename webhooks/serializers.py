"""Shapes of the webhooks API (docs/api.md#webhooks)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from webhooks.addresses import url_refusal
from webhooks.models import EventType, Subscription


class StrictBooleanField(serializers.BooleanField):
    """A JSON ``true`` or ``false`` only (DRF's also takes ``"yes"``, ``1``...)."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class SubscriptionSerializer(serializers.ModelSerializer):
    url = serializers.URLField(max_length=2000)
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EventType.choices),
        allow_empty=False,
        min_length=1,
        max_length=len(EventType.values),
        required=False,
        help_text="Default on create: all four.",
    )
    active = StrictBooleanField(required=False)

    class Meta:
        model = Subscription
        fields = ["id", "url", "events", "active", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate_url(self, value: str) -> str:
        """http(s) only; refuse hosts that are or resolve to inner addresses."""
        refusal = url_refusal(value)
        if refusal:
            raise serializers.ValidationError(refusal)
        return value


class SubscriptionCreatedSerializer(SubscriptionSerializer):
    """The POST answer: the subscription and, this once, its signing secret."""

    secret = serializers.CharField(read_only=True)

    class Meta(SubscriptionSerializer.Meta):
        fields = [*SubscriptionSerializer.Meta.fields, "secret"]
