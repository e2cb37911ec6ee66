from django.urls import path

from flows import apis

urlpatterns = [
    path("flows/", apis.FlowListApi.as_view(), name="flow-list"),
    path("flows/<str:pk>/", apis.FlowDetailApi.as_view(), name="flow-detail"),
    path("contexts/<str:pk>/flows/", apis.ContextFlowListApi.as_view(), name="context-flows"),
]
