"""Our own small provider protocol: text deltas, then one end record with usage.

Adapters (mock, OpenAI, Anthropic) implement :class:`Provider`. Nothing here touches the
ORM, and only the adapter modules import a vendor SDK.

``stream_reply`` is an async generator that yields ``str`` text deltas and, last,
exactly one :class:`StreamEnd`. It raises :class:`ai.errors.AIError` subclasses on
failure, including :class:`ai.errors.AIStreamIncomplete` when the upstream stream ends
without its end marker. Closing the generator (``aclose()``) closes the upstream
connection promptly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol, runtime_checkable

from ai.providers.estimate import estimate_tokens

__all__ = ["estimate_tokens"]  # re-exported: adapters and prompts import it from here

Role = Literal["user", "assistant", "system"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message of the history the model sees."""

    role: Role
    content: str


@dataclass(slots=True)
class Usage:
    """Tokens one call used. ``estimated`` when the provider reported none.

    One meaning for every provider (docs/api.md#usage): ``input_tokens`` is the whole
    prompt, cached parts included; ``cache_read_tokens`` (read from the provider's prompt
    cache) and ``cache_write_tokens`` (written to it) are parts of it, never added to it.
    OpenAI's ``prompt_tokens`` already includes ``prompt_tokens_details.cached_tokens``;
    Anthropic's ``input_tokens`` excludes ``cache_read_input_tokens`` and
    ``cache_creation_input_tokens``, so its adapter adds them. Pricing
    (:mod:`ai.pricing`) bills the uncached rest at the input rate.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    estimated: bool = False
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # What the call cost, in ``currency``: set by :func:`ai.pricing.priced` after the
    # call (providers leave it at zero; a model without a price costs nothing).
    cost: Decimal = Decimal(0)
    currency: str = "USD"

    @property
    def total(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class StreamEnd:
    """The last item of a reply stream: why it ended and what it used."""

    finish_reason: Literal["stop", "length"]
    usage: Usage | None = None


@dataclass(slots=True)
class StructuredResult:
    """The parsed JSON object a structured-output call returned (unvalidated), and usage.

    ``payload`` is whatever the model produced, parsed from JSON, or ``None`` when it was
    not JSON; callers validate it.
    """

    payload: Any
    usage: Usage | None = None


@runtime_checkable
class Provider(Protocol):
    """What the chat turn needs from a model provider."""

    name: str
    model: str

    def stream_reply(
        self,
        *,
        messages: Sequence[ChatMessage],
        system: str,
        max_output_tokens: int,
    ) -> AsyncIterator[str | StreamEnd]:
        """Stream a reply: ``str`` deltas, then one :class:`StreamEnd`."""
        ...

    async def extract_structured(
        self,
        *,
        system: str,
        transcript: str,
        schema: dict[str, Any],
        schema_name: str,
    ) -> StructuredResult:
        """Ask for one JSON object matching ``schema`` about ``transcript`` (data only)."""
        ...


def estimate_messages_tokens(messages: Sequence[ChatMessage], system: str = "") -> int:
    """Estimated input tokens of a prompt: the texts plus a few tokens per message."""
    return estimate_tokens(system) + sum(estimate_tokens(m.content) + 4 for m in messages)
