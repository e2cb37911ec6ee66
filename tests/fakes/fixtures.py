"""Pytest fixtures and helpers for the fake provider servers (imported by conftest files)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

from ai.errors import AIError
from ai.providers.base import ChatMessage, Provider, StreamEnd
from tests.fakes.anthropic_server import FakeAnthropicServer
from tests.fakes.openai_server import FakeOpenAIServer

FAKE_OPENAI_KEY = "sk-test-fake-openai-key-0000"
FAKE_ANTHROPIC_KEY = "sk-ant-test-fake-anthropic-key-0000"


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    """A fake OpenAI server on a free local port."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[FakeAnthropicServer]:
    """A fake Anthropic server on a free local port."""
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def openai_settings(settings, openai_server):
    """Settings that point the ``openai`` provider at the fake server, without retries."""
    settings.AI_PROVIDER = "openai"
    settings.AI_MODEL = ""
    settings.OPENAI_API_KEY = FAKE_OPENAI_KEY
    settings.OPENAI_BASE_URL = openai_server.base_url
    settings.AI_MAX_RETRIES = 0
    settings.AI_TIMEOUT_SECONDS = 3.0
    return settings


@pytest.fixture
def anthropic_settings(settings, anthropic_server):
    """Settings that point the ``anthropic`` provider at the fake server, without retries."""
    settings.AI_PROVIDER = "anthropic"
    settings.AI_MODEL = ""
    settings.ANTHROPIC_API_KEY = FAKE_ANTHROPIC_KEY
    settings.ANTHROPIC_BASE_URL = anthropic_server.base_url
    settings.AI_MAX_RETRIES = 0
    settings.AI_TIMEOUT_SECONDS = 3.0
    return settings


@dataclass
class Collected:
    """Everything one ``stream_reply`` produced."""

    deltas: list[str] = field(default_factory=list)
    end: StreamEnd | None = None
    error: AIError | None = None
    extra_after_end: int = 0

    @property
    def text(self) -> str:
        return "".join(self.deltas)


async def collect(
    provider: Provider,
    messages: Sequence[ChatMessage] = (ChatMessage("user", "Hello there"),),
    *,
    system: str = "You are an assistant for the user's Work context.",
    max_output_tokens: int = 256,
) -> Collected:
    """Run ``stream_reply`` to its end, keeping the deltas, the end record or the error."""
    result = Collected()
    try:
        async for item in provider.stream_reply(
            messages=messages, system=system, max_output_tokens=max_output_tokens
        ):
            if result.end is not None:
                result.extra_after_end += 1
            if isinstance(item, StreamEnd):
                result.end = item
            else:
                assert isinstance(item, str)
                result.deltas.append(item)
    except AIError as exc:
        result.error = exc
    return result
