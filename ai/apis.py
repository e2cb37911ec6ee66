"""The caller's quota and usage: ``GET /api/v1/quota/`` (docs/api.md#quota),
``GET /api/v1/usage/`` (docs/api.md#usage-report), and the models a client may pick:
``GET /api/v1/models/`` (docs/api.md#routing)."""

from __future__ import annotations

from datetime import UTC, date, timedelta

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ai.pricing import price_for
from ai.quota.selectors import quota_snapshot
from ai.routing import allowed_routes, configured_routes
from ai.selectors import usage_summary
from ai.serializers import ModelListSerializer, QuotaOutputSerializer, UsageOutputSerializer
from core.errors import InvalidRequest
from core.http import choice_query_param

#: Without ``from``: the last 30 UTC days, today included.
USAGE_DEFAULT_DAYS = 30
USAGE_GROUPS = ["day", "model", "conversation"]


class QuotaApi(APIView):
    """The caller's quota and what remains of it in the current period."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="quota_retrieve",
        tags=["quota"],
        summary="The caller's quota",
        responses={200: QuotaOutputSerializer},
    )
    def get(self, request: Request) -> Response:
        """Limits, used counters, what remains and when the counters reset."""
        snapshot = quota_snapshot(user=request.user)
        return Response(QuotaOutputSerializer(snapshot).data)


def _date_param(request: Request, name: str) -> date | None:
    """An ISO date (``YYYY-MM-DD``) from the query string; 400 naming it when malformed."""
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest({name: ["Must be a date, YYYY-MM-DD."]}) from None


class UsageApi(APIView):
    """The caller's requests, tokens by kind and cost, by day, model or conversation."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="usage_retrieve",
        tags=["usage"],
        summary="The caller's usage and cost",
        parameters=[
            OpenApiParameter(
                "from", OpenApiTypes.DATE, description="First UTC day (default: 29 days ago)."
            ),
            OpenApiParameter("to", OpenApiTypes.DATE, description="Last UTC day (default: today)."),
            OpenApiParameter("group_by", str, enum=USAGE_GROUPS, description="Default: day."),
        ],
        responses={200: UsageOutputSerializer},
    )
    def get(self, request: Request) -> Response:
        """Totals and groups over ``from``..``to`` (both included; empty when ``from`` is
        after ``to``)."""
        group_by = choice_query_param(request, "group_by", USAGE_GROUPS) or "day"
        date_from = _date_param(request, "from")
        date_to = _date_param(request, "to")
        if date_to is None:
            date_to = timezone.now().astimezone(UTC).date()
        if date_from is None:
            date_from = date_to - timedelta(days=USAGE_DEFAULT_DAYS - 1)
        summary = usage_summary(
            user=request.user, date_from=date_from, date_to=date_to, group_by=group_by
        )
        return Response(UsageOutputSerializer(summary).data)


class ModelsApi(APIView):
    """The routes a client may pick with the chat body's ``model``, with their prices."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="models_list",
        tags=["models"],
        summary="Models a client may pick",
        responses={200: ModelListSerializer},
    )
    def get(self, request: Request) -> Response:
        """``AI_ALLOWED_MODELS`` (default: ``AI_ROUTES``), in order, each with its price
        valid today (``null`` when it has none) and whether it is the default route."""
        today = timezone.now()
        default = configured_routes()[0]
        results = []
        for route in allowed_routes():
            price = price_for(route.provider, route.model, today)
            results.append(
                {
                    "id": route.name,
                    "provider": route.provider,
                    "model": route.model,
                    "default": route == default,
                    "price": None
                    if price is None
                    else {
                        "input_per_mtok": price.input_per_mtok,
                        "output_per_mtok": price.output_per_mtok,
                        "cache_read_per_mtok": price.cache_read_per_mtok,
                        "cache_write_per_mtok": price.cache_write_per_mtok,
                        "currency": price.currency,
                        "valid_from": price.valid_from,
                    },
                }
            )
        body = {"count": len(results), "next": None, "previous": None, "results": results}
        return Response(ModelListSerializer(body).data)
