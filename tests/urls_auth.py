"""Test-only URLs: one tiny DRF view that says who is authenticated and how."""

from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView


class WhoAmIApi(APIView):
    """``{"username", "authenticator"}`` of the request (default authentication/permissions)."""

    def get(self, request: Request) -> Response:
        authenticator = request.successful_authenticator
        return Response(
            {
                "username": request.user.get_username(),
                "authenticator": type(authenticator).__name__ if authenticator else None,
            }
        )


urlpatterns = [path("whoami/", WhoAmIApi.as_view(), name="whoami")]
