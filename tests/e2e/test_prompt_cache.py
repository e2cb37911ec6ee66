"""Through a real daphne: each turn of a conversation sends the fake Anthropic server the
previous turn's prompt unchanged, with the cache breakpoint at its end (so a real prompt
cache would hit), and the system prompt as a marked text block (docs/api.md#settings)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from ai.prompts import system_prompt_for
from tests import factories
from tests.fakes.anthropic_server import AnthropicScript, FakeAnthropicServer
from tests.sse_client import stream

EPHEMERAL = {"type": "ephemeral"}


def _rendered(messages: list[dict[str, Any]]) -> str:
    """The messages as the API renders them for its cache: a string content is one text
    block, and the markers themselves are not part of the prompt."""
    blocks = []
    for message in messages:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        clean = [{k: v for k, v in part.items() if k != "cache_control"} for part in parts]
        blocks.append({"role": message["role"], "content": clean})
    return json.dumps(blocks, sort_keys=True, ensure_ascii=False)


def _marked(messages: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(messages) if not isinstance(m["content"], str)]


@pytest.mark.parametrize("cache", ["true", "false"])
def test_each_turn_repeats_the_previous_prompt_with_the_breakpoint_after_it(
    daphne_factory, transactional_db, cache
):
    with FakeAnthropicServer() as fake:
        server = daphne_factory(
            AI_PROVIDER="anthropic",
            AI_MAX_RETRIES="0",
            AI_TIMEOUT_SECONDS="5",
            AI_PROMPT_CACHE=cache,
            FLOWS_EXTRACTION_ENABLED="false",
            ANTHROPIC_API_KEY="sk-test-prompt-cache",
            ANTHROPIC_BASE_URL=fake.base_url,
        )
        alice = factories.make_user("alice")
        token = factories.make_token(alice)
        context = factories.make_context(alice, name="Work")
        replies = ["Here is a plan.", "Moved it.", "Friday is free."]
        conversation_id = None
        for number, reply in enumerate(replies, start=1):
            fake.push(AnthropicScript(tokens=[reply]))
            question = f"Question {number}"
            body: dict[str, Any] = (
                {"context_id": str(context.id), "messages": [{"role": "user", "content": question}]}
                if conversation_id is None
                else {"conversation_id": conversation_id, "message": question}
            )
            result = stream(
                "POST", f"{server.url}/api/v1/conversations/stream", token=token, json_body=body
            )
            assert result.names()[-1] == "done", result.names()
            conversation_id = result.first("metadata").data["conversation_id"]
        bodies = [r.body for r in fake.requests if r.body.get("stream")]

    assert len(bodies) == 3
    server_prompt = system_prompt_for(context_name="Work", instructions="")
    if cache == "false":
        assert "cache_control" not in json.dumps(bodies)
        assert all(isinstance(b["system"], str) for b in bodies)
        return
    for body in bodies:
        assert body["system"] == [
            {"type": "text", "text": server_prompt, "cache_control": EPHEMERAL}
        ]
    assert _marked(bodies[0]["messages"]) == []  # one message: only the system prompt
    for earlier, later in itertools.pairwise(bodies):
        size = len(earlier["messages"])
        # The later prompt starts with the earlier one, byte for byte once rendered, and
        # its breakpoint is the earlier turn's reply right after it.
        assert _rendered(later["messages"][:size]) == _rendered(earlier["messages"])
        assert _marked(later["messages"]) == [size]
        assert later["messages"][size]["role"] == "assistant"
        assert later["messages"][size]["content"][0]["cache_control"] == EPHEMERAL
