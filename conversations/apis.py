"""REST endpoints for contexts, conversations and messages: thin, scoped to the caller."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers

from conversations import selectors, services
from conversations.models import Context, Conversation, Message
from conversations.serializers import (
    ContextSerializer,
    ConversationSerializer,
    MessageSerializer,
)
from core.http import choice_query_param, uuid_query_param
from flows import selectors as flow_selectors
from flows.models import Flow
from flows.serializers import FlowSerializer


class ContextListCreateApi(generics.ListCreateAPIView):
    serializer_class = ContextSerializer

    def get_queryset(self) -> QuerySet[Context]:
        return selectors.context_list(user=self.request.user)

    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = services.context_create(
            user=self.request.user, **serializer.validated_data
        )


class ContextDetailApi(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = ContextSerializer
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_object(self) -> Context:
        return selectors.context_get(user=self.request.user, context_id=self.kwargs["pk"])

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = services.context_update(
            context=serializer.instance, data=serializer.validated_data
        )

    def perform_destroy(self, instance: Context) -> None:
        services.context_delete(context=instance)


@extend_schema(
    parameters=[
        OpenApiParameter("context_id", OpenApiTypes.UUID, description="Only this context's.")
    ]
)
class ConversationListApi(generics.ListAPIView):
    serializer_class = ConversationSerializer

    def get_queryset(self) -> QuerySet[Conversation]:
        context_id = uuid_query_param(self.request, "context_id")
        return selectors.conversation_list(user=self.request.user, context_id=context_id)


class ConversationDetailApi(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = ConversationSerializer
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_object(self) -> Conversation:
        return selectors.conversation_get(user=self.request.user, conversation_id=self.kwargs["pk"])

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        title = serializer.validated_data.get("title", serializer.instance.title)
        serializer.instance = services.conversation_update(
            conversation=serializer.instance, title=title
        )

    def perform_destroy(self, instance: Conversation) -> None:
        services.conversation_delete(conversation=instance)


class ConversationMessagesApi(generics.ListAPIView):
    """Messages of one conversation, oldest first."""

    serializer_class = MessageSerializer

    def get_queryset(self) -> QuerySet[Message]:
        conversation = selectors.conversation_get(
            user=self.request.user, conversation_id=self.kwargs["pk"]
        )
        return selectors.message_list(conversation=conversation)


class MessageDetailApi(generics.RetrieveAPIView):
    """One message (its status, content so far, usage)."""

    serializer_class = MessageSerializer

    def get_object(self) -> Message:
        return selectors.message_get(user=self.request.user, message_id=self.kwargs["pk"])


@extend_schema(parameters=[OpenApiParameter("status", str, enum=Flow.Status.values)])
class ContextFlowListApi(generics.ListAPIView):
    """Flows of one of the caller's contexts (``GET /api/v1/contexts/{id}/flows/``)."""

    serializer_class = FlowSerializer

    def get_queryset(self) -> QuerySet[Flow]:
        context = selectors.context_get(user=self.request.user, context_id=self.kwargs["pk"])
        return flow_selectors.flow_list(
            user=self.request.user,
            context_id=context.id,
            status=choice_query_param(self.request, "status", Flow.Status.values),
        )
