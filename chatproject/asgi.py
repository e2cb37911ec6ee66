"""ASGI entry point: HTTP through Django, WebSocket through channels, one daphne process."""

import os
from typing import Any

from core.asgi_handler import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
# Django's handler, minus a thread per request for its own signal receivers.
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from accounts.ws import SameOriginValidator, TokenOrSessionAuthMiddlewareStack  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402
from conversations.streaming.background import start_background  # noqa: E402
from core.asgi_limits import BodySizeLimitMiddleware  # noqa: E402
from core.startup import check_server_start, tune_interpreter  # noqa: E402
from webhooks.delivery import start_delivery  # noqa: E402

# Logs what the system checks find; refuses to start without the collected static files.
check_server_start()
tune_interpreter()

CHAT_PATHS = ("/api/v1/conversations/stream", "/api/ai/chat/stream")


class StartBackground:
    """Starts the process's background work (checkpoints, stale-reply sweeper, relay
    listener, webhook deliveries) on its first HTTP request or WebSocket connection: daphne
    has no lifespan events, and the work needs the server's event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.started = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not self.started and scope["type"] in ("http", "websocket"):
            self.started = True
            start_background()
            start_delivery()
        await self.app(scope, receive, send)


router = ProtocolTypeRouter(
    {
        "http": BodySizeLimitMiddleware(
            django_asgi_app,
            settings.MAX_REQUEST_BODY_BYTES,
            {path: settings.CHAT_MAX_BODY_BYTES for path in CHAT_PATHS},
        ),
        "websocket": SameOriginValidator(
            TokenOrSessionAuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)
application = StartBackground(router)
