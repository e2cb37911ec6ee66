"""WebSocket routes (contract section 3.4)."""


websocket_urlpatterns: list = []
