"""Input and output shapes of the conversations API (docs/api.md#resources)."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from ai.routing import Route, route_choice
from conversations.models import Context, Conversation, Message
from core.fields import StrictCharField

MAX_USER_CONTENT = 10_000
MAX_HISTORY = 100


class ContextSerializer(serializers.ModelSerializer):
    name = StrictCharField(min_length=1, max_length=100, trim_whitespace=True)
    description = StrictCharField(max_length=2000, allow_blank=True, required=False, default="")
    instructions = StrictCharField(max_length=4000, allow_blank=True, required=False, default="")

    class Meta:
        model = Context
        fields = ["id", "name", "description", "instructions", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class ConversationSerializer(serializers.ModelSerializer):
    context_id = serializers.UUIDField(read_only=True)
    title = StrictCharField(max_length=200, allow_blank=True, required=False)

    class Meta:
        model = Conversation
        fields = ["id", "context_id", "title", "created_at", "updated_at"]
        read_only_fields = ["id", "context_id", "created_at", "updated_at"]


class UsageSerializer(serializers.Serializer):
    input_tokens = serializers.IntegerField(help_text="The whole prompt, cached parts included.")
    output_tokens = serializers.IntegerField()
    cache_read_tokens = serializers.IntegerField(help_text="Of input_tokens: read from cache.")
    cache_write_tokens = serializers.IntegerField(help_text="Of input_tokens: written to cache.")
    estimated = serializers.BooleanField()
    cost = serializers.DecimalField(
        max_digits=14, decimal_places=8, help_text="At the model's price; 0 without one."
    )
    currency = serializers.CharField(help_text="ISO 4217 code of cost.")


class MessageSerializer(serializers.ModelSerializer):
    conversation_id = serializers.UUIDField(read_only=True)
    usage = serializers.SerializerMethodField()
    finish_reason = serializers.ChoiceField(
        choices=Message.FinishReason.choices, allow_blank=True, read_only=True
    )

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
            "role",
            "content",
            "status",
            "finish_reason",
            "usage",
            "provider",
            "model",
            "superseded",
            "created_at",
        ]
        read_only_fields = fields

    def get_usage(self, obj: Message) -> UsageSerializer:  # type: ignore[override]
        return message_usage(obj)  # type: ignore[return-value]


def message_usage(message: Message) -> dict[str, Any]:
    """The ``usage`` object of a message."""
    return {
        "input_tokens": message.input_tokens,
        "output_tokens": message.output_tokens,
        "cache_read_tokens": message.cache_read_tokens,
        "cache_write_tokens": message.cache_write_tokens,
        "estimated": message.usage_estimated,
        "cost": f"{message.cost:f}",
        "currency": message.currency,
    }


def message_to_dict(message: Message) -> dict[str, Any]:
    """A message as the API shows it (without a serializer round trip on the hot path)."""
    return {
        "id": str(message.id),
        "conversation_id": str(message.conversation_id),
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "finish_reason": message.finish_reason,
        "usage": message_usage(message),
        "provider": message.provider,
        "model": message.model,
        "superseded": message.superseded,
        "created_at": message.created_at.isoformat().replace("+00:00", "Z"),
    }


class SearchHitSerializer(serializers.Serializer):
    """One search result (docs/api.md#search)."""

    type = serializers.ChoiceField(choices=["message", "flow"])
    id = serializers.UUIDField()
    context_id = serializers.UUIDField()
    conversation_id = serializers.UUIDField(allow_null=True)
    title = serializers.CharField(
        help_text="The conversation's title for a message; the flow's title for a flow."
    )
    role = serializers.ChoiceField(
        choices=Message.Role.choices,
        allow_null=True,
        help_text="A message's role; null for a flow.",
    )
    snippet = serializers.CharField(
        help_text="Plain text around the matches (never markup); may start or end with '…'."
    )
    highlights = serializers.ListField(
        child=serializers.ListField(
            child=serializers.IntegerField(min_value=0), min_length=2, max_length=2
        ),
        help_text="[start, end) of each match in snippet, in Unicode code points.",
    )
    rank = serializers.FloatField(help_text="Relevance: higher is better (results come sorted).")
    created_at = serializers.DateTimeField()


class ChatMessageInputSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=["user", "assistant", "system"])
    content = StrictCharField(min_length=1, max_length=MAX_USER_CONTENT, trim_whitespace=False)


class ChatTurnInputSerializer(serializers.Serializer):
    """Both body shapes of docs/api.md#chat-body.

    ``{"context_id", "conversation_id"?, "messages": [...]}`` (client-kept history) or
    ``{"conversation_id", "message", "context_id"?}`` (server-kept history).
    """

    context_id = serializers.UUIDField(required=False, allow_null=True)
    conversation_id = serializers.UUIDField(required=False, allow_null=True)
    message = StrictCharField(
        required=False, min_length=1, max_length=MAX_USER_CONTENT, trim_whitespace=False
    )
    messages = ChatMessageInputSerializer(
        many=True, required=False, min_length=1, max_length=MAX_HISTORY
    )
    #: A route of ``AI_ALLOWED_MODELS`` (``provider:model``) to try first
    #: (docs/api.md#routing).
    model = StrictCharField(required=False, allow_null=True, max_length=200)

    def validate_model(self, value: str | None) -> Route | None:
        try:
            return route_choice(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        has_message = "message" in attrs
        has_messages = "messages" in attrs
        if has_message and has_messages:
            raise serializers.ValidationError(
                {"message": ["Send either 'message' or 'messages', not both."]}
            )
        if not has_message and not has_messages:
            raise serializers.ValidationError(
                {
                    "messages": [
                        "Send 'messages' (with context_id) or 'message' (with conversation_id)."
                    ]
                }
            )
        if has_messages:
            if not attrs.get("context_id") and not attrs.get("conversation_id"):
                raise serializers.ValidationError({"context_id": ["This field is required."]})
            if attrs["messages"][-1]["role"] != "user":
                raise serializers.ValidationError(
                    {"messages": ["The last message must have role 'user'."]}
                )
        if has_message and not attrs.get("conversation_id"):
            raise serializers.ValidationError(
                {"conversation_id": ["This field is required with 'message'."]}
            )
        if not (attrs.get("message") or attrs["messages"][-1]["content"]).strip():
            field = "message" if has_message else "messages"
            raise serializers.ValidationError({field: ["The message must not be blank."]})
        return attrs


class RegenerateInputSerializer(serializers.Serializer):
    """The optional body of ``POST /api/v1/messages/{id}/regenerate``
    (docs/api.md#regenerate-and-edit): a route to try first."""

    model = StrictCharField(required=False, allow_null=True, max_length=200)

    def validate_model(self, value: str | None) -> Route | None:
        try:
            return route_choice(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from None


class EditInputSerializer(RegenerateInputSerializer):
    """The body of ``POST /api/v1/messages/{id}/edit`` (docs/api.md#regenerate-and-edit)."""

    content = StrictCharField(min_length=1, max_length=MAX_USER_CONTENT, trim_whitespace=False)

    def validate_content(self, value: str) -> str:
        if not value.strip():
            raise serializers.ValidationError("The message must not be blank.")
        return value
