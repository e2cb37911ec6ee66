"""The empty Django async view: relay the upstream's stream with httpx as SSE."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from bench.references import relay_events, upstream_request


@csrf_exempt
async def relay(request: HttpRequest) -> StreamingHttpResponse:
    url, payload = upstream_request(request.body, request.GET.get("tokens"))
    return StreamingHttpResponse(
        relay_events(url, payload),
        content_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"ok")
