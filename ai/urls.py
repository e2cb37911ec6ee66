"""URLs of the ai app, included under ``api/v1/``: the caller's quota."""

from django.urls import path

from ai.apis import QuotaApi

urlpatterns = [
    path("quota/", QuotaApi.as_view(), name="quota"),
]
