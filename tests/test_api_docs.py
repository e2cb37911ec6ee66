"""The API docs page (/api/v1/docs/): Swagger UI from the project's own static files.

drf-spectacular-sidecar's copy of Swagger UI, served by this server (no CDN: nothing to
trust elsewhere, and the page works air-gapped), under the strict Content-Security-Policy
of the chat page (web/csp.py): no inline script or style, everything same-origin.
tests/browser/test_api_docs.py renders it in Chromium under that policy.
"""

from __future__ import annotations

import re

import pytest
from django.test import Client

from web.csp import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.django_db

DOCS = "/api/v1/docs/"


def directives(policy: str) -> dict[str, list[str]]:
    """``{"script-src": ["'self'"], ...}`` of a Content-Security-Policy header."""
    parsed = {}
    for part in policy.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


def test_docs_page_runs_under_the_strict_policy(client: Client) -> None:
    response = client.get(DOCS)
    assert response.status_code == 200
    policy = directives(response.headers["Content-Security-Policy"])
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    html = response.content.decode()
    # No inline script or style: every <script> has a src, no <style> element.
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html


def test_docs_page_loads_only_same_origin_files_and_they_are_served(client: Client) -> None:
    html = client.get(DOCS).content.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any("swagger-ui-bundle" in url for url in urls)
    for url in urls:
        # Same origin: a path on this server, never a CDN (https://, or //host/).
        assert url.startswith("/") and not url.startswith("//"), url
        assert "cdn" not in url.lower() and "unpkg" not in url.lower(), url
        response = client.get(url.replace("&amp;", "&"))
        assert response.status_code == 200, url
        if "?script" in url or url.endswith(".js"):
            assert response["Content-Type"].startswith(
                ("application/javascript", "text/javascript")
            ), url
    # The init script (SpectacularSwaggerSplitView) points Swagger UI at the schema.
    script = next(url for url in urls if "script" in url.split("?", 1)[-1])
    assert b"/api/v1/schema/" in client.get(script.replace("&amp;", "&")).content
