"""The Anthropic adapter against a fake server speaking the real wire format (the real SDK runs)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ai.errors import AIError, AIRateLimited, AIStreamIncomplete, AITimeout, AIUnavailable
from ai.prompts import CLIENT_CONTEXT_LABEL, CLIENT_CONTEXT_RULE
from ai.providers import get_provider
from ai.providers.anthropic import AnthropicProvider, build_anthropic_messages
from ai.providers.base import ChatMessage
from tests.fakes.anthropic_server import AnthropicScript, error_body, rate_limited, wire_text
from tests.fakes.fixtures import FAKE_ANTHROPIC_KEY, collect

pytestmark = pytest.mark.usefixtures("anthropic_settings")

SYSTEM = "You are an assistant for the user's Work context."


def provider() -> AnthropicProvider:
    built = get_provider()
    assert isinstance(built, AnthropicProvider)
    return built


async def test_streams_text_deltas_and_usage(anthropic_server):
    anthropic_server.push(
        AnthropicScript(
            tokens=["Hi", " there", "\n\n\u00e9t\u00e9"], input_tokens=33, output_tokens=9
        )
    )
    result = await collect(provider(), system=SYSTEM)
    assert result.error is None
    assert result.deltas == ["Hi", " there", "\n\n\u00e9t\u00e9"]
    assert result.end is not None and result.end.finish_reason == "stop"
    assert (result.end.usage.input_tokens, result.end.usage.output_tokens) == (33, 9)
    assert result.end.usage.estimated is False


async def test_request_shape_system_param_and_alternation(anthropic_server):
    history = [
        ChatMessage("system", "Prefer short answers."),
        ChatMessage("assistant", "Welcome back!"),
        ChatMessage("user", "First part."),
        ChatMessage("user", "Second part."),
    ]
    await collect(provider(), history, system=SYSTEM, max_output_tokens=77)
    (request,) = anthropic_server.requests
    body = request.body
    assert FAKE_ANTHROPIC_KEY in (
        request.header("x-api-key") or request.header("authorization") or ""
    )
    assert body["model"] == "claude-sonnet-4-6"
    assert body["stream"] is True
    assert body["max_tokens"] == 77
    # A client's system message never joins the system parameter (see test_system_messages).
    assert wire_text(body["system"]) == f"{SYSTEM}\n\n{CLIENT_CONTEXT_RULE}"
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert body["messages"][0]["content"] == f"{CLIENT_CONTEXT_LABEL}\nPrefer short answers."
    assert body["messages"][2]["content"] == "First part.\n\nSecond part."


def test_build_messages_rules():
    system, messages = build_anthropic_messages(
        [
            ChatMessage("user", "a"),
            ChatMessage("user", "   "),
            ChatMessage("system", "extra"),
            ChatMessage("assistant", "b"),
            ChatMessage("assistant", "c"),
            ChatMessage("user", "d"),
        ],
        "base",
    )
    assert system == f"base\n\n{CLIENT_CONTEXT_RULE}"
    assert messages == [
        {"role": "user", "content": f"a\n\n{CLIENT_CONTEXT_LABEL}\nextra"},
        {"role": "assistant", "content": "b\n\nc"},
        {"role": "user", "content": "d"},
    ]


async def test_max_tokens_stop_reason_maps_to_length(anthropic_server):
    anthropic_server.push(AnthropicScript(stop_reason="max_tokens"))
    result = await collect(provider())
    assert result.end is not None and result.end.finish_reason == "length"


async def test_no_message_stop_is_a_cut_stream(anthropic_server):
    anthropic_server.push(AnthropicScript(send_message_stop=False))
    result = await collect(provider())
    assert isinstance(result.error, AIStreamIncomplete)
    assert result.error.retryable is True
    assert result.text == "Hello, world!"
    assert result.end is None


@pytest.mark.parametrize(
    ("error_type", "error_class"),
    [
        ("overloaded_error", AIUnavailable),
        ("rate_limit_error", AIRateLimited),
        ("api_error", AIUnavailable),
        ("invalid_request_error", AIError),
    ],
)
async def test_error_event_in_the_stream(anthropic_server, error_type, error_class):
    anthropic_server.push(
        AnthropicScript(tokens=["a", "b"], error_event_after=1, error_type=error_type)
    )
    result = await collect(provider())
    assert type(result.error) is error_class
    assert result.deltas == ["a"]


async def test_dropped_connection_is_unavailable(anthropic_server):
    anthropic_server.push(AnthropicScript(tokens=["a", "b", "c"], drop_after=2))
    result = await collect(provider())
    assert isinstance(result.error, AIUnavailable)
    assert result.deltas == ["a", "b"]


async def test_malformed_event_is_a_cut_stream(anthropic_server):
    anthropic_server.push(AnthropicScript(tokens=["a", "b"], malformed_after=1))
    result = await collect(provider())
    assert isinstance(result.error, AIStreamIncomplete)
    assert result.deltas == ["a"]


async def test_429_is_rate_limited_with_retry_after(anthropic_server):
    anthropic_server.push(rate_limited(retry_after="5"))
    result = await collect(provider())
    assert isinstance(result.error, AIRateLimited)
    assert result.error.data == {"retry_after": 5}
    assert result.error.detail == AIRateLimited.default_detail


@pytest.mark.parametrize(
    ("status", "error_type", "error_class"),
    [
        (529, "overloaded_error", AIUnavailable),
        (500, "api_error", AIUnavailable),
        (401, "authentication_error", AIError),
        (403, "permission_error", AIError),
        (400, "invalid_request_error", AIError),
    ],
)
async def test_status_errors(anthropic_server, caplog, status, error_type, error_class):
    anthropic_server.push(
        AnthropicScript(status=status, error_body=error_body(error_type, "Secret detail"))
    )
    with caplog.at_level(logging.DEBUG):
        result = await collect(provider())
    assert type(result.error) is error_class
    assert result.error.retryable is (error_class is not AIError)
    assert FAKE_ANTHROPIC_KEY not in caplog.text
    assert "Secret detail" not in caplog.text
    assert any(getattr(r, "status_code", None) == status for r in caplog.records)


async def test_slow_first_byte_times_out(anthropic_server, settings):
    settings.AI_TIMEOUT_SECONDS = 0.3
    anthropic_server.push(AnthropicScript(first_byte_delay=1.0))
    result = await collect(provider())
    assert isinstance(result.error, AITimeout)


async def test_closing_the_generator_closes_the_response(anthropic_server):
    anthropic_server.push(AnthropicScript(tokens=[f" t{i}" for i in range(200)], token_delay=0.02))
    stream = provider().stream_reply(
        messages=[ChatMessage("user", "hi")], system=SYSTEM, max_output_tokens=500
    )
    assert [await anext(stream) for _ in range(2)] == [" t0", " t1"]
    await stream.aclose()
    # The socket closes on the next turn of the loop: wait without blocking it.
    assert await asyncio.to_thread(anthropic_server.disconnected.wait, 3.0)


# --- structured extraction ----------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"flows": {"type": "array", "items": {"type": "string"}}},
    "required": ["flows"],
    "additionalProperties": False,
}


async def test_extraction_forces_the_tool_and_returns_its_input(anthropic_server):
    anthropic_server.push(
        AnthropicScript(tool_input={"flows": ["Book a flight"]}, input_tokens=50, output_tokens=12)
    )
    result = await provider().extract_structured(
        system="Extract tasks.",
        transcript="<transcript>x</transcript>",
        schema=SCHEMA,
        schema_name="flows_extraction",
    )
    assert result.payload == {"flows": ["Book a flight"]}
    assert (result.usage.input_tokens, result.usage.output_tokens) == (50, 12)
    body = anthropic_server.requests[0].body
    assert wire_text(body["system"]) == "Extract tasks."
    assert body["messages"] == [{"role": "user", "content": "<transcript>x</transcript>"}]
    assert body["tools"][0]["name"] == "flows_extraction"
    assert body["tools"][0]["input_schema"] == SCHEMA
    assert body["tool_choice"] == {"type": "tool", "name": "flows_extraction"}
    assert "stream" not in body


async def test_extraction_without_a_tool_call_gives_none(anthropic_server):
    anthropic_server.push(AnthropicScript(text="No tasks here."))
    result = await provider().extract_structured(
        system="s", transcript="t", schema=SCHEMA, schema_name="flows_extraction"
    )
    assert result.payload is None


async def test_extraction_errors_are_mapped(anthropic_server):
    anthropic_server.push(rate_limited())
    with pytest.raises(AIRateLimited):
        await provider().extract_structured(
            system="s", transcript="t", schema=SCHEMA, schema_name="x"
        )


async def test_finished_streams_leave_their_connection_in_the_pool(anthropic_server):
    """Read to the end of the body after ``message_stop``, the connection is reused."""
    built = provider()
    for _ in range(3):
        result = await collect(built, [ChatMessage("user", "Hi")], system="Be brief.")
        assert result.end is not None and result.end.finish_reason == "stop"
    ports = {request.client_port for request in anthropic_server.requests}
    assert len(anthropic_server.requests) == 3 and len(ports) == 1
