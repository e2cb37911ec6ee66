"""URLs of the ai app, included under ``api/v1/``: the caller's quota and usage, the models."""

from django.urls import path

from ai.apis import ModelsApi, QuotaApi, UsageApi

urlpatterns = [
    path("quota/", QuotaApi.as_view(), name="quota"),
    path("usage/", UsageApi.as_view(), name="usage"),
    path("models/", ModelsApi.as_view(), name="models"),
]
