"""What a server process does when it starts: report configuration problems loudly.

daphne runs no system checks, so the ASGI module runs them once and logs every error and
warning in the words of the check (what to set). The process still serves: an
unconfigured provider answers 503 ``ai_unavailable`` rather than taking the API down.
"""

from __future__ import annotations

import logging

from django.core import checks

logger = logging.getLogger("chatproject.startup")


def report_system_checks() -> int:
    """Run Django's system checks and log what they find; returns the number of errors."""
    errors = 0
    for message in checks.run_checks():
        if message.is_silenced():
            continue
        level = logging.ERROR if message.level >= checks.ERROR else logging.WARNING
        errors += message.level >= checks.ERROR
        logger.log(
            level,
            "startup.check %s: %s%s",
            message.id,
            message.msg,
            f" HINT: {message.hint}" if message.hint else "",
            extra={"check_id": message.id},
        )
    return errors
