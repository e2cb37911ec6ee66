"""The Anthropic adapter (Messages API).

The SDK (``AsyncAnthropic``) makes the request: auth, retries, timeouts and status errors
(``client.post`` with a plain JSON body, skipping the SDK's costly parameter transform).
The streamed body is read as raw SSE events parsed with ``json.loads`` (cheaper than the
SDK's typed events). Text comes from ``content_block_delta`` / ``text_delta`` events,
input tokens from ``message_start``, output tokens and the stop reason from
``message_delta``. A stream that ends without ``message_stop`` is a cut
(:class:`ai.errors.AIStreamIncomplete`); an ``error`` event (e.g. ``overloaded_error``)
becomes the matching error of our family.

Anthropic requires alternating roles starting with ``user`` and takes the system prompt
as a parameter, which holds the server's prompt only: a ``system`` message of the history
reaches the model after it as a labelled user message (:func:`ai.prompts.model_prompt`).
Consecutive messages of the same role are merged, and a history that starts with the
assistant gets a short placeholder user turn first.

Prompt caching (``AI_PROMPT_CACHE``, on by default; see ``docs/api.md``): the request
marks ``cache_control: {"type": "ephemeral"}`` breakpoints, at most
:data:`MAX_CACHE_BREAKPOINTS` as the API allows: the system prompt (sent as one text
block) and the last message before the new user message (its content as one text block),
the prefix the next turn of the conversation repeats byte for byte, so that turn reads it
from the cache. The history the model sees is a window of the last ``CHAT_HISTORY_LIMIT``
messages: when the next turn's window will have dropped this turn's first message, the
prefix will not repeat and is not marked (a cache write costs more than plain input).
The extraction request marks its system prompt (with the tool before it, the stable
part). Nothing else of the body changes; with the setting off, no markers.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anthropic

from ai.errors import AIError, AIStreamIncomplete
from ai.prompts import model_prompt
from ai.providers._clients import AIOHTTP, LoopClients, post_json, sdk_http_client
from ai.providers._errors import SdkErrors, map_provider_error, map_stream_error_event
from ai.providers._sse import drain, iter_sse_events
from ai.providers.base import (
    ChatMessage,
    StreamEnd,
    StructuredResult,
    Usage,
    estimate_tokens,
)

logger = logging.getLogger("ai.providers")

_SDK_ERRORS = SdkErrors(
    timeout=anthropic.APITimeoutError,
    connection=anthropic.APIConnectionError,
    status=anthropic.APIStatusError,
)
_EXTRACTION_MAX_TOKENS = 2048
_EARLIER_OMITTED = "(Earlier messages of this conversation are omitted.)"
# The API accepts at most four cache_control breakpoints in one request.
MAX_CACHE_BREAKPOINTS = 4
_EPHEMERAL = {"type": "ephemeral"}


def cached_text_block(text: str) -> dict[str, Any]:
    """One ``text`` content block marked as a cache breakpoint."""
    return {"type": "text", "text": text, "cache_control": dict(_EPHEMERAL)}


def prefix_repeats(message_count: int, history_limit: int | None) -> bool:
    """Whether the next turn's history still starts with this turn's ``message_count``
    messages: it adds this turn's reply and the next user message, within a window of
    ``history_limit`` messages (``None``: no window)."""
    return history_limit is None or message_count + 2 <= history_limit


def mark_cache_breakpoints(
    system: str, messages: list[dict[str, Any]], *, mark_prefix: bool = True
) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``system`` parameter and ``messages`` with prompt-cache breakpoints.

    The system prompt (when there is one) becomes one marked text block; with
    ``mark_prefix``, the message before the last one (the last message of the history
    before the new user message) gets its content as one marked text block. A one-message
    request marks only the system prompt. ``messages`` is not changed in place.
    """
    marked_system: str | list[dict[str, Any]] = [cached_text_block(system)] if system else ""
    marked = list(messages)
    if mark_prefix and len(marked) >= 2:
        prefix_end = marked[-2]
        content = prefix_end["content"]
        if isinstance(content, str):
            marked[-2] = {**prefix_end, "content": [cached_text_block(content)]}
    return marked_system, marked


def count_cache_breakpoints(body: Any) -> int:
    """How many ``cache_control`` markers a request body holds (anywhere in it)."""
    if isinstance(body, dict):
        return int("cache_control" in body) + sum(count_cache_breakpoints(v) for v in body.values())
    if isinstance(body, list):
        return sum(count_cache_breakpoints(v) for v in body)
    return 0


def build_anthropic_messages(
    messages: Sequence[ChatMessage], system: str
) -> tuple[str, list[dict[str, str]]]:
    """The ``system`` parameter and the alternating ``messages`` list Anthropic accepts.

    ``system`` is the server's prompt (plus, with client context, the rule of
    :func:`ai.prompts.model_prompt`); a ``system`` message of the history becomes a
    labelled user message in place. Empty messages are dropped; consecutive messages of
    one role are joined with a blank line; a leading assistant message gets a placeholder
    user message before it.
    """
    system, history = model_prompt(system, messages)
    merged: list[dict[str, str]] = []
    for message in history:
        if not message.content.strip():
            continue
        if merged and merged[-1]["role"] == message.role:
            merged[-1]["content"] += "\n\n" + message.content
        else:
            merged.append({"role": message.role, "content": message.content})
    if merged and merged[0]["role"] != "user":
        merged.insert(0, {"role": "user", "content": _EARLIER_OMITTED})
    return (system if system.strip() else ""), merged


class AnthropicProvider:
    """Streams replies and extracts structured JSON (through a forced tool) with Claude."""

    name = "anthropic"

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        http_client: str = AIOHTTP,
        prompt_cache: bool = True,
        history_limit: int | None = None,
    ) -> None:
        self.model = model
        self.prompt_cache = prompt_cache
        self.history_limit = history_limit
        self._api_key = api_key
        self._base_url = base_url or None
        self._timeout = timeout
        self._max_retries = max_retries
        self._clients = LoopClients(
            lambda: anthropic.AsyncAnthropic(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=self._timeout,
                max_retries=self._max_retries,
                http_client=sdk_http_client(anthropic, http_client),
            )
        )

    def __repr__(self) -> str:
        return f"AnthropicProvider(model={self.model!r}, base_url={self._base_url!r})"

    def _client(self) -> anthropic.AsyncAnthropic:
        return self._clients.get()

    async def stream_reply(
        self,
        *,
        messages: Sequence[ChatMessage],
        system: str,
        max_output_tokens: int,
    ) -> AsyncIterator[str | StreamEnd]:
        """Stream a reply: ``str`` deltas, then one :class:`StreamEnd` (see the module doc)."""
        system_text, history = build_anthropic_messages(messages, system)
        system_param: str | list[dict[str, Any]] = system_text
        sent: list[dict[str, Any]] = list(history)
        if self.prompt_cache:
            system_param, sent = mark_cache_breakpoints(
                system_text,
                sent,
                mark_prefix=prefix_repeats(len(messages), self.history_limit),
            )
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_output_tokens,
            "messages": sent,
            "stream": True,
        }
        if system_param:
            params["system"] = system_param
        input_tokens = output_tokens = cache_read = cache_write = 0
        stop_reason: str | None = None
        stopped = False
        chunks = 0
        try:
            response = await post_json(self._client(), "/v1/messages", params, stream=True)
        except Exception as exc:
            raise map_provider_error(exc, provider=self.name, sdk=_SDK_ERRORS) from exc
        events = iter_sse_events(response)
        try:
            loads = json.loads
            async for _event, data in events:
                try:
                    event = loads(data)
                except ValueError:
                    logger.warning(
                        "ai.anthropic.malformed_event",
                        extra={"provider": self.name, "size": len(data)},
                    )
                    raise AIStreamIncomplete() from None
                kind = event.get("type") if isinstance(event, dict) else None
                if kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    if delta.get("type") == "text_delta":
                        text = delta.get("text")
                        if text:
                            chunks += 1
                            yield text
                elif kind == "message_start":
                    usage = (event.get("message") or {}).get("usage") or {}
                    input_tokens = _input_tokens(usage)
                    cache_read, cache_write = _cache_tokens(usage)
                    output_tokens = int(usage.get("output_tokens") or 0)
                elif kind == "message_delta":
                    stop_reason = (event.get("delta") or {}).get("stop_reason") or stop_reason
                    usage = event.get("usage") or {}
                    if usage.get("output_tokens") is not None:
                        output_tokens = int(usage["output_tokens"])
                    if usage.get("input_tokens"):
                        input_tokens = _input_tokens(usage)
                        cache_read, cache_write = _cache_tokens(usage)
                elif kind == "message_stop":
                    stopped = True
                    await drain(events)
                    break
                elif kind == "error":
                    error = event.get("error") or {}
                    raise map_stream_error_event(
                        str(error.get("type") or "") if isinstance(error, dict) else "",
                        provider=self.name,
                    )
                # ping, content_block_start/stop and unknown events carry no text.
        except AIError as exc:
            _with_usage(exc, input_tokens, output_tokens, cache_read, cache_write)
            raise
        except Exception as exc:
            error = map_provider_error(exc, provider=self.name, sdk=_SDK_ERRORS)
            raise _with_usage(error, input_tokens, output_tokens, cache_read, cache_write) from exc
        finally:
            # Closing the generator (or any failure) closes the HTTP response at once.
            with contextlib.suppress(Exception):
                await events.aclose()
            with contextlib.suppress(Exception):
                await response.aclose()
        if not stopped:
            logger.warning(
                "ai.anthropic.stream_incomplete", extra={"provider": self.name, "chunks": chunks}
            )
            raise _with_usage(
                AIStreamIncomplete(), input_tokens, output_tokens, cache_read, cache_write
            )
        yield StreamEnd(
            finish_reason="length" if stop_reason == "max_tokens" else "stop",
            usage=Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read,
                cache_write_tokens=cache_write,
            ),
        )

    async def extract_structured(
        self,
        *,
        system: str,
        transcript: str,
        schema: dict[str, Any],
        schema_name: str,
    ) -> StructuredResult:
        """One JSON object about ``transcript``: the input of a tool the model must call."""
        tool_name = _tool_name(schema_name)
        try:
            body_params = {
                "model": self.model,
                "max_tokens": _EXTRACTION_MAX_TOKENS,
                # Tools and system come first in the prompt and repeat on every call.
                "system": [cached_text_block(system)] if self.prompt_cache and system else system,
                "messages": [{"role": "user", "content": transcript}],
                "tools": [
                    {
                        "name": tool_name,
                        "description": "Record the new tasks and the changes to listed tasks.",
                        "input_schema": schema,
                    }
                ],
                "tool_choice": {"type": "tool", "name": tool_name},
            }
            raw = await post_json(self._client(), "/v1/messages", body_params, stream=False)
            body = json.loads(raw.content)
        except Exception as exc:
            raise map_provider_error(exc, provider=self.name, sdk=_SDK_ERRORS) from exc
        payload: Any = None
        blocks = body.get("content") if isinstance(body, dict) else None
        for block in blocks if isinstance(blocks, list) else []:
            if (
                isinstance(block, dict)
                and block.get("type") == "tool_use"
                and block.get("name") == tool_name
            ):
                payload = block.get("input")
                break
        reported = body.get("usage") if isinstance(body, dict) else None
        if isinstance(reported, dict) and reported:
            cache_read, cache_write = _cache_tokens(reported)
            usage = Usage(
                input_tokens=_input_tokens(reported),
                output_tokens=int(reported.get("output_tokens") or 0),
                cache_read_tokens=cache_read,
                cache_write_tokens=cache_write,
            )
        else:
            usage = Usage(
                input_tokens=estimate_tokens(system) + estimate_tokens(transcript),
                output_tokens=estimate_tokens(json.dumps(payload)) if payload else 0,
                estimated=True,
            )
        return StructuredResult(payload=payload, usage=usage)


def _with_usage(
    error: AIError, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> AIError:
    """``error`` carrying what the stream reported before it failed (``message_start``'s
    input tokens), as ``error.usage``: the usage ledger records a failed route's attempt
    (docs/api.md#routing). Nothing reported: unchanged."""
    if input_tokens or output_tokens:
        error.usage = Usage(  # type: ignore[attr-defined]
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read,
            cache_write_tokens=cache_write,
        )
    return error


def _input_tokens(usage: dict[str, Any]) -> int:
    """All input tokens of a usage record, cached ones included (Anthropic's
    ``input_tokens`` counts only the uncached ones: see :class:`ai.providers.base.Usage`)."""
    return (
        int(usage.get("input_tokens") or 0)
        + int(usage.get("cache_creation_input_tokens") or 0)
        + int(usage.get("cache_read_input_tokens") or 0)
    )


def _cache_tokens(usage: dict[str, Any]) -> tuple[int, int]:
    """(cache-read, cache-write) input tokens of a usage record."""
    return (
        int(usage.get("cache_read_input_tokens") or 0),
        int(usage.get("cache_creation_input_tokens") or 0),
    )


def _tool_name(schema_name: str) -> str:
    """A tool name Anthropic accepts (letters, digits, ``_`` and ``-``, at most 64)."""
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in schema_name)
    return cleaned[:64] or "record"
