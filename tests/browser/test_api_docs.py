"""The API docs page renders in Chromium under its Content-Security-Policy.

Swagger UI (drf-spectacular-sidecar's copy, served by the app) must draw the operations of
the schema with the page's strict policy in force: a blocked inline script, style or
outside request would show as a console error, which fails the test (the ``page``
fixture), or leave the page empty.
"""

from __future__ import annotations


def test_swagger_ui_draws_the_operations(page, server) -> None:
    response = page.goto(f"{server.url}/api/v1/docs/")
    assert response is not None and response.status == 200
    assert "script-src 'self'" in response.headers["content-security-policy"]
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() > 5
    assert page.locator(".info .title").inner_text().startswith("Chat service API")
