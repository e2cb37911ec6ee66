"""The delivery loop each server process runs (docs/operations.md#webhooks).

:func:`start_delivery` starts it once per process (the composition root calls it on the
first request, as it does the chat's background work). Each round it claims due
deliveries under a lease (:func:`webhooks.services.deliveries_claim`), POSTs each one
outside any transaction, signed the Standard Webhooks way by the ``standardwebhooks``
package, and stores the outcome; every ``WEBHOOK_DUE_SCAN_SECONDS`` it also writes the
``flow.due`` deliveries of flows that reached their date, and deletes deliveries done
with for longer than ``WEBHOOK_RETENTION_DAYS``. A process killed mid-delivery
loses nothing: its lease runs out and another process sends the delivery again, with the
same ``Webhook-Id``.

Redirects are not followed (a 3xx is a failure), and the addresses a connection uses are
checked again at every delivery (:mod:`webhooks.addresses`). Logs carry the delivery and
subscription ids, the status code and the time taken; never the body, the URL's query or
the secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

import aiohttp
from django.conf import settings
from standardwebhooks import Webhook

from core.db import db_run
from core.metrics import WEBHOOK_DELIVERIES, WEBHOOK_DELIVERY_SECONDS
from webhooks.addresses import AddressRefused, GuardedResolver, host_refusal
from webhooks.services import (
    Claim,
    deliveries_claim,
    deliveries_prune,
    delivery_record,
    flows_due_notify,
)

logger = logging.getLogger("webhooks.delivery")

USER_AGENT = "chat-service-webhooks/1"

_task: asyncio.Task[None] | None = None


def signed_headers(claim: Claim, body: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (``at`` is its send time, UTC)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Webhook-Id": claim.webhook_id,
        "Webhook-Timestamp": str(int(at.timestamp())),
        "Webhook-Signature": Webhook(claim.secret).sign(claim.webhook_id, at, body),
    }


def _session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(), use_dns_cache=False, limit=settings.WEBHOOK_CONCURRENCY
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=settings.WEBHOOK_TIMEOUT_SECONDS),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"timeout after {settings.WEBHOOK_TIMEOUT_SECONDS:g} s"
    cause = exc
    while cause.__cause__ is not None and not isinstance(cause, AddressRefused):
        cause = cause.__cause__
    if isinstance(cause, AddressRefused):
        return f"refused: {cause}"
    return f"{type(exc).__name__}: {exc}"[:300]


async def deliver(session: aiohttp.ClientSession, claim: Claim) -> str:
    """POST one claimed delivery and store the outcome; returns it (see
    :func:`webhooks.services.delivery_record`)."""
    body = json.dumps(claim.payload, separators=(",", ":"), ensure_ascii=False)
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    status_code: int | None = None
    error = ""
    refusal = host_refusal(urlsplit(claim.url).hostname or "")
    if refusal:
        error = f"refused: {refusal}"
    else:
        try:
            async with session.post(
                claim.url,
                data=body.encode(),
                headers=signed_headers(claim, body, started_at),
                allow_redirects=False,
            ) as response:
                status_code = response.status
                if not 200 <= status_code < 300:
                    error = f"HTTP {status_code}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = _error_text(exc)
    elapsed = time.perf_counter() - started
    outcome = await db_run(
        delivery_record,
        claim=claim,
        started_at=started_at,
        duration_ms=int(elapsed * 1000),
        status_code=status_code,
        error=error,
    )
    WEBHOOK_DELIVERIES.labels(outcome).inc()
    WEBHOOK_DELIVERY_SECONDS.observe(elapsed)
    log = logger.info if outcome == "delivered" else logger.warning
    log(
        "webhooks.attempt",
        extra={
            "webhook_id": claim.webhook_id,
            "delivery_id": str(claim.delivery_id),
            "subscription_id": str(claim.subscription_id),
            "attempt": claim.attempts + 1,
            "status_code": status_code,
            "outcome": outcome,
            "error": error.split(":", 1)[0] if error else "",
            "duration_ms": int(elapsed * 1000),
        },
    )
    return outcome


async def _deliver_logged(session: aiohttp.ClientSession, claim: Claim) -> None:
    try:
        await deliver(session, claim)
    except asyncio.CancelledError:
        raise
    except Exception:
        # The lease runs out and the delivery is sent again: nothing is lost.
        logger.warning(
            "webhooks.attempt_not_recorded",
            extra={"webhook_id": claim.webhook_id},
            exc_info=True,
        )


async def deliver_forever() -> None:
    """Claim and send due deliveries, and scan for due flows, until cancelled."""
    inflight: set[asyncio.Task[None]] = set()
    next_scan = 0.0
    failures = 0
    loop = asyncio.get_running_loop()
    async with _session() as session:
        try:
            while True:
                if loop.time() >= next_scan:
                    next_scan = loop.time() + settings.WEBHOOK_DUE_SCAN_SECONDS
                    try:
                        count = await db_run(flows_due_notify)
                        if count:
                            logger.info("webhooks.flows_due", extra={"flows": count})
                        pruned = await db_run(deliveries_prune)
                        if pruned:
                            logger.info("webhooks.pruned", extra={"deliveries": pruned})
                    except Exception as exc:
                        logger.warning(
                            "webhooks.due_scan_failed", extra={"exc_type": type(exc).__name__}
                        )
                free = settings.WEBHOOK_CONCURRENCY - len(inflight)
                claims: list[Claim] = []
                if free > 0:
                    try:
                        claims = await db_run(deliveries_claim, limit=free)
                        failures = 0
                    except Exception as exc:
                        # The database is away: wait longer each time (up to 30 s).
                        failures = min(failures + 1, 8)
                        logger.warning(
                            "webhooks.claim_failed",
                            extra={"exc_type": type(exc).__name__, "failures": failures},
                        )
                for claim in claims:
                    task = loop.create_task(_deliver_logged(session, claim))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                if failures:
                    await asyncio.sleep(min(30.0, settings.WEBHOOK_POLL_SECONDS * 2**failures))
                elif not claims or len(claims) < free:
                    await asyncio.sleep(settings.WEBHOOK_POLL_SECONDS)
                else:
                    await asyncio.sleep(0)
        finally:
            for task in inflight:
                task.cancel()


def start_delivery() -> None:
    """Start this process's delivery loop once (again if it ended). Call it from the
    event loop."""
    global _task
    if _task is None or _task.done():
        _task = asyncio.get_running_loop().create_task(deliver_forever())


def stop_delivery() -> asyncio.Task[None] | None:
    """Cancel the delivery loop (tests); returns it, to be awaited by the caller."""
    global _task
    task, _task = _task, None
    if task is not None:
        task.cancel()
    return task
