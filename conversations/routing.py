"""WebSocket routes (docs/api.md#websocket), served by the same daphne process as HTTP."""

from django.urls import path

from conversations.consumers import ChatConsumer

websocket_urlpatterns = [path("ws/v1/chat/", ChatConsumer.as_asgi())]
