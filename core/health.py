"""Liveness and readiness probes (docs/api.md#health)."""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse

logger = logging.getLogger(__name__)

_PROBE_TIMEOUT = 2.0


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers."""
    return JsonResponse({"status": "ok"})


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
        return True
    except Exception:
        logger.warning("readyz.database_unreachable", exc_info=True)
        connection.close()
        return False


async def _channel_layer_ok() -> bool:
    layer = get_channel_layer()
    if layer is None:
        return False
    try:
        channel = await asyncio.wait_for(layer.new_channel(), _PROBE_TIMEOUT)
        await asyncio.wait_for(layer.send(channel, {"type": "probe"}), _PROBE_TIMEOUT)
        await asyncio.wait_for(layer.receive(channel), _PROBE_TIMEOUT)
        return True
    except Exception:
        logger.warning("readyz.channel_layer_unreachable", exc_info=True)
        return False


async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: the database and the channel layer answer within two seconds each."""
    try:
        database = await asyncio.wait_for(
            sync_to_async(_database_ok, thread_sensitive=False)(), _PROBE_TIMEOUT + 3
        )
    except TimeoutError:
        database = False
    layer = await _channel_layer_ok()
    ready = database and layer
    body = {
        "status": "ready" if ready else "not_ready",
        "checks": {"database": database, "channel_layer": layer},
    }
    return JsonResponse(body, status=200 if ready else 503)
