"""The alias of the streaming endpoint: POST /api/ai/chat/stream (docs/api.md#rest-endpoints)."""

from django.urls import path

from conversations.streaming import views as stream_views

urlpatterns = [
    path("ai/chat/stream", stream_views.chat_stream, name="chat-stream-alias"),
]
