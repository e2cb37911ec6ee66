"""Logs and error events never carry message text, reply text, credentials or keys.

Full turns run against a real daphne with ``LOG_LEVEL=DEBUG`` (JSON and text formats) and
the ``openai`` provider pointed at the fake OpenAI server, with a unique API key in the
settings, a unique phrase in the user message, a unique phrase in the reply, the DRF token
in the request, and a bogus bearer token on a refused request. The fake server also plays
its failure scenarios (429, 500 with an internal message, a dropped connection, an error
chunk, a malformed chunk). Afterwards none of the secrets may appear anywhere in the
process's output, and every SSE ``error`` event carries only a stable code and our own
safe text.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from core.errors import CATALOG
from tests import factories
from tests.e2e.server import DaphneServer
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript, error_body, rate_limited
from tests.sse_client import stream

pytestmark = pytest.mark.e2e

#: The codes a stream's ``error`` event may carry (docs/api.md#sse-events).
STREAM_ERROR_CODES = {
    "ai_rate_limited",
    "ai_timeout",
    "ai_unavailable",
    "ai_error",
    "stream_timeout",
    "internal_error",
}


@pytest.fixture
def openai_fake():
    with FakeOpenAIServer() as server:
        yield server


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_reaches_the_logs_or_the_client(transactional_db, openai_fake, log_format):
    marker = uuid.uuid4().hex[:12]
    api_key = f"sk-unique-secret-{marker}"
    phrase = f"zebra-umbrella-{marker}"
    reply_phrase = f"reply-walnut-{marker}"
    internal = f"provider-internal-{marker}"
    bearer = f"eyJhbGciOiJSUzI1NiJ9.bearer-secret-{marker}.sig"

    alice = factories.make_user(f"alice{marker}")
    token = factories.make_token(alice)
    context = factories.make_context(alice, name="Work")
    server = DaphneServer(
        {
            "LOG_LEVEL": "DEBUG",
            "LOG_FORMAT": log_format,
            "AI_PROVIDER": "openai",
            "OPENAI_API_KEY": api_key,
            "OPENAI_BASE_URL": openai_fake.base_url,
            "AI_MAX_RETRIES": "0",
            "AI_TIMEOUT_SECONDS": "3",
        }
    ).start()
    try:
        url = f"{server.url}/api/v1/conversations/stream"
        body = {"context_id": str(context.id), "messages": [{"role": "user", "content": phrase}]}
        openai_fake.default = OpenAIScript(tokens=["Sure: ", reply_phrase, " done."])

        ok = stream("POST", url, token=token, json_body=body)
        assert ok.names()[-1] == "done" and reply_phrase in ok.text()
        message_id = ok.first("metadata").data["message_id"]
        resumed = stream("GET", f"{server.url}/api/v1/messages/{message_id}/stream", token=token)
        assert reply_phrase in resumed.text()
        as_json = httpx.post(
            url,
            json=body,
            headers={"Authorization": f"Token {token}", "Accept": "application/json"},
            timeout=30,
        )
        assert as_json.status_code == 200
        assert as_json.headers["content-type"].startswith("application/json")

        failures = [
            rate_limited(),
            OpenAIScript(status=500, error_body=error_body(internal, "server_error")),
            OpenAIScript(status=401, error_body=error_body(f"Incorrect API key {api_key}", "x")),
            OpenAIScript(tokens=["a", reply_phrase, "b", "c"], drop_after=2),
            OpenAIScript(
                tokens=["a", reply_phrase, "c"],
                error_event_after=2,
                error_event={
                    "message": internal,
                    "type": "server_error",
                    "param": None,
                    "code": None,
                },
            ),
            OpenAIScript(tokens=["a", reply_phrase, "c"], malformed_after=2),
            OpenAIScript(tokens=["a", reply_phrase], finish_reason=None, send_done=False),
        ]
        errors = []
        for script in failures:
            openai_fake.push(script)
            result = stream("POST", url, token=token, json_body=body)
            assert result.status_code == 200, result.body
            assert result.names()[-1] == "error", (script, result.names())
            errors.append(result.last().data)
        refused = httpx.post(
            url, json=body, headers={"Authorization": f"Bearer {bearer}"}, timeout=10
        )
        assert refused.status_code == 401
        refused = httpx.get(
            f"{server.url}/api/v1/contexts/", headers={"Authorization": f"Bearer {bearer}"}
        )
        assert refused.status_code == 401
    finally:
        server.stop()

    for error in errors:
        assert error["code"] in STREAM_ERROR_CODES, error
        assert error["message"] == CATALOG[error["code"]].message, error
        assert set(error) == {"type", "code", "message", "retryable"}, error
    rendered = repr(errors)
    for secret in (internal, api_key, "Incorrect API key", "Rate limit reached", reply_phrase):
        assert secret not in rendered

    output = server.output()
    assert "turn.end" in output and "turn.provider_error" in output  # the log was captured
    for name, secret in {
        "the user's message": phrase,
        "the reply's text": reply_phrase,
        "the API key": api_key,
        "the API key's tail": api_key[-12:],
        "the DRF token": token,
        "the bearer token": bearer,
        "the bearer token's body": f"bearer-secret-{marker}",
    }.items():
        assert secret not in output, f"{name} leaked into the {log_format} log"
