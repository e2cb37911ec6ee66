"""/metrics: Prometheus text, summed over processes, loopback only (docs/api.md#metrics)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests import factories
from tests.e2e.server import DaphneServer
from tests.sse_client import stream

pytestmark = pytest.mark.e2e


def sample(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" ([0-9.e+]+)"
    match = re.search(r"^" + pattern + "$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_metrics_summed_over_two_processes(transactional_db, tmp_path):
    user = factories.make_user("alice")
    token = factories.make_token(user)
    context = factories.make_context(user, "Work")
    shared = str(tmp_path)
    env = {"PROMETHEUS_MULTIPROC_DIR": shared, "MOCK_TOKEN_DELAY_MS": "1"}
    servers = [DaphneServer(env).start(), DaphneServer(env).start()]
    try:
        for server, text in zip(
            servers, ["hello", "[[mock:error:ai_rate_limited]] hi"], strict=True
        ):
            stream(
                "POST",
                f"{server.url}/api/v1/conversations/stream",
                token=token,
                json_body={
                    "context_id": str(context.id),
                    "messages": [{"role": "user", "content": text}],
                },
            )
        bodies = [httpx.get(f"{s.url}/metrics", timeout=10) for s in servers]
        for response in bodies:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
        text = bodies[0].text
        assert sample(bodies[1].text, "chat_turns_total", 'outcome="failed"') == 1
        assert sample(text, "chat_turns_total", 'outcome="complete"') == 1
        assert sample(text, "chat_turns_total", 'outcome="failed"') == 1
        assert sample(text, "chat_provider_errors_total", 'code="ai_rate_limited"') == 1
        assert sample(text, "chat_chunks_relayed_total") > 5
        assert sample(text, "chat_time_to_first_chunk_seconds_count") == 1
        assert sample(text, "chat_turn_duration_seconds_count") == 2
        assert sample(text, "chat_open_streams") == 0
        forwarded = httpx.get(
            f"{servers[0].url}/metrics", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10
        )
        assert forwarded.status_code == 403
    finally:
        for server in servers:
            server.stop()


def test_metrics_refused_to_other_addresses(client, settings):
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1", "::1"]
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 403
    assert (
        client.get(
            "/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.7"
        ).status_code
        == 403
    )
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
