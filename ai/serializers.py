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
    resets_at = serializers.CharField(
        allow_null=True, help_text="ISO 8601 (UTC) when the counters reset; null for period none."
    )
