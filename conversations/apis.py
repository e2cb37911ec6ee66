"""REST endpoints for contexts, conversations and messages: thin, scoped to the caller."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from conversations import export, selectors, services
from conversations.models import Context, Conversation, Message
from conversations.search import MAX_QUERY_LENGTH, search_for
from conversations.serializers import (
    ContextSerializer,
    ConversationSerializer,
    MessageSerializer,
    SearchHitSerializer,
)
from core.fields import NOT_BLANK_PATTERN
from core.http import bool_query_param, choice_query_param, text_query_param, uuid_query_param
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


logger = logging.getLogger(__name__)


@extend_schema(
    parameters=[
        OpenApiParameter(
            "include_superseded",
            OpenApiTypes.BOOL,
            description="Also the messages a regenerate or an edit replaced (default false).",
        )
    ]
)
class ConversationMessagesApi(generics.ListAPIView):
    """Messages of one conversation, oldest first; superseded ones only when asked for."""

    serializer_class = MessageSerializer

    def get_queryset(self) -> QuerySet[Message]:
        include_superseded = bool_query_param(self.request, "include_superseded")
        conversation = selectors.conversation_get(
            user=self.request.user, conversation_id=self.kwargs["pk"]
        )
        return selectors.message_list(
            conversation=conversation, include_superseded=include_superseded
        )


@extend_schema(
    parameters=[
        OpenApiParameter(
            "q",
            {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_QUERY_LENGTH,
                "pattern": NOT_BLANK_PATTERN,
            },
            required=True,
            description='What to find: words, "a phrase", `or`, `-word` (docs/api.md#search).',
        ),
        OpenApiParameter("context_id", OpenApiTypes.UUID, description="Only this context's."),
    ]
)
class SearchApi(generics.ListAPIView):
    """The caller's messages and flows matching ``q``, best first (docs/api.md#search)."""

    serializer_class = SearchHitSerializer

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        q = text_query_param(request, "q", max_length=MAX_QUERY_LENGTH)
        context_id = uuid_query_param(request, "context_id")
        started = time.monotonic()
        results = search_for(user=request.user, q=q, context_id=context_id)
        page = self.paginate_queryset(results)
        logger.info(
            "search",
            extra={
                "user_id": request.user.pk,
                "query_chars": len(q),
                "results": results.count(),
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return self.get_paginated_response(self.get_serializer(page, many=True).data)


class _ExportNegotiation(BaseContentNegotiation):
    """The export's ``format`` parameter is its own (not DRF's renderer override) and the
    body is a download whatever ``Accept`` says; errors before it are JSON."""

    def select_parser(self, request: Request, parsers: list) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type


@extend_schema(
    parameters=[
        OpenApiParameter(
            "format",
            str,
            enum=export.EXPORT_FORMATS,
            description="`md` (default: the conversation as it reads) or `json` (everything).",
        )
    ],
    responses={
        (200, "text/markdown"): OpenApiResponse(OpenApiTypes.STR, description="A download."),
        (200, "application/json"): OpenApiResponse(OpenApiTypes.OBJECT, description="A download."),
    },
)
class ConversationExportApi(APIView):
    """The whole conversation as a download, streamed (docs/api.md#export)."""

    renderer_classes = [JSONRenderer]
    content_negotiation_class = _ExportNegotiation

    def get(self, request: Request, pk: Any) -> StreamingHttpResponse:
        fmt = choice_query_param(request, "format", export.EXPORT_FORMATS) or "md"
        conversation = selectors.conversation_get(user=request.user, conversation_id=pk)
        conversation.context  # noqa: B018  (loaded here: the stream may run in the event loop)
        exporter = export.Exporter(conversation, fmt)
        if isinstance(request._request, ASGIRequest):
            chunks: Any = export.export_chunks_async(exporter)
        else:
            chunks = export.export_chunks(exporter)
        response = StreamingHttpResponse(chunks, content_type=export.CONTENT_TYPES[fmt])
        response["Content-Disposition"] = content_disposition_header(
            True, export.export_filename(conversation, fmt)
        )
        response["Cache-Control"] = "no-store"
        return response


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
