"""URLs of the ai app, included under ``api/v1/``: the caller's quota and usage."""

from django.urls import path

from ai.apis import QuotaApi, UsageApi

urlpatterns = [
    path("quota/", QuotaApi.as_view(), name="quota"),
    path("usage/", UsageApi.as_view(), name="usage"),
]
