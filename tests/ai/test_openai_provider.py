"""The OpenAI adapter against a fake server speaking the real wire format (the real SDK runs)."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest

from ai.errors import AIError, AIRateLimited, AIStreamIncomplete, AITimeout, AIUnavailable
from ai.providers import get_provider
from ai.providers import openai as openai_adapter
from ai.providers.base import ChatMessage, estimate_messages_tokens, estimate_tokens
from ai.providers.openai import OpenAIProvider, max_tokens_param, parse_json_text
from tests.fakes.fixtures import FAKE_OPENAI_KEY, collect
from tests.fakes.openai_server import OpenAIScript, error_body, rate_limited

pytestmark = pytest.mark.usefixtures("openai_settings")

SYSTEM = "You are an assistant for the user's Work context."
HISTORY = [
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello! How can I help?"),
    ChatMessage("user", "Plan my day"),
]


def provider() -> OpenAIProvider:
    built = get_provider()
    assert isinstance(built, OpenAIProvider)
    return built


async def test_streams_deltas_then_usage_from_the_server(openai_server):
    openai_server.push(OpenAIScript(tokens=["Good", " morning", ",\nfriend", " \U0001f44b"]))
    result = await collect(provider(), HISTORY, system=SYSTEM, max_output_tokens=321)
    assert result.error is None
    assert result.deltas == ["Good", " morning", ",\nfriend", " \U0001f44b"]
    assert result.end is not None and result.end.finish_reason == "stop"
    assert (result.end.usage.input_tokens, result.end.usage.output_tokens) == (12, 4)
    assert result.end.usage.estimated is False
    assert result.extra_after_end == 0


async def test_sends_system_first_history_stream_options_and_max_tokens(openai_server):
    await collect(provider(), HISTORY, system=SYSTEM, max_output_tokens=321)
    (request,) = openai_server.requests
    body = request.body
    assert request.header("authorization") == f"Bearer {FAKE_OPENAI_KEY}"
    assert body["model"] == "gpt-4o-mini"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 321
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    assert body["messages"][1:] == [{"role": m.role, "content": m.content} for m in HISTORY]


async def test_ai_model_setting_is_sent(openai_server, settings):
    settings.AI_MODEL = "my-local-model"
    await collect(provider())
    assert openai_server.requests[0].body["model"] == "my-local-model"


async def test_finish_reason_length_maps_to_length(openai_server):
    openai_server.push(OpenAIScript(finish_reason="length"))
    result = await collect(provider())
    assert result.end is not None and result.end.finish_reason == "length"


async def test_other_finish_reasons_map_to_stop(openai_server):
    openai_server.push(OpenAIScript(finish_reason="content_filter"))
    result = await collect(provider())
    assert result.end is not None and result.end.finish_reason == "stop"


async def test_no_usage_chunk_estimates_usage(openai_server):
    openai_server.push(OpenAIScript(tokens=["Twelve chars", " and more text"], send_usage=False))
    result = await collect(provider(), HISTORY, system=SYSTEM)
    usage = result.end.usage
    assert usage.estimated is True
    assert usage.output_tokens == estimate_tokens("Twelve chars and more text")
    assert usage.input_tokens == estimate_messages_tokens(HISTORY, SYSTEM)


async def test_finish_without_done_is_a_normal_finish(openai_server):
    openai_server.push(OpenAIScript(send_done=False))
    result = await collect(provider())
    assert result.error is None
    assert result.text == "Hello, world!"
    assert result.end.usage.estimated is False


@pytest.mark.parametrize("send_done", [False, True])
async def test_no_finish_reason_is_a_cut_stream(openai_server, send_done):
    openai_server.push(OpenAIScript(finish_reason=None, send_usage=False, send_done=send_done))
    result = await collect(provider())
    assert isinstance(result.error, AIStreamIncomplete)
    assert result.error.retryable is True
    assert result.text == "Hello, world!"  # what came before the cut was relayed
    assert result.end is None


async def test_a_server_that_hangs_after_the_finish_does_not_hold_the_reply(
    openai_server, monkeypatch
):
    monkeypatch.setattr(openai_adapter, "_TAIL_GRACE_SECONDS", 0.2)
    openai_server.push(OpenAIScript(send_usage=False, send_done=False, end_delay=2.0))
    started = time.perf_counter()
    result = await collect(provider())
    assert time.perf_counter() - started < 1.5
    assert result.error is None and result.text == "Hello, world!"
    assert result.end.usage.estimated is True


async def test_a_body_held_open_after_done_does_not_hold_the_reply(openai_server):
    """After ``[DONE]`` the rest of the body is read only briefly (to keep the connection
    for the next turn); a server that holds it open costs a new connection, not the wait."""
    openai_server.push(OpenAIScript(after_done_delay=2.0), OpenAIScript())
    built = provider()
    started = time.perf_counter()
    result = await collect(built)
    assert time.perf_counter() - started < 1.0
    assert result.error is None and result.text == "Hello, world!"
    assert result.end.usage.estimated is False
    again = await collect(built)
    assert again.error is None and again.text == "Hello, world!"


async def test_a_stall_mid_stream_times_out(openai_server, settings):
    settings.AI_TIMEOUT_SECONDS = 0.3
    openai_server.push(OpenAIScript(tokens=["a", "b"], token_delay=1.0))
    result = await collect(provider())
    assert isinstance(result.error, AITimeout)
    assert result.deltas == []


async def test_dropped_connection_is_unavailable(openai_server):
    openai_server.push(OpenAIScript(tokens=["a", "b", "c", "d"], drop_after=2))
    result = await collect(provider())
    assert isinstance(result.error, AIUnavailable)
    assert result.error.retryable is True
    assert result.deltas == ["a", "b"]
    assert result.end is None


async def test_malformed_chunk_is_a_cut_stream(openai_server):
    openai_server.push(OpenAIScript(tokens=["a", "b", "c"], malformed_after=1))
    result = await collect(provider())
    assert isinstance(result.error, AIStreamIncomplete)
    assert result.deltas == ["a"]


async def test_error_chunk_in_the_stream(openai_server):
    openai_server.push(OpenAIScript(tokens=["a", "b"], error_event_after=1))
    result = await collect(provider())
    assert isinstance(result.error, AIUnavailable)
    assert result.deltas == ["a"]


async def test_429_is_rate_limited_with_retry_after(openai_server, caplog):
    openai_server.push(rate_limited(retry_after="7"))
    with caplog.at_level(logging.WARNING, logger="ai.providers"):
        result = await collect(provider())
    error = result.error
    assert isinstance(error, AIRateLimited)
    assert error.retryable is True and error.code == "ai_rate_limited"
    assert error.data["retry_after"] == 7
    assert error.headers["Retry-After"] == "7"
    assert error.detail == AIRateLimited.default_detail  # no upstream wording
    record = next(r for r in caplog.records if r.getMessage() == "ai.provider_error")
    assert record.status_code == 429 and record.provider == "openai"


async def test_401_is_a_non_retryable_error_and_never_logs_the_key(openai_server, caplog):
    openai_server.push(
        OpenAIScript(
            status=401,
            error_body=error_body(
                f"Incorrect API key provided: {FAKE_OPENAI_KEY}", "invalid_request_error"
            ),
        )
    )
    with caplog.at_level(logging.DEBUG):
        result = await collect(provider())
    assert type(result.error) is AIError
    assert result.error.retryable is False
    assert result.error.detail == AIError.default_detail
    assert FAKE_OPENAI_KEY not in caplog.text
    assert "Incorrect API key" not in caplog.text
    assert any(getattr(r, "status_code", None) == 401 for r in caplog.records)


@pytest.mark.parametrize(
    ("status", "error_class"), [(500, AIUnavailable), (503, AIUnavailable), (404, AIError)]
)
async def test_status_errors(openai_server, status, error_class):
    openai_server.push(OpenAIScript(status=status, error_body=error_body("boom", "server_error")))
    result = await collect(provider())
    assert type(result.error) is error_class


async def test_slow_first_byte_times_out(openai_server, settings):
    settings.AI_TIMEOUT_SECONDS = 0.3
    openai_server.push(OpenAIScript(first_byte_delay=1.0))
    result = await collect(provider())
    assert isinstance(result.error, AITimeout)
    assert result.error.retryable is True


async def test_sdk_retries_are_used(openai_server, settings):
    settings.AI_MAX_RETRIES = 1
    openai_server.push(
        OpenAIScript(
            status=500,
            error_body=error_body("boom", "server_error"),
            headers={"retry-after-ms": "10"},
        )
    )
    result = await collect(provider())
    assert result.error is None and result.text == "Hello, world!"
    assert len(openai_server.requests) == 2


async def test_stream_options_refused_retries_once_without_and_remembers(openai_server):
    openai_server.refuse_stream_options = True
    built = provider()
    result = await collect(built)
    assert result.error is None and result.text == "Hello, world!"
    assert result.end.usage.estimated is True
    assert ["stream_options" in r.body for r in openai_server.requests] == [True, False]
    await collect(built)
    assert "stream_options" not in openai_server.requests[2].body
    assert len(openai_server.requests) == 3


async def test_other_400_is_not_retried(openai_server):
    openai_server.push(
        OpenAIScript(status=400, error_body=error_body("Bad messages", "invalid_request_error"))
    )
    result = await collect(provider())
    assert type(result.error) is AIError
    assert len(openai_server.requests) == 1


async def test_closing_the_generator_closes_the_response(openai_server):
    openai_server.push(OpenAIScript(tokens=[f" t{i}" for i in range(200)], token_delay=0.02))
    stream = provider().stream_reply(messages=HISTORY, system=SYSTEM, max_output_tokens=500)
    received = [await anext(stream) for _ in range(3)]
    assert received == [" t0", " t1", " t2"]
    await stream.aclose()
    # The socket closes on the next turn of the loop: wait without blocking it.
    assert await asyncio.to_thread(openai_server.disconnected.wait, 3.0)


# --- structured extraction --------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"flows": {"type": "array", "items": {"type": "string"}}},
    "required": ["flows"],
    "additionalProperties": False,
}


async def extract() -> object:
    return await provider().extract_structured(
        system="Extract tasks.",
        transcript="<transcript>...</transcript>",
        schema=SCHEMA,
        schema_name="flows",
    )


async def test_extraction_uses_strict_json_schema(openai_server):
    openai_server.push(
        OpenAIScript(content='{"flows": ["Book a flight"]}', prompt_tokens=40, completion_tokens=9)
    )
    result = await extract()
    assert result.payload == {"flows": ["Book a flight"]}
    assert (result.usage.input_tokens, result.usage.output_tokens, result.usage.estimated) == (
        40,
        9,
        False,
    )
    body = openai_server.requests[0].body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "flows", "schema": SCHEMA, "strict": True},
    }
    assert body["temperature"] == 0.3
    assert "stream" not in body
    assert body["messages"] == [
        {"role": "system", "content": "Extract tasks."},
        {"role": "user", "content": "<transcript>...</transcript>"},
    ]


async def test_extraction_falls_back_to_json_object_then_text(openai_server):
    openai_server.refuse_response_formats = {"json_schema"}
    openai_server.push(OpenAIScript(content='{"flows": ["A"]}'))
    first = await extract()
    assert first.payload == {"flows": ["A"]}
    formats = [r.body.get("response_format") for r in openai_server.requests]
    assert formats == [formats[0], {"type": "json_object"}]
    assert formats[0]["type"] == "json_schema"
    fallback_system = openai_server.requests[1].body["messages"][0]["content"]
    assert (
        "JSON" in fallback_system and json.dumps(SCHEMA, separators=(",", ":")) in fallback_system
    )

    openai_server.refuse_response_formats = {"json_schema", "json_object"}
    openai_server.push(OpenAIScript(content='Sure! ```json\n{"flows": ["B"]}\n```'))
    second = await extract()
    assert second.payload == {"flows": ["B"]}
    assert "response_format" not in openai_server.requests[-1].body
    # The refused modes are remembered: the next call goes straight to plain text.
    count = len(openai_server.requests)
    await extract()
    assert len(openai_server.requests) == count + 1


async def test_extraction_returns_none_for_non_json(openai_server):
    openai_server.push(OpenAIScript(content="I could not find any tasks, sorry."))
    result = await extract()
    assert result.payload is None
    assert result.usage is not None


async def test_extraction_errors_are_mapped(openai_server):
    openai_server.push(OpenAIScript(status=503, error_body=error_body("down", "server_error")))
    with pytest.raises(AIUnavailable):
        await extract()


def test_max_tokens_param():
    assert max_tokens_param(None) == "max_completion_tokens"
    assert max_tokens_param("https://api.openai.com/v1") == "max_completion_tokens"
    assert max_tokens_param("http://127.0.0.1:11434/v1") == "max_tokens"


def test_parse_json_text():
    assert parse_json_text('{"a": 1}') == {"a": 1}
    assert parse_json_text('```json\n{"a": 2}\n```') == {"a": 2}
    assert parse_json_text('Here: {"a": 3} done') == {"a": 3}
    assert parse_json_text("no json") is None
    assert parse_json_text(None) is None


async def test_finished_streams_leave_their_connection_in_the_pool(openai_server):
    """Read to the end of the body, the next turn skips the TCP handshake."""
    built = provider()
    for _ in range(3):
        result = await collect(built, HISTORY, system=SYSTEM, max_output_tokens=50)
        assert result.end is not None and result.end.finish_reason == "stop"
    ports = {request.client_port for request in openai_server.requests}
    assert len(openai_server.requests) == 3 and len(ports) == 1
