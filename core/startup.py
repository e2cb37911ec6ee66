"""What a server process does when it starts: report configuration problems loudly.

daphne runs no system checks, so the ASGI module runs them once and logs every error and
warning in the words of the check (what to set). The process still serves on most of
them: an unconfigured provider answers 503 ``ai_unavailable`` rather than taking the API
down. It refuses to start only when it could not serve at all, e.g. without the
collected static files (every page naming one would answer 500): see
:func:`check_server_start`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from core.checks import check_static_files

logger = logging.getLogger("core.startup")

#: Checks run only at server start (``migrate`` and ``collectstatic`` must work without
#: them passing); an error of theirs stops the process.
FATAL_START_CHECKS: Sequence[Callable[..., list[checks.CheckMessage]]] = (check_static_files,)


def _log(message: checks.CheckMessage) -> None:
    level = logging.ERROR if message.level >= checks.ERROR else logging.WARNING
    logger.log(
        level,
        "startup.check %s: %s%s",
        message.id,
        message.msg,
        f" HINT: {message.hint}" if message.hint else "",
        extra={"check_id": message.id},
    )


def report_system_checks() -> int:
    """Run Django's system checks and log what they find; returns the number of errors."""
    errors = 0
    for message in checks.run_checks():
        if message.is_silenced():
            continue
        errors += message.level >= checks.ERROR
        _log(message)
    return errors


def check_server_start(fatal_checks: Sequence[Callable[..., Any]] = FATAL_START_CHECKS) -> None:
    """Log every system check finding, then raise on an error of ``fatal_checks``.

    Raises :class:`ImproperlyConfigured` (daphne exits with its message) when the process
    could not serve, saying what to run or set.
    """
    report_system_checks()
    fatal = [
        message
        for check in fatal_checks
        for message in check(None)
        if message.level >= checks.ERROR and not message.is_silenced()
    ]
    for message in fatal:
        _log(message)
    if fatal:
        raise ImproperlyConfigured(
            "The server cannot start: "
            + " ".join(f"{m.msg} {m.hint or ''}".strip() + f" ({m.id})" for m in fatal)
        )


def tune_interpreter() -> float:
    """Set the interpreter's thread switch interval to ``GIL_SWITCH_INTERVAL_MS`` (when
    above 0) and log it; the interval in force, in seconds. Called once by the ASGI module:
    a server process only, not ``manage.py``."""
    interval_ms = settings.GIL_SWITCH_INTERVAL_MS
    if interval_ms > 0:
        sys.setswitchinterval(interval_ms / 1000)
    interval = sys.getswitchinterval()
    logger.info("startup.switch_interval", extra={"switch_interval_ms": interval * 1000})
    return interval
