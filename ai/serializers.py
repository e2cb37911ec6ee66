"""Output shapes of the ai app's API (documented by drf-spectacular)."""

from __future__ import annotations

from rest_framework import serializers


class QuotaOutputSerializer(serializers.Serializer):
    """The Quota resource (docs/api.md#resources): limits, used, what remains (>= 0)."""

    period = serializers.ChoiceField(choices=["day", "week", "month", "none"])
    requests_limit = serializers.IntegerField()
    requests_used = serializers.IntegerField()
    requests_remaining = serializers.IntegerField()
    tokens_limit = serializers.IntegerField()
    tokens_used = serializers.IntegerField()
    tokens_remaining = serializers.IntegerField()
    cost_limit = serializers.DecimalField(
        max_digits=14,
        decimal_places=8,
        allow_null=True,
        help_text="Money per period in the prices' currency (decimal string); null: no limit.",
    )
    cost_used = serializers.DecimalField(max_digits=14, decimal_places=8)
    cost_remaining = serializers.DecimalField(
        max_digits=14, decimal_places=8, allow_null=True, help_text="Null when no cost limit."
    )
    resets_at = serializers.CharField(
        allow_null=True, help_text="ISO 8601 (UTC) when the counters reset; null for period none."
    )


def _cost_field() -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=24, decimal_places=8, help_text="Decimal string, 8 places."
    )


class UsageSumsSerializer(serializers.Serializer):
    """Sums of usage ledger lines (docs/api.md#usage-report)."""

    requests = serializers.IntegerField(
        help_text="Replies that consumed a request (complete, or cancelled after output)."
    )
    calls = serializers.IntegerField(help_text="Ledger lines: every reply and extraction call.")
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cache_read_tokens = serializers.IntegerField()
    cache_write_tokens = serializers.IntegerField()
    cost = _cost_field()


class UsageGroupSerializer(UsageSumsSerializer):
    """One group: its key (the field of ``group_by``; the others null) and its sums."""

    day = serializers.DateField(allow_null=True, help_text="UTC day (group_by=day).")
    provider = serializers.CharField(allow_null=True, help_text="group_by=model.")
    model = serializers.CharField(allow_null=True, help_text="group_by=model.")
    conversation_id = serializers.UUIDField(
        allow_null=True,
        help_text="group_by=conversation; null for lines of deleted conversations.",
    )


class UsageOutputSerializer(serializers.Serializer):
    """The caller's usage over a range of UTC days: totals and groups."""

    totals = UsageSumsSerializer()
    groups = UsageGroupSerializer(many=True)
    group_by = serializers.ChoiceField(choices=["day", "model", "conversation"])
    truncated = serializers.BooleanField(help_text="More groups than the answer holds.")

    def get_fields(self) -> dict[str, serializers.Field]:
        """``from`` and ``to`` are Python keywords: added here rather than as attributes."""
        fields = super().get_fields()
        fields["from"] = serializers.DateField(help_text="First UTC day, included.")
        fields["to"] = serializers.DateField(help_text="Last UTC day, included.")
        return fields


def _price_field() -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=12, decimal_places=6, help_text="Per million tokens, decimal string."
    )


class ModelPriceOutputSerializer(serializers.Serializer):
    """A model's price valid today (docs/api.md#prices)."""

    input_per_mtok = _price_field()
    output_per_mtok = _price_field()
    cache_read_per_mtok = _price_field()
    cache_write_per_mtok = _price_field()
    currency = serializers.CharField()
    valid_from = serializers.DateField()


class ModelOutputSerializer(serializers.Serializer):
    """A route a client may pick with the chat body's ``model`` (docs/api.md#routing)."""

    id = serializers.CharField(help_text="The route's name, provider:model: the chat `model`.")
    provider = serializers.CharField()
    model = serializers.CharField()
    default = serializers.BooleanField(help_text="The route a turn tries first by default.")
    price = ModelPriceOutputSerializer(allow_null=True, help_text="Null: no price (costs 0).")


class ModelListSerializer(serializers.Serializer):
    """``GET /api/v1/models/``: every model a client may pick (one page)."""

    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True)
    previous = serializers.CharField(allow_null=True)
    results = ModelOutputSerializer(many=True)
