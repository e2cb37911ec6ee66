"""Top-level URLs (docs/api.md#rest-endpoints)."""

from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from accounts.throttling import login_throttled
from core import health, metrics
from web.csp import content_security_policy

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # The admin's password login, throttled like the chat page's (accounts.throttling).
    path("admin/login/", login_throttled(admin.site.login)),
    path("admin/", admin.site.urls),
    path("api/v1/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI from drf-spectacular-sidecar's static files; its init script is a second
    # same-origin URL (?script), so the page runs under the strict CSP of web/csp.py.
    path(
        "api/v1/docs/",
        content_security_policy(
            SpectacularSwaggerSplitView.as_view(
                url_name="schema", template_name="web/api_docs.html"
            )
        ),
        name="docs",
    ),
    path("api/v1/", include("conversations.urls")),
    path("api/v1/", include("flows.urls")),
    path("api/v1/", include("webhooks.urls")),
    path("api/v1/", include("ai.urls")),
    path("api/", include("conversations.urls_alias")),
    path("", include("web.urls")),
]

if settings.OIDC_BROWSER_LOGIN_ENABLED:
    urlpatterns.append(path("oidc/", include("mozilla_django_oidc.urls")))

#: JSON 404s under /api/ (core.exception_handler.not_found).
handler404 = "core.exception_handler.not_found"
