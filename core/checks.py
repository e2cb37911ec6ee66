"""The project's own system checks: deployment findings Django's checks cannot see here.

Django's security checks (``manage.py check --deploy``) look for its middleware by dotted
path in ``MIDDLEWARE``; this project runs subclasses of them
(``core.async_middleware``). Django then reports them missing (security.W001,
W002, W003: silenced in settings) and, believing them absent, skips every finding that
depends on them: no HSTS, no HTTPS redirect, no secure CSRF cookie... The deploy check
below finds the middleware by class and reports those findings with Django's own
messages and ids (``security.W004``, ``W008``, ``W016``, ...); a middleware that really
is missing is reported under ``core.W001``-``W003`` (Django's words), since the
``security.*`` ids are silenced.

==================  ===========================================================
core.W001    no ``SecurityMiddleware`` (nor a subclass) in ``MIDDLEWARE``
core.W002    no ``XFrameOptionsMiddleware`` (nor a subclass)
core.W003    no ``CsrfViewMiddleware`` (nor a subclass)
core.E001    collected static files missing or stale (run at server start only)
==================  ===========================================================

The static files check is not registered: ``migrate`` and ``collectstatic`` run system
checks too and must work before anything was collected. The server start
(``core.startup``) runs it and refuses to serve without the files.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib.staticfiles import finders
from django.contrib.staticfiles.storage import ManifestFilesMixin, staticfiles_storage
from django.core.checks import CheckMessage, Error, Tags, Warning, register
from django.core.checks.security import base, csrf, sessions
from django.utils.module_loading import import_string

SECURITY_MIDDLEWARE = "django.middleware.security.SecurityMiddleware"
XFRAME_MIDDLEWARE = "django.middleware.clickjacking.XFrameOptionsMiddleware"
CSRF_MIDDLEWARE = "django.middleware.csrf.CsrfViewMiddleware"
SESSION_MIDDLEWARE = "django.contrib.sessions.middleware.SessionMiddleware"

#: What collectstatic skips by default (its ``--ignore`` patterns).
COLLECTSTATIC_IGNORE_PATTERNS = ["CVS", ".*", "*~"]


def middleware_installed(stock_path: str) -> bool:
    """True when ``MIDDLEWARE`` holds the stock class at ``stock_path`` or a subclass."""
    stock = import_string(stock_path)
    for path in settings.MIDDLEWARE:
        if path == stock_path:
            return True
        try:
            cls = import_string(path)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, stock):
            return True
    return False


def _reissued(message: Warning, project_id: str) -> Warning:
    """Django's ``message`` under the project's id (Django's own is silenced)."""
    return Warning(message.msg, hint=message.hint, id=project_id)


def _security_findings() -> list[CheckMessage]:
    """What ``django.core.checks.security.base`` reports with SecurityMiddleware on."""
    found: list[CheckMessage] = []
    if not settings.SECURE_HSTS_SECONDS:
        found.append(base.W004)
    elif settings.SECURE_HSTS_INCLUDE_SUBDOMAINS is not True:
        found.append(base.W005)
    if settings.SECURE_HSTS_SECONDS and settings.SECURE_HSTS_PRELOAD is not True:
        found.append(base.W021)
    if settings.SECURE_CONTENT_TYPE_NOSNIFF is not True:
        found.append(base.W006)
    if settings.SECURE_SSL_REDIRECT is not True:
        found.append(base.W008)
    # The values Django checks only with the middleware on (same tests as its own).
    policy = settings.SECURE_REFERRER_POLICY
    if policy is None:
        found.append(base.W022)
    else:
        values = {v.strip() for v in policy.split(",")} if isinstance(policy, str) else set(policy)
        if not values <= base.REFERRER_POLICY_VALUES:
            found.append(base.E023)
    opener = settings.SECURE_CROSS_ORIGIN_OPENER_POLICY
    if opener is not None and opener not in base.CROSS_ORIGIN_OPENER_POLICY_VALUES:
        found.append(base.E024)
    return found


@register(Tags.security, deploy=True)
def check_middleware_subclasses(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Django's deploy findings that depend on its middleware, for subclasses of it.

    Findings Django reports itself (its stock path is in ``MIDDLEWARE``) are not repeated.
    """
    found: list[CheckMessage] = []
    middleware = list(settings.MIDDLEWARE)

    if not middleware_installed(SECURITY_MIDDLEWARE):
        found.append(_reissued(base.W001, "core.W001"))
    elif SECURITY_MIDDLEWARE not in middleware:
        found.extend(_security_findings())

    if not middleware_installed(XFRAME_MIDDLEWARE):
        found.append(_reissued(base.W002, "core.W002"))
    elif XFRAME_MIDDLEWARE not in middleware and settings.X_FRAME_OPTIONS != "DENY":
        found.append(base.W019)

    if not middleware_installed(CSRF_MIDDLEWARE):
        found.append(_reissued(csrf.W003, "core.W003"))
    elif (
        CSRF_MIDDLEWARE not in middleware
        and not settings.CSRF_USE_SESSIONS
        and settings.CSRF_COOKIE_SECURE is not True
    ):
        found.append(csrf.W016)

    # Sessions: with django.contrib.sessions installed Django already reports an insecure
    # or script-readable session cookie (W010, W013), middleware or not. Only a session
    # middleware without the app would go unreported.
    sessions_app = "django.contrib.sessions" in settings.INSTALLED_APPS
    if (
        not sessions_app
        and SESSION_MIDDLEWARE not in middleware
        and middleware_installed(SESSION_MIDDLEWARE)
    ):
        if settings.SESSION_COOKIE_SECURE is not True:
            found.append(sessions.W011)
        if settings.SESSION_COOKIE_HTTPONLY is not True:
            found.append(sessions.W014)
    return found


def check_static_files(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """With the manifest storage (``DJANGO_DEBUG`` off), ``collectstatic`` ran for this code.

    Without ``staticfiles.json`` in ``STATIC_ROOT`` every page that names a static file
    answers 500; with a manifest from older code, the pages naming a newer file do.
    """
    storage = staticfiles_storage
    if not isinstance(storage, ManifestFilesMixin):
        return []
    hint = (
        "Run python manage.py collectstatic --noinput (with the same settings and "
        f"environment as the server, STATIC_ROOT={settings.STATIC_ROOT}) before starting "
        "the server, after every deployment."
    )
    content = storage.read_manifest()
    if content is None:
        return [
            Error(
                f"The collected static files are missing: no {storage.manifest_name} in "
                f"STATIC_ROOT ({settings.STATIC_ROOT}). The admin and the chat page would "
                "answer 500.",
                hint=hint,
                id="core.E001",
            )
        ]
    try:
        collected = set(json.loads(content).get("paths", {}))
    except (ValueError, AttributeError):
        collected = set()
    missing = sorted(
        path
        for finder in finders.get_finders()
        for path, _ in finder.list(COLLECTSTATIC_IGNORE_PATTERNS)
        if path not in collected
    )
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        return [
            Error(
                f"The collected static files are stale: {len(missing)} file(s) of this code "
                f"are not in STATIC_ROOT ({settings.STATIC_ROOT}): {shown}. The pages "
                "naming them would answer 500.",
                hint=hint,
                id="core.E001",
            )
        ]
    return []
