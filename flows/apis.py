"""REST endpoints for flows: thin, scoped to the caller."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers

from core.http import choice_query_param, uuid_query_param
from flows import selectors, services
from flows.models import Flow, FlowEvent
from flows.serializers import FlowEventSerializer, FlowSerializer

_STATUS = OpenApiParameter("status", str, enum=Flow.Status.values)
_PRIORITY = OpenApiParameter("priority", str, enum=Flow.Priority.values)


@extend_schema(parameters=[OpenApiParameter("context_id", OpenApiTypes.UUID), _STATUS, _PRIORITY])
class FlowListApi(generics.ListAPIView):
    serializer_class = FlowSerializer

    def get_queryset(self) -> QuerySet[Flow]:
        request = self.request
        return selectors.flow_list(
            user=request.user,
            context_id=uuid_query_param(request, "context_id"),
            status=choice_query_param(request, "status", Flow.Status.values),
            priority=choice_query_param(request, "priority", Flow.Priority.values),
        )


class FlowDetailApi(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = FlowSerializer
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_object(self) -> Flow:
        return selectors.flow_get(user=self.request.user, flow_id=self.kwargs["pk"])

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = services.flow_update(
            flow=serializer.instance, data=serializer.validated_data
        )

    def perform_destroy(self, instance: Flow) -> None:
        services.flow_delete(flow=instance)


class FlowEventListApi(generics.ListAPIView):
    """A flow's history, oldest first (``GET /api/v1/flows/{id}/events/``)."""

    serializer_class = FlowEventSerializer

    def get_queryset(self) -> QuerySet[FlowEvent]:
        return selectors.flow_events(user=self.request.user, flow_id=self.kwargs["pk"])
