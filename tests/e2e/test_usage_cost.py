"""Through a real daphne and the real OpenAI SDK path: a turn whose prompt was partly read
from OpenAI's cache stores and sends the right cost, each kind of token at its own rate,
on the ``done`` event, the stored message (and its replay) and the ledger's two lines."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import httpx

from ai.models import ModelPrice, UsageRecord
from conversations.models import Message
from tests import factories
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript
from tests.sse_client import stream

#: The reply: 2000 prompt tokens of which 1536 cached, 50 out; rates 2 / 0.5 / 10 per
#: million: 464 * 2 + 1536 * 0.5 + 50 * 10 = 2196 millionths. Counting the cached tokens
#: at the input rate too (the double count) would give 5268; ignoring the cache 4500.
REPLY_COST = "0.00219600"
#: The extraction: 1000 prompt tokens, none cached, 10 out: 1000 * 2 + 10 * 10.
EXTRACTION_COST = "0.00210000"


def test_a_turn_with_cached_prompt_tokens_is_priced_by_kind(daphne_factory, transactional_db):
    ModelPrice.objects.create(
        provider="openai",
        model="gpt-4o-mini",
        valid_from=date(2026, 1, 1),
        input_per_mtok=Decimal("2"),
        output_per_mtok=Decimal("10"),
        cache_read_per_mtok=Decimal("0.5"),
        cache_write_per_mtok=Decimal("3"),
        currency="USD",
    )
    with FakeOpenAIServer() as fake:
        fake.push(
            OpenAIScript(tokens=["Hi", "!"], prompt_tokens=2000, cached_tokens=1536,
                         completion_tokens=50),
            OpenAIScript(tokens=['{"flows": []}'], prompt_tokens=1000, completion_tokens=10),
        )  # fmt: skip
        server = daphne_factory(
            # The reply and extraction prices only (titles: tests/e2e/test_steering.py).
            **fake.daphne_env(
                "sk-test-usage-cost", AI_MODEL="gpt-4o-mini", CHAT_TITLES_ENABLED="false"
            )
        )
        alice = factories.make_user("alice")
        token = factories.make_token(alice)
        context = factories.make_context(alice, name="Work")
        result = stream(
            "POST",
            f"{server.url}/api/v1/conversations/stream",
            token=token,
            json_body={
                "context_id": str(context.id),
                "messages": [{"role": "user", "content": "Hello"}],
            },
        )
    assert result.names()[-1] == "done", result.names()
    expected = {
        "input_tokens": 2000,
        "output_tokens": 50,
        "cache_read_tokens": 1536,
        "cache_write_tokens": 0,
        "estimated": False,
        "cost": REPLY_COST,
        "currency": "USD",
    }
    done = result.last().data
    assert done["usage"] == expected

    message = Message.objects.get(pk=done["message_id"])
    assert (message.cache_read_tokens, message.cost, message.currency) == (
        1536,
        Decimal(REPLY_COST),
        "USD",
    )
    detail = httpx.get(
        f"{server.url}/api/v1/messages/{message.id}/",
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert detail.status_code == 200 and detail.json()["usage"] == expected
    replay = stream("GET", f"{server.url}/api/v1/messages/{message.id}/stream", token=token)
    assert replay.last().event == "done" and replay.last().data["usage"] == expected

    lines = {r.purpose: r for r in UsageRecord.objects.filter(message=message)}
    assert set(lines) == {"reply", "extraction"}
    reply, extraction = lines["reply"], lines["extraction"]
    assert (reply.input_tokens, reply.cache_read_tokens, reply.cache_write_tokens) == (
        2000,
        1536,
        0,
    )
    assert (reply.cost, reply.currency) == (Decimal(REPLY_COST), "USD")
    assert (extraction.input_tokens, extraction.cache_read_tokens) == (1000, 0)
    assert extraction.cost == Decimal(EXTRACTION_COST)
