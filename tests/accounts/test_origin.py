"""The WebSocket Origin rule: same scheme-default-aware host and port, or an explicitly
trusted origin."""

from __future__ import annotations

import pytest

from accounts.ws import origin_allowed


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://127.0.0.1:9999", "127.0.0.1:8000", False),  # the port counts
        ("http://localhost", "localhost", True),
        ("http://localhost:80", "localhost", True),  # the default port, written out
        ("https://localhost", "localhost:80", False),  # https means 443
        ("https://chat.example.com", "chat.example.com", False),  # not in ALLOWED_HOSTS
        ("http://evil.example", "127.0.0.1:8000", False),
        ("null", "127.0.0.1:8000", False),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("https://app.example.org", "127.0.0.1:8000", True),  # CSRF_TRUSTED_ORIGINS
        ("https://app.example.org:8443", "127.0.0.1:8000", False),
    ],
)
def test_origin_allowed(settings, origin, host, allowed):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://app.example.org"]
    settings.CORS_ALLOWED_ORIGINS = []
    assert origin_allowed(origin, host) is allowed
