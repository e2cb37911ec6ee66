"""WebSocket authentication: session cookie, or a token (placeholder, see issue 5)."""

from channels.auth import AuthMiddlewareStack

TokenOrSessionAuthMiddlewareStack = AuthMiddlewareStack
