"""A fake Anthropic server speaking the real wire format of ``/v1/messages``.

Streams are the Messages API's named SSE events with their real JSON shapes:
``message_start`` (input usage), ``content_block_start``, ``ping``,
``content_block_delta`` (``text_delta``), ``content_block_stop``, ``message_delta``
(stop reason and output usage), ``message_stop``; or an ``error`` event. Non-streamed
requests get a ``message`` object, with a ``tool_use`` block when the request forces a
tool. Errors come with the API's ``{"type": "error", "error": {...}}`` body.

Run alone (``python -m tests.fakes.anthropic_server``) it serves until interrupted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from tests.fakes.sse_server import FakeServer, RecordedRequest, StreamScript, Writer

MODEL = "claude-sonnet-4-6"


@dataclass
class AnthropicScript(StreamScript):
    """One response of the fake Anthropic server (a stream or a message)."""

    stop_reason: str = "end_turn"
    send_message_stop: bool = True
    input_tokens: int = 21  # uncached input: Anthropic counts cache tokens apart
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    output_tokens: int | None = None  # default: the number of tokens
    error_event_after: int | None = None  # an ``error`` event after this many text chunks
    error_type: str = "overloaded_error"
    tool_input: Any = None  # a non-streamed reply: the forced tool's input
    text: str | None = None  # a non-streamed reply: a text block instead of a tool call


def error_body(type_: str, message: str) -> dict[str, Any]:
    """An error body shaped like the API's."""
    return {"type": "error", "error": {"type": type_, "message": message}}


def rate_limited(retry_after: str = "5") -> AnthropicScript:
    """A 429 with ``retry-after`` and the API's error body."""
    return AnthropicScript(
        status=429,
        headers={"retry-after": retry_after, "request-id": "req_rate_1"},
        error_body=error_body(
            "rate_limit_error", "Number of requests has exceeded your rate limit"
        ),
    )


def wire_text(value: Any) -> str:
    """The text of a ``system`` parameter or a message's ``content`` as sent: a string, or
    the joined ``text`` of its content blocks (prompt caching sends marked blocks)."""
    if isinstance(value, str):
        return value
    return "".join(block.get("text", "") for block in value or [] if isinstance(block, dict))


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


class FakeAnthropicServer(FakeServer):
    """``/v1/messages`` with configurable scenarios (see :class:`AnthropicScript`)."""

    def __init__(self) -> None:
        super().__init__()
        self.default = AnthropicScript()

    @property
    def base_url(self) -> str:
        """What ``ANTHROPIC_BASE_URL`` should be (the SDK appends ``/v1/messages``)."""
        return self.url

    def handle(self, request: RecordedRequest, writer: Writer) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        if request.path.split("?")[0].rstrip("/") != "/v1/messages":
            writer.json(404, error_body("not_found_error", "Not found"))
            return
        # The SDK sends the key as x-api-key or (newer versions) as a bearer token.
        if not (request.header("x-api-key") or request.header("authorization")):
            writer.json(401, error_body("authentication_error", "invalid x-api-key"))
            return
        script: AnthropicScript = self.next_scenario()
        self.pause(script.first_byte_delay)
        if script.status != 200:
            headers = {"request-id": "req_fake_error", **script.headers}
            writer.json(script.status, script.error_body or {}, headers)
            return
        if body.get("stream"):
            self._stream(script, writer)
        else:
            self._message(script, writer, body)

    def _message(self, script: AnthropicScript, writer: Writer, body: dict[str, Any]) -> None:
        forced = (body.get("tool_choice") or {}).get("name")
        if script.text is not None or not forced:
            content: list[dict[str, Any]] = [{"type": "text", "text": script.text or ""}]
            stop_reason = "end_turn"
        else:
            tool_input = script.tool_input if script.tool_input is not None else {"flows": []}
            content = [
                {"type": "tool_use", "id": "toolu_fake01", "name": forced, "input": tool_input}
            ]
            stop_reason = "tool_use"
        output_tokens = script.output_tokens or max(1, len(json.dumps(content)) // 4)
        writer.json(
            200,
            {
                "id": "msg_fake01",
                "type": "message",
                "role": "assistant",
                "model": MODEL,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": script.input_tokens,
                    "cache_creation_input_tokens": script.cache_creation_input_tokens,
                    "cache_read_input_tokens": script.cache_read_input_tokens,
                    "output_tokens": output_tokens,
                    "service_tier": "standard",
                },
            },
            {"request-id": "req_fake"},
        )

    def _stream(self, script: AnthropicScript, writer: Writer) -> None:
        writer.start_stream({"request-id": "req_fake_stream", **script.headers})
        writer.chunk(
            _sse(
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_fake02",
                        "type": "message",
                        "role": "assistant",
                        "model": MODEL,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {
                            "input_tokens": script.input_tokens,
                            "cache_creation_input_tokens": script.cache_creation_input_tokens,
                            "cache_read_input_tokens": script.cache_read_input_tokens,
                            "output_tokens": 1,
                            "service_tier": "standard",
                        },
                    },
                },
            )
        )
        writer.chunk(
            _sse(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            )
        )
        writer.chunk(_sse("ping", {"type": "ping"}))
        for index, token in enumerate(script.tokens):
            if index == script.drop_after:
                writer.drop()
                return
            if index == script.malformed_after:
                writer.chunk(b'event: content_block_delta\ndata: {"type": "content_blo\n\n')
            if index == script.error_event_after:
                writer.chunk(
                    _sse(
                        "error",
                        {
                            "type": "error",
                            "error": {"type": script.error_type, "message": "Overloaded"},
                        },
                    )
                )
                writer.end()
                return
            self.pause(script.token_delay)
            writer.chunk(
                _sse(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": token},
                    },
                )
            )
        if script.drop_after is not None and script.drop_after >= len(script.tokens):
            writer.drop()
            return
        writer.chunk(_sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
        writer.chunk(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": script.stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": script.output_tokens or len(script.tokens)},
                },
            )
        )
        if script.send_message_stop:
            writer.chunk(_sse("message_stop", {"type": "message_stop"}))
        writer.end()


if __name__ == "__main__":  # pragma: no cover - manual use
    with FakeAnthropicServer() as server:
        print(f"ANTHROPIC_BASE_URL={server.base_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
