"""WebSocket routes (contract section 3.4)."""

from django.urls import path

websocket_urlpatterns: list = []
