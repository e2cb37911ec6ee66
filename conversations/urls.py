from django.urls import path

from conversations import apis
from conversations.streaming import views as stream_views

urlpatterns = [
    path("contexts/", apis.ContextListCreateApi.as_view(), name="context-list"),
    path("contexts/<uuid:pk>/", apis.ContextDetailApi.as_view(), name="context-detail"),
    path("contexts/<uuid:pk>/flows/", apis.ContextFlowListApi.as_view(), name="context-flows"),
    path("conversations/", apis.ConversationListApi.as_view(), name="conversation-list"),
    path("conversations/stream", stream_views.chat_stream, name="conversation-stream"),
    path(
        "conversations/<uuid:pk>/", apis.ConversationDetailApi.as_view(), name="conversation-detail"
    ),
    path(
        "conversations/<uuid:pk>/messages/",
        apis.ConversationMessagesApi.as_view(),
        name="conversation-messages",
    ),
    path(
        "conversations/<uuid:pk>/export",
        apis.ConversationExportApi.as_view(),
        name="conversation-export",
    ),
    path("search/", apis.SearchApi.as_view(), name="search"),
    path("messages/<uuid:pk>/", apis.MessageDetailApi.as_view(), name="message-detail"),
    path("messages/<uuid:pk>/stream", stream_views.message_stream, name="message-stream"),
    path("messages/<uuid:pk>/cancel", stream_views.message_cancel, name="message-cancel"),
    path(
        "messages/<uuid:pk>/regenerate",
        stream_views.message_regenerate,
        name="message-regenerate",
    ),
    path("messages/<uuid:pk>/edit", stream_views.message_edit, name="message-edit"),
]
