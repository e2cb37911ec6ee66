"""Prompt caching (``AI_PROMPT_CACHE``): the Anthropic adapter's ``cache_control``
breakpoints as they reach the fake server through the real SDK (see docs/api.md#settings)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from ai.prompts import CLIENT_CONTEXT_LABEL
from ai.providers import get_provider
from ai.providers.anthropic import MAX_CACHE_BREAKPOINTS, count_cache_breakpoints
from ai.providers.base import ChatMessage
from tests.fakes.anthropic_server import AnthropicScript, wire_text
from tests.fakes.fixtures import collect

pytestmark = pytest.mark.usefixtures("anthropic_settings")

SYSTEM = "You are an assistant for the user's Work context. " * 40
EPHEMERAL = {"type": "ephemeral"}


def _canonical(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the API renders them for its cache: a string content is one text block,
    and the breakpoint markers themselves are not part of the prompt."""
    rendered = []
    for message in messages:
        content = message["content"]
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        rendered.append(
            {
                "role": message["role"],
                "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in blocks],
            }
        )
    return rendered


def _marked_indexes(body: dict[str, Any]) -> list[int]:
    return [
        index
        for index, message in enumerate(body["messages"])
        if count_cache_breakpoints(message["content"])
    ]


async def test_system_and_history_prefix_are_marked(anthropic_server):
    history = [
        ChatMessage("user", "Plan my week."),
        ChatMessage("assistant", "Here is a plan."),
        ChatMessage("user", "Move Monday to Tuesday."),
        ChatMessage("assistant", "Done."),
        ChatMessage("user", "And Friday?"),
    ]
    result = await collect(get_provider(), history, system=SYSTEM)
    assert result.error is None
    body = anthropic_server.requests[0].body
    # The system prompt: a list of one text block carrying the breakpoint.
    assert body["system"] == [{"type": "text", "text": SYSTEM, "cache_control": EPHEMERAL}]
    # The last message before the new user message: its content as one marked text block.
    assert _marked_indexes(body) == [3]
    assert body["messages"][3] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Done.", "cache_control": EPHEMERAL}],
    }
    # Everything else as before: plain string contents, the new message last and unmarked.
    assert [m["content"] for i, m in enumerate(body["messages"]) if i != 3] == [
        "Plan my week.",
        "Here is a plan.",
        "Move Monday to Tuesday.",
        "And Friday?",
    ]
    assert count_cache_breakpoints(body) == 2 <= MAX_CACHE_BREAKPOINTS


async def test_one_message_conversation_marks_only_the_system_prompt(anthropic_server):
    await collect(get_provider(), [ChatMessage("user", "Hello")], system=SYSTEM)
    body = anthropic_server.requests[0].body
    assert body["system"][0]["cache_control"] == EPHEMERAL
    assert body["messages"] == [{"role": "user", "content": "Hello"}]
    assert count_cache_breakpoints(body) == 1


async def test_the_prefix_is_marked_after_client_context_is_relabelled(anthropic_server):
    history = [
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello!"),
        ChatMessage("system", "Answer in French."),
        ChatMessage("user", "Go"),
    ]
    await collect(get_provider(), history, system=SYSTEM)
    body = anthropic_server.requests[0].body
    # The client's system message became a labelled user message, merged with the new one;
    # the breakpoint sits on the assistant message before it, never on a "system" role.
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert _marked_indexes(body) == [1]
    assert wire_text(body["messages"][2]["content"]).startswith(CLIENT_CONTEXT_LABEL)
    assert count_cache_breakpoints(body) == 2


async def test_no_markers_with_the_setting_off(anthropic_server, settings):
    settings.AI_PROMPT_CACHE = False
    history = [
        ChatMessage("user", "a"),
        ChatMessage("assistant", "b"),
        ChatMessage("user", "c"),
    ]
    await collect(get_provider(), history, system=SYSTEM)
    await get_provider().extract_structured(
        system="Extract tasks.", transcript="x", schema={"type": "object"}, schema_name="flows"
    )
    stream_body, extraction_body = (r.body for r in anthropic_server.requests)
    assert stream_body["system"] == SYSTEM
    assert stream_body["messages"] == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert extraction_body["system"] == "Extract tasks."
    assert count_cache_breakpoints(stream_body) == count_cache_breakpoints(extraction_body) == 0
    assert "cache_control" not in json.dumps([stream_body, extraction_body])


async def test_extraction_marks_its_stable_system_prompt(anthropic_server):
    anthropic_server.push(AnthropicScript(tool_input={"flows": []}))
    await get_provider().extract_structured(
        system="Extract tasks.",
        transcript="<transcript>x</transcript>",
        schema={"type": "object"},
        schema_name="flows",
    )
    body = anthropic_server.requests[0].body
    assert body["system"] == [
        {"type": "text", "text": "Extract tasks.", "cache_control": EPHEMERAL}
    ]
    assert body["messages"] == [{"role": "user", "content": "<transcript>x</transcript>"}]
    assert count_cache_breakpoints(body) == 1


async def test_never_more_than_four_markers_on_long_histories(anthropic_server, settings):
    settings.CHAT_HISTORY_LIMIT = 100
    history = [
        ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i}") for i in range(41)
    ]
    await collect(get_provider(), history, system=SYSTEM)
    body = anthropic_server.requests[0].body
    assert count_cache_breakpoints(body) == 2 <= MAX_CACHE_BREAKPOINTS
    assert _marked_indexes(body) == [39]


async def test_each_turn_repeats_the_previous_turns_prefix_byte_for_byte(anthropic_server):
    """Turn n+1 starts with exactly the prompt turn n marked (so a real cache would hit),
    and its own breakpoint moves to the end of the longer prefix."""
    history = [ChatMessage("user", "Plan my week.")]
    replies = ["Here is a plan.", "Moved.", "Friday is free."]
    follow_ups = ["Move Monday to Tuesday.", "And Friday?"]
    for turn, reply in enumerate(replies):
        anthropic_server.push(AnthropicScript(tokens=[reply]))
        result = await collect(get_provider(), list(history), system=SYSTEM)
        assert result.error is None and "".join(result.deltas) == reply
        history.append(ChatMessage("assistant", reply))
        if turn < len(follow_ups):
            history.append(ChatMessage("user", follow_ups[turn]))
    bodies = [r.body for r in anthropic_server.requests]
    assert len(bodies) == 3
    for earlier, later in itertools.pairwise(bodies):
        assert later["system"] == earlier["system"]
        (cut,) = _marked_indexes(later)
        # The later prompt starts with the whole earlier prompt, and its breakpoint is the
        # earlier turn's reply right after it.
        earlier_prompt = _canonical(earlier["messages"])
        assert cut == len(earlier_prompt)
        later_prefix = _canonical(later["messages"][: len(earlier_prompt)])
        assert json.dumps(later_prefix, sort_keys=True) == json.dumps(
            earlier_prompt, sort_keys=True
        )
        # And the earlier turn's own breakpoint sits inside that shared prefix.
        for index in _marked_indexes(earlier):
            assert index < len(earlier_prompt)


@pytest.mark.parametrize(("count", "marked"), [(7, [5]), (8, [7]), (9, []), (10, [])])
async def test_a_prefix_the_next_window_drops_is_not_marked(
    anthropic_server, settings, count, marked
):
    """With a window of 10 messages, a history of 9 or 10 loses its first message on the
    next turn (two more messages), so only the system prompt is worth a breakpoint."""
    settings.CHAT_HISTORY_LIMIT = 10
    history = [
        ChatMessage("user" if i % 2 == count % 2 else "assistant", f"m{i}")
        for i in range(1, count + 1)
    ]
    await collect(get_provider(), history, system=SYSTEM)
    body = anthropic_server.requests[0].body
    assert body["system"][0]["cache_control"] == EPHEMERAL
    assert _marked_indexes(body) == marked
