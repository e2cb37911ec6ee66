from django.urls import path

from flows import apis

urlpatterns = [
    path("flows/", apis.FlowListApi.as_view(), name="flow-list"),
    path("flows/<uuid:pk>/", apis.FlowDetailApi.as_view(), name="flow-detail"),
    path("flows/<uuid:pk>/events/", apis.FlowEventListApi.as_view(), name="flow-events"),
]
