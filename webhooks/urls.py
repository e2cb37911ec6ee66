from django.urls import path

from webhooks import apis

urlpatterns = [
    path("webhooks/", apis.SubscriptionListApi.as_view(), name="webhook-list"),
    path("webhooks/<uuid:pk>/", apis.SubscriptionDetailApi.as_view(), name="webhook-detail"),
]
