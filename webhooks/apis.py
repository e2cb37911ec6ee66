"""REST endpoints for webhook subscriptions: thin, scoped to the caller."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from webhooks import selectors, services
from webhooks.models import EventType, Subscription
from webhooks.serializers import SubscriptionCreatedSerializer, SubscriptionSerializer


class SubscriptionListApi(generics.ListCreateAPIView):
    serializer_class = SubscriptionSerializer

    def get_queryset(self) -> QuerySet[Subscription]:
        return selectors.subscription_list(user=self.request.user)

    @extend_schema(request=SubscriptionSerializer, responses={201: SubscriptionCreatedSerializer})
    def post(self, request: Request, *args: object, **kwargs: object) -> Response:
        serializer = SubscriptionSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        subscription = services.subscription_create(
            user=request.user,
            url=data["url"],
            events=data.get("events", EventType.values),
            active=data.get("active", True),
        )
        return Response(
            SubscriptionCreatedSerializer(subscription).data, status=status.HTTP_201_CREATED
        )


class SubscriptionDetailApi(generics.RetrieveUpdateDestroyAPIView):
    serializer_class = SubscriptionSerializer
    http_method_names = ["get", "patch", "delete", "head", "options"]

    def get_object(self) -> Subscription:
        return selectors.subscription_get(user=self.request.user, subscription_id=self.kwargs["pk"])

    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        serializer.instance = services.subscription_update(
            subscription=serializer.instance, data=serializer.validated_data
        )

    def perform_destroy(self, instance: Subscription) -> None:
        services.subscription_delete(subscription=instance)
