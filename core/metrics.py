"""Prometheus metrics (docs/api.md#metrics), counted per turn, never per chunk.

With several server processes, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
shared by the processes of one host (cleaned before they start): prometheus-client then
keeps each process's values in files there and ``/metrics`` sums them. Without it, the
process's own registry is served.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)

OPEN_STREAMS = Gauge(
    "chat_open_streams", "Replies being generated in this process.", multiprocess_mode="livesum"
)
TURNS = Counter("chat_turns", "Chat turns by outcome.", ["outcome"])
TIME_TO_FIRST_CHUNK = Histogram(
    "chat_time_to_first_chunk_seconds",
    "From the turn's start to the provider's first text.",
    buckets=_LATENCY_BUCKETS,
)
TURN_DURATION = Histogram(
    "chat_turn_duration_seconds", "From the turn's start to its end.", buckets=_DURATION_BUCKETS
)
CHUNKS = Counter("chat_chunks_relayed", "Text deltas relayed from providers.")
TOKENS = Counter("chat_tokens", "Tokens used by replies and extraction.", ["kind"])
PROVIDER_ERRORS = Counter("chat_provider_errors", "Provider failures by code.", ["code"])
REFUSALS = Counter("chat_refusals", "Turns refused before streaming, by code.", ["code"])
SHED_TURNS = Counter(
    "chat_shed_turns",
    "Turns refused with 503 server_busy by a saturated process, by reason (streams, wait).",
    ["reason"],
)
SKIPPED_EXTRACTIONS = Counter(
    "chat_skipped_extractions",
    "Flow extractions skipped because the process was saturated.",
)
SKIPPED_TITLES = Counter(
    "chat_skipped_titles",
    "Conversation title calls put off to the next turn because the process was saturated.",
)
DB_QUEUE_WAIT = Gauge(
    "chat_db_queue_wait_seconds",
    "Estimated wait of a database unit queued now (queue length times mean unit time).",
    multiprocess_mode="max",
)
RESUMES = Counter("chat_resumes", "Resumed streams.", ["source"])
CANCELS = Counter("chat_cancels", "Cancel requests.")
# By route (docs/api.md#routing): the provider and model that served or failed.
ROUTE_TURNS = Counter(
    "chat_route_turns",
    "Chat turns by the route that served them.",
    ["provider", "model", "outcome"],
)
ROUTE_ERRORS = Counter(
    "chat_route_errors", "Provider failures by route and code.", ["provider", "model", "code"]
)
FAILOVERS = Counter(
    "chat_failovers",
    "Turns moved from a failing route (provider, model) to the next (to_provider, to_model).",
    ["provider", "model", "to_provider", "to_model", "code"],
)
COST = Counter(
    "chat_cost",
    "Cost of AI calls (replies and extractions) in the price's currency.",
    ["provider", "model", "currency"],
)
CACHE_TOKENS = Counter(
    "chat_cache_tokens",
    "Input tokens read from (read) or written to (write) the provider's prompt cache.",
    ["provider", "model", "kind"],
)
WEBHOOK_DELIVERIES = Counter(
    "webhook_deliveries",
    "Webhook delivery attempts by outcome (delivered, retry, failed: given up, lease_lost).",
    ["outcome"],
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "webhook_delivery_seconds",
    "One webhook POST, connecting included.",
    buckets=_LATENCY_BUCKETS,
)


def record_turn(
    *,
    outcome: str,
    error_code: str,
    duration: float,
    first_chunk: float | None,
    chunks: int,
    input_tokens: int,
    output_tokens: int,
) -> None:
    """Count one finished turn (called once per turn)."""
    TURNS.labels(outcome).inc()
    TURN_DURATION.observe(duration)
    if first_chunk is not None:
        TIME_TO_FIRST_CHUNK.observe(first_chunk)
    if chunks:
        CHUNKS.inc(chunks)
    TOKENS.labels("input").inc(input_tokens)
    TOKENS.labels("output").inc(output_tokens)
    if error_code and error_code.startswith("ai_"):
        PROVIDER_ERRORS.labels(error_code).inc()


def record_usage_lines(lines: Iterable[Any]) -> None:
    """Count the cost and cache tokens of usage ledger lines once they are stored (called
    once per written line: never per chunk or token). Each line has ``provider``,
    ``model``, ``currency``, ``cost``, ``cache_read_tokens`` and ``cache_write_tokens``."""
    for line in lines:
        provider, model = line.provider, line.model
        if line.cost:
            COST.labels(provider, model, line.currency).inc(float(line.cost))
        if line.cache_read_tokens:
            CACHE_TOKENS.labels(provider, model, "read").inc(line.cache_read_tokens)
        if line.cache_write_tokens:
            CACHE_TOKENS.labels(provider, model, "write").inc(line.cache_write_tokens)


#: Collectors whose values are read when ``/metrics`` is scraped (state shared by all the
#: processes elsewhere, such as the route breakers in the cache: one answer, not a sum).
_SCRAPE_COLLECTORS: list[Any] = []


def register_scrape_collector(collector: Any) -> None:
    """Add a collector (``collect()`` yielding metric families) read at every scrape.

    For values that are already shared across processes (kept in the cache or the
    database): read once per scrape, never summed over the processes' files.
    """
    if collector not in _SCRAPE_COLLECTORS:
        _SCRAPE_COLLECTORS.append(collector)


def _allowed(request: HttpRequest) -> bool:
    """Loopback (or ``METRICS_ALLOWED_IPS``) only, for the peer and every forwarded hop."""
    allowed = set()
    for entry in settings.METRICS_ALLOWED_IPS:
        try:
            allowed.add(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    addresses = [request.META.get("REMOTE_ADDR", "")]
    forwarded = request.headers.get("X-Forwarded-For", "")
    addresses += [part.strip() for part in forwarded.split(",") if part.strip()]
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if not any(ip in network for network in allowed):
            return False
    return True


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: Prometheus text format, summed over processes in multiprocess mode."""
    if not _allowed(request):
        return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        data = generate_latest(registry)
    else:
        data = generate_latest()
    if _SCRAPE_COLLECTORS:
        shared = CollectorRegistry(auto_describe=False)
        for collector in _SCRAPE_COLLECTORS:
            shared.register(collector)
        data += generate_latest(shared)
    return HttpResponse(data, content_type=CONTENT_TYPE_LATEST)
