"""System checks of the webhook settings.

==============  ==============================================================
webhooks.E001   ``WEBHOOK_TIMEOUT_SECONDS`` is not shorter than the lease
webhooks.E002   a webhook interval or limit is not positive
==============  ==============================================================
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def webhook_settings_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A POST must end before its lease does, or a second process could send it too."""
    errors: list[CheckMessage] = []
    if settings.WEBHOOK_TIMEOUT_SECONDS >= settings.WEBHOOK_LEASE_SECONDS:
        errors.append(
            Error(
                "WEBHOOK_TIMEOUT_SECONDS must be shorter than WEBHOOK_LEASE_SECONDS.",
                hint="Set WEBHOOK_LEASE_SECONDS to a few times WEBHOOK_TIMEOUT_SECONDS.",
                id="webhooks.E001",
            )
        )
    for name in (
        "WEBHOOK_TIMEOUT_SECONDS",
        "WEBHOOK_LEASE_SECONDS",
        "WEBHOOK_MAX_AGE_SECONDS",
        "WEBHOOK_POLL_SECONDS",
        "WEBHOOK_DUE_SCAN_SECONDS",
        "WEBHOOK_CONCURRENCY",
        "WEBHOOK_RETENTION_DAYS",
    ):
        if getattr(settings, name) <= 0:
            errors.append(Error(f"{name} must be positive.", id="webhooks.E002"))
    if not settings.WEBHOOK_RETRY_SCHEDULE or min(settings.WEBHOOK_RETRY_SCHEDULE) <= 0:
        errors.append(
            Error("WEBHOOK_RETRY_SCHEDULE must list positive seconds.", id="webhooks.E002")
        )
    return errors
