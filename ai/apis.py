"""The caller's quota: ``GET /api/v1/quota/`` (docs/api.md#quota)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ai.quota.selectors import quota_snapshot
from ai.serializers import QuotaOutputSerializer


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
