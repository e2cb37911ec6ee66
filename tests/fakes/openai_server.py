"""A fake OpenAI server speaking the real wire format of ``/v1/chat/completions``.

Streams are ``data: <chat.completion.chunk JSON>`` events exactly like the API's: a first
chunk with the role, content chunks, a chunk with the finish reason, then (when the
request asked for ``stream_options.include_usage``) a usage chunk with empty ``choices``,
then ``data: [DONE]``. Non-streamed requests get a ``chat.completion`` object. Errors
come with the API's ``{"error": {...}}`` body.

Usage in tests::

    with FakeOpenAIServer() as server:
        server.push(OpenAIScript(tokens=["Hi", "!"], send_usage=False))
        ...  # point the provider at server.base_url
        assert server.requests[0].body["stream_options"] == {"include_usage": True}

Run alone (``python -m tests.fakes.openai_server``) it serves until interrupted.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.sse_server import FakeServer, RecordedRequest, StreamScript, Writer

MODEL = "gpt-4o-mini-2024-07-18"


@dataclass
class OpenAIScript(StreamScript):
    """One response of the fake OpenAI server (a stream or a completion)."""

    finish_reason: str | None = "stop"  # None: the stream never says why it ended
    send_usage: bool = True  # only when the request asked for it, like the API
    send_done: bool = True
    end_delay: float = 0.0  # pause after the finish chunk, before usage/[DONE]/end
    after_done_delay: float = 0.0  # pause after [DONE] before the body ends (held open)
    prompt_tokens: int = 12
    cached_tokens: int = 0  # of prompt_tokens, read from OpenAI's prompt cache
    completion_tokens: int | None = None  # default: the number of tokens
    error_event_after: int | None = None  # an {"error": ...} chunk after this many
    error_event: dict[str, Any] = field(
        default_factory=lambda: {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    )
    content: str | None = '{"flows": []}'  # the message of a non-streamed completion


def error_body(message: str, type_: str, code: str | None = None) -> dict[str, Any]:
    """An error body shaped like the API's."""
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def rate_limited(retry_after: str = "7") -> OpenAIScript:
    """A 429 with ``retry-after`` and the API's error body."""
    return OpenAIScript(
        status=429,
        headers={"retry-after": retry_after, "x-request-id": "req_rate_1"},
        error_body=error_body(
            "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3.",
            "requests",
            "rate_limit_exceeded",
        ),
    )


class FakeOpenAIServer(FakeServer):
    """``/v1/chat/completions`` with configurable scenarios (see :class:`OpenAIScript`)."""

    def __init__(self) -> None:
        super().__init__()
        self.default = OpenAIScript()
        self.refuse_stream_options = False
        self.refuse_response_formats: set[str] = set()

    @property
    def base_url(self) -> str:
        """What ``OPENAI_BASE_URL`` should be."""
        return f"{self.url}/v1"

    def daphne_env(self, api_key: str, **extra: str) -> dict[str, str]:
        """A daphne server's environment with this server as its provider: no retries, a
        5 s timeout, plus ``extra``."""
        return {
            "AI_PROVIDER": "openai",
            "AI_MAX_RETRIES": "0",
            "AI_TIMEOUT_SECONDS": "5",
            "OPENAI_API_KEY": api_key,
            "OPENAI_BASE_URL": self.base_url,
            **extra,
        }

    def handle(self, request: RecordedRequest, writer: Writer) -> None:
        body = request.body if isinstance(request.body, dict) else {}
        if request.path.rstrip("/") != "/v1/chat/completions":
            writer.json(404, error_body("Unknown path", "invalid_request_error"))
            return
        if request.header("authorization") in (None, "Bearer "):
            writer.json(401, error_body("Missing API key", "invalid_request_error"))
            return
        if self.refuse_stream_options and "stream_options" in body:
            writer.json(
                400,
                error_body(
                    "Unrecognized request argument supplied: stream_options",
                    "invalid_request_error",
                ),
            )
            return
        response_format = body.get("response_format") or {}
        if response_format.get("type") in self.refuse_response_formats:
            writer.json(
                400,
                error_body(
                    f"Invalid parameter: 'response_format' of type "
                    f"'{response_format.get('type')}' is not supported with this model.",
                    "invalid_request_error",
                    "invalid_parameter",
                ),
            )
            return
        script: OpenAIScript = self.next_scenario()
        self.pause(script.first_byte_delay)
        if script.status != 200:
            writer.json(script.status, script.error_body or {}, script.headers)
            return
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(script, writer, include_usage=include_usage)
        else:
            self._completion(script, writer)

    def _completion(self, script: OpenAIScript, writer: Writer) -> None:
        content = script.content or ""
        completion_tokens = script.completion_tokens or max(1, len(content) // 4)
        writer.json(
            200,
            {
                "id": "chatcmpl-fake0001",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": content,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": script.finish_reason or "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": script.prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": script.prompt_tokens + completion_tokens,
                    "prompt_tokens_details": {
                        "cached_tokens": script.cached_tokens,
                        "audio_tokens": 0,
                    },
                },
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            },
            {"x-request-id": "req_fake"},
        )

    def _stream(self, script: OpenAIScript, writer: Writer, *, include_usage: bool) -> None:
        created = int(time.time())
        base = {
            "id": "chatcmpl-fake0002",
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        usage_field = {"usage": None} if include_usage else {}

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {**base, "choices": choices, **usage_field, **extra}
            return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"

        def choice(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

        writer.start_stream(script.headers)
        writer.chunk(event([choice({"role": "assistant", "content": "", "refusal": None})]))
        for index, token in enumerate(script.tokens):
            if index == script.drop_after:
                writer.drop()
                return
            if index == script.malformed_after:
                writer.chunk(b'data: {"id": "chatcmpl-fake0002", "choices": [{"ind\n\n')
            if index == script.error_event_after:
                writer.chunk(
                    b"data: " + json.dumps({"error": script.error_event}).encode() + b"\n\n"
                )
                writer.end()
                return
            self.pause(script.token_delay)
            writer.chunk(event([choice({"content": token})]))
        if script.drop_after is not None and script.drop_after >= len(script.tokens):
            writer.drop()
            return
        if script.finish_reason is not None:
            writer.chunk(event([choice({}, script.finish_reason)]))
        self.pause(script.end_delay)
        if include_usage and script.send_usage:
            completion = script.completion_tokens or len(script.tokens)
            usage = {
                "prompt_tokens": script.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": script.prompt_tokens + completion,
                "prompt_tokens_details": {
                    "cached_tokens": script.cached_tokens,
                    "audio_tokens": 0,
                },
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
            writer.chunk(event([], usage=usage))
        if script.send_done:
            writer.chunk(b"data: [DONE]\n\n")
        self.pause(script.after_done_delay)
        writer.end()


if __name__ == "__main__":  # pragma: no cover - manual use
    with FakeOpenAIServer() as server:
        print(f"OPENAI_BASE_URL={server.base_url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
