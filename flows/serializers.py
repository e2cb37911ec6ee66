"""Shapes of the flows API (docs/api.md#resources)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from core.fields import StrictCharField
from flows.models import Flow, FlowEvent


class FlowSerializer(serializers.ModelSerializer):
    context_id = serializers.UUIDField(read_only=True)
    conversation_id = serializers.UUIDField(read_only=True, allow_null=True)
    source_message_id = serializers.UUIDField(read_only=True, allow_null=True)
    title = StrictCharField(min_length=1, max_length=200)
    description = StrictCharField(max_length=2000, allow_blank=True, required=False)

    class Meta:
        model = Flow
        fields = [
            "id",
            "context_id",
            "conversation_id",
            "source_message_id",
            "title",
            "description",
            "priority",
            "due_date",
            "reminder_enabled",
            "status",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "context_id",
            "conversation_id",
            "source_message_id",
            "created_at",
            "updated_at",
        ]


def flow_to_dict(flow: Flow) -> dict[str, Any]:
    """A flow as the API and the ``flows_extracted`` event show it."""
    return {
        "id": str(flow.id),
        "context_id": str(flow.context_id),
        "conversation_id": str(flow.conversation_id) if flow.conversation_id else None,
        "source_message_id": str(flow.source_message_id) if flow.source_message_id else None,
        "title": flow.title,
        "description": flow.description,
        "priority": flow.priority,
        "due_date": flow.due_date.isoformat() if flow.due_date else None,
        "reminder_enabled": flow.reminder_enabled,
        "status": flow.status,
        "created_at": flow.created_at.isoformat().replace("+00:00", "Z"),
        "updated_at": flow.updated_at.isoformat().replace("+00:00", "Z"),
    }


class FlowEventSerializer(serializers.ModelSerializer):
    """One entry of a flow's history (docs/api.md#flow-history)."""

    flow_id = serializers.UUIDField(read_only=True)
    source_message_id = serializers.UUIDField(read_only=True, allow_null=True)
    changes = serializers.JSONField(read_only=True)

    class Meta:
        model = FlowEvent
        fields = ["id", "flow_id", "kind", "actor", "source_message_id", "changes", "created_at"]
        read_only_fields = fields


def flow_update_to_dict(flow: Flow, changes: dict[str, Any]) -> dict[str, Any]:
    """One item of ``flows_extracted``'s ``updated``: the flow's id, what changed (field:
    new value) and the flow as it is now."""
    return {"id": str(flow.id), "changes": changes, "flow": flow_to_dict(flow)}
