"""The Content-Security-Policy of the pages this app renders.

The chat page runs no inline script and needs no inline style: everything is in
``web/static/web/`` (ES modules and one stylesheet), so a strict policy fits. It is set
here, per view, rather than in settings: the API answers JSON and SSE, which a browser
never renders as a document, so only the HTML pages need it. The API docs page
(``/api/v1/docs/``, chatproject/urls.py) runs under the same policy: Swagger UI from
drf-spectacular-sidecar's static files, its init script a separate same-origin URL, its
one stylesheet in ``web/static/web/api_docs.css``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest, HttpResponse

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "object-src 'none'",
    ]
)


def content_security_policy(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Send :data:`CONTENT_SECURITY_POLICY` with the view's response (unless it set one)."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        response = view(request, *args, **kwargs)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    return wrapped
