"""The OpenAI adapter (also for any OpenAI-compatible server through ``OPENAI_BASE_URL``).

Over 350 lines on purpose: one adapter is one vendor's wire format, its error mapping and
the fallbacks for the compatible servers it meets; split, each piece would need the others.

The SDK (``AsyncOpenAI``) makes the request: auth, retries, timeouts and status errors
(``client.post`` with a plain JSON body, skipping the SDK's costly parameter transform).
The streamed body is then read as raw SSE lines and parsed with ``json.loads``, which is
several times cheaper per chunk than the SDK's typed chunk objects.

Compatible servers differ from the real API; this adapter copes with:

- no usage chunk: usage is estimated from the text (``Usage.estimated``);
- a 400 that refuses ``stream_options``: retried once without it (and remembered);
- no ``data: [DONE]``: fine, if a ``finish_reason`` was seen;
- no ``finish_reason`` at all, a dropped connection or a broken chunk before it: a cut
  stream, raised as :class:`ai.errors.AIStreamIncomplete` (or ``AIUnavailable``), never
  a normal finish;
- ``json_schema`` structured outputs refused: falls back to ``json_object`` with the
  schema described in the prompt, then to plain text parsed as JSON.

The server's system prompt is the first and only ``system`` message; a ``system``
message of the history reaches the model after it as a labelled user message
(:func:`ai.prompts.model_prompt`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import openai

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
    estimate_messages_tokens,
    estimate_tokens,
)

logger = logging.getLogger("ai.providers")

_SDK_ERRORS = SdkErrors(
    timeout=openai.APITimeoutError,
    connection=openai.APIConnectionError,
    status=openai.APIStatusError,
)
_EXTRACTION_MODES = ("json_schema", "json_object", "text")
_EXTRACTION_MAX_TOKENS = 2048
_EXTRACTION_TEMPERATURE = 0.3
_TAIL_GRACE_SECONDS = 2.0
_FENCED_JSON = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def max_tokens_param(base_url: str | None) -> str:
    """The name of the output limit: the official API wants ``max_completion_tokens``
    (``max_tokens`` is deprecated there), compatible servers mostly know ``max_tokens``."""
    if not base_url or urlsplit(base_url).hostname == "api.openai.com":
        return "max_completion_tokens"
    return "max_tokens"


def parse_json_text(text: str | None) -> Any:
    """Parse a model's text as JSON: as is, inside a code fence, or its outermost ``{...}``.

    Returns ``None`` when no JSON can be found.
    """
    if not text:
        return None
    candidates = [text.strip()]
    fenced = _FENCED_JSON.search(text)
    if fenced:
        candidates.append(fenced.group(1).strip())
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    return None


class OpenAIProvider:
    """Streams chat completions and extracts structured JSON through the OpenAI API."""

    name = "openai"

    def __init__(
        self,
        *,
        model: str,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 2,
        http_client: str = AIOHTTP,
    ) -> None:
        self.model = model
        self._api_key = api_key
        self._base_url = base_url or None
        self._timeout = timeout
        self._max_retries = max_retries
        self._max_tokens_param = max_tokens_param(self._base_url)
        self._stream_options_supported = True
        self._extraction_mode = 0
        self._clients = LoopClients(
            lambda: openai.AsyncOpenAI(
                api_key=self._api_key,
                base_url=self._base_url,
                timeout=self._timeout,
                max_retries=self._max_retries,
                http_client=sdk_http_client(openai, http_client),
            )
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self._base_url!r})"

    def _client(self) -> openai.AsyncOpenAI:
        return self._clients.get()

    # --- streaming ---------------------------------------------------------------------

    async def _open_stream(self, params: dict[str, Any]) -> Any:
        """Send the streaming request (the raw response, body unread); on a 400 about
        ``stream_options`` retry without it."""
        client = self._client()
        if self._stream_options_supported:
            try:
                return await post_json(
                    client,
                    "/chat/completions",
                    {**params, "stream_options": {"include_usage": True}},
                    stream=True,
                )
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if "stream_options" not in _error_text(exc):
                    raise
                logger.info("ai.openai.stream_options_refused", extra={"provider": self.name})
                self._stream_options_supported = False
        return await post_json(client, "/chat/completions", params, stream=True)

    async def stream_reply(
        self,
        *,
        messages: Sequence[ChatMessage],
        system: str,
        max_output_tokens: int,
    ) -> AsyncIterator[str | StreamEnd]:
        """Stream a reply: ``str`` deltas, then one :class:`StreamEnd` (see the module doc)."""
        system, history = model_prompt(system, messages)
        params: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                *({"role": m.role, "content": m.content} for m in history),
            ],
            self._max_tokens_param: max_output_tokens,
            "stream": True,
        }
        finish_reason: str | None = None
        usage: Usage | None = None
        parts: list[str] = []
        try:
            response = await self._open_stream(params)
        except Exception as exc:
            raise map_provider_error(exc, provider=self.name, sdk=_SDK_ERRORS) from exc
        events = iter_sse_events(response)
        try:
            loads = json.loads
            async for _event, data in events:
                if data == b"[DONE]":
                    break
                try:
                    chunk = loads(data)
                except ValueError:
                    logger.warning(
                        "ai.openai.malformed_chunk",
                        extra={"provider": self.name, "size": len(data)},
                    )
                    raise AIStreamIncomplete() from None
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    raise _stream_error(chunk["error"], provider=self.name)
                if chunk.get("object") == "error":  # vLLM-style error objects
                    raise _stream_error(chunk, provider=self.name)
                choices = chunk.get("choices")
                if choices:
                    choice = choices[0]
                    delta = choice.get("delta")
                    if delta:
                        content = delta.get("content")
                        if content:
                            parts.append(content)
                            yield content
                    finish_reason = choice.get("finish_reason")
                chunk_usage = chunk.get("usage")
                if chunk_usage:
                    usage = _usage(chunk_usage)
                if finish_reason:
                    # The reply is complete; what may follow is the usage chunk and [DONE].
                    tail_usage = await self._read_tail(events)
                    usage = usage or tail_usage
                    break
        except AIError:
            raise
        except Exception as exc:
            raise map_provider_error(exc, provider=self.name, sdk=_SDK_ERRORS) from exc
        finally:
            # Closing the generator (or any failure) closes the HTTP response at once.
            with contextlib.suppress(Exception):
                await events.aclose()
            with contextlib.suppress(Exception):
                await response.aclose()
        if not finish_reason:
            logger.warning(
                "ai.openai.stream_incomplete", extra={"provider": self.name, "chunks": len(parts)}
            )
            raise AIStreamIncomplete()
        if usage is None:
            usage = Usage(
                input_tokens=estimate_messages_tokens(history, system),
                output_tokens=estimate_tokens("".join(parts)),
                estimated=True,
            )
        yield StreamEnd(
            finish_reason="length" if finish_reason == "length" else "stop", usage=usage
        )

    async def _read_tail(self, events: AsyncIterator[tuple[bytes, bytes]]) -> Usage | None:
        """After the finish reason: read to ``[DONE]`` (for the usage chunk, if any).

        Reading to the end lets the connection go back to the pool. A server that sends
        neither usage nor ``[DONE]`` and keeps the connection open must not hold a finished
        reply, hence a short grace period; a broken tail only loses the usage (estimated).
        """
        usage: Usage | None = None
        try:
            async with asyncio.timeout(_TAIL_GRACE_SECONDS):
                async for _event, data in events:
                    if data == b"[DONE]":
                        await drain(events)
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        break
                    if isinstance(chunk, dict) and chunk.get("usage"):
                        usage = _usage(chunk["usage"])
        except Exception as exc:
            logger.info(
                "ai.openai.stream_tail_lost",
                extra={"provider": self.name, "error_class": type(exc).__name__},
            )
        return usage

    # --- structured extraction ---------------------------------------------------------

    async def extract_structured(
        self,
        *,
        system: str,
        transcript: str,
        schema: dict[str, Any],
        schema_name: str,
    ) -> StructuredResult:
        """One JSON object about ``transcript``: ``json_schema``, else ``json_object``, else text.

        A mode the server refused (400/422) is remembered and skipped next time.
        """
        while True:
            mode = _EXTRACTION_MODES[self._extraction_mode]
            try:
                return await self._extract(
                    mode, system=system, transcript=transcript, schema=schema, name=schema_name
                )
            except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
                if self._extraction_mode + 1 >= len(_EXTRACTION_MODES):
                    raise map_provider_error(exc, provider=self.name, sdk=_SDK_ERRORS) from exc
                logger.info(
                    "ai.openai.response_format_refused",
                    extra={"provider": self.name, "mode": mode, "status_code": exc.status_code},
                )
                self._extraction_mode += 1
            except AIError:
                raise
            except Exception as exc:
                raise map_provider_error(exc, provider=self.name, sdk=_SDK_ERRORS) from exc

    async def _extract(
        self, mode: str, *, system: str, transcript: str, schema: dict[str, Any], name: str
    ) -> StructuredResult:
        if mode != "json_schema":  # the schema goes in the prompt (not built otherwise)
            system = (
                f"{system}\n\nReply with one JSON object only, no prose, matching this JSON "
                f"schema:\n{json.dumps(schema, separators=(',', ':'))}"
            )
        params: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": transcript},
            ],
            "temperature": _EXTRACTION_TEMPERATURE,
            self._max_tokens_param: _EXTRACTION_MAX_TOKENS,
        }
        if mode == "json_schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": True},
            }
        elif mode == "json_object":
            params["response_format"] = {"type": "json_object"}
        raw = await post_json(self._client(), "/chat/completions", params, stream=False)
        body = json.loads(raw.content)
        content: str | None = None
        choices = body.get("choices") if isinstance(body, dict) else None
        if choices and isinstance(choices[0], dict):
            content = (choices[0].get("message") or {}).get("content")
        payload = parse_json_text(content)
        reported = body.get("usage") if isinstance(body, dict) else None
        if isinstance(reported, dict) and reported:
            usage = _usage(reported)
        else:
            usage = Usage(
                input_tokens=estimate_tokens(params["messages"][0]["content"])
                + estimate_tokens(transcript),
                output_tokens=estimate_tokens(content or ""),
                estimated=True,
            )
        return StructuredResult(payload=payload, usage=usage)


def _usage(reported: dict[str, Any]) -> Usage:
    """OpenAI's usage: ``prompt_tokens`` includes ``prompt_tokens_details.cached_tokens``
    (OpenAI caches by itself and never reports cache writes)."""
    details = reported.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return Usage(
        input_tokens=int(reported.get("prompt_tokens") or 0),
        output_tokens=int(reported.get("completion_tokens") or 0),
        cache_read_tokens=int(cached or 0),
    )


def _stream_error(error: Any, *, provider: str) -> AIError:
    """Our error for an ``{"error": {...}}`` chunk inside a stream."""
    kind = None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
    return map_stream_error_event(str(kind or ""), provider=provider)


def _error_text(exc: openai.APIStatusError) -> str:
    """The error's message and body as one string, to look for a parameter's name."""
    try:
        return f"{exc.message} {json.dumps(exc.body, default=str)}"
    except (TypeError, ValueError):
        return str(exc.message)
