"""Budgets in money through a real daphne and the real OpenAI SDK path (docs/api.md#quota):
a priced turn is charged its real cost (the reply's and the extraction's), shown in the
``metadata`` and ``done`` events' quota and ``GET /api/v1/quota/``; the next turn, whose
worst case no longer fits the cost limit, is refused 429 before any byte, naming ``cost``."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import httpx
from django.db.models import Sum

from ai.models import ModelPrice, Quota, UsageRecord
from ai.quota.services import quota_get_or_create
from conversations.models import Message
from tests import factories
from tests.fakes.openai_server import FakeOpenAIServer, OpenAIScript
from tests.sse_client import stream

#: 464 uncached * 2 + 1536 cached * 0.5 + 50 out * 10 millionths (the reply), plus
#: 1000 in * 2 + 10 out * 10 (the extraction).
TURN_COST = Decimal("0.00219600") + Decimal("0.00210000")


def test_a_priced_turn_is_charged_its_cost_and_the_next_is_refused_naming_cost(
    daphne_factory, transactional_db
):
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
    alice = factories.make_user("alice")
    token = factories.make_token(alice)
    context = factories.make_context(alice, name="Work")
    quota = quota_get_or_create(user=alice)
    Quota.objects.filter(pk=quota.pk).update(cost_limit=Decimal("1"))
    body = {"context_id": str(context.id), "messages": [{"role": "user", "content": "Hello"}]}
    with FakeOpenAIServer() as fake:
        fake.push(
            OpenAIScript(tokens=["Hi", "!"], prompt_tokens=2000, cached_tokens=1536,
                         completion_tokens=50),
            OpenAIScript(tokens=['{"flows": []}'], prompt_tokens=1000, completion_tokens=10),
        )  # fmt: skip
        server = daphne_factory(
            # The reply and extraction prices only (titles: tests/e2e/test_steering.py).
            **fake.daphne_env(
                "sk-test-quota-cost",
                AI_MODEL="gpt-4o-mini",
                CHAT_TITLES_ENABLED="false",
                AI_MAX_OUTPUT_TOKENS="1000",
            )
        )
        result = stream(
            "POST", f"{server.url}/api/v1/conversations/stream", token=token, json_body=body
        )
        assert result.names()[-1] == "done", result.names()
        metadata = result.first("metadata").data
        # At the start the turn's worst case is held: at least 1000 output tokens at 10/MTok.
        assert metadata["quota"]["cost_limit"] == "1.00000000"
        assert Decimal(metadata["quota"]["cost_remaining"]) <= Decimal("0.99")
        done = result.last().data
        assert done["quota"]["cost_used"] == str(TURN_COST)
        assert done["quota"]["cost_remaining"] == str(Decimal(1) - TURN_COST)
        quota.refresh_from_db()
        assert (quota.cost_used, quota.cost_reserved) == (TURN_COST, Decimal(0))
        ledger = UsageRecord.objects.filter(user=alice).aggregate(total=Sum("cost"))["total"]
        assert quota.cost_used == ledger
        shown = httpx.get(
            f"{server.url}/api/v1/quota/", headers={"Authorization": f"Token {token}"}, timeout=10
        ).json()
        assert (shown["cost_used"], shown["cost_limit"]) == (str(TURN_COST), "1.00000000")

        # Room for less than the next turn's worst case: refused before any byte.
        Quota.objects.filter(pk=quota.pk).update(cost_limit=TURN_COST + Decimal("0.005"))
        messages = Message.objects.count()
        refused = httpx.post(
            f"{server.url}/api/v1/conversations/stream",
            headers={"Authorization": f"Token {token}", "Accept": "text/event-stream"},
            json=body,
            timeout=10,
        )
        assert refused.status_code == 429
        error = refused.json()
        assert (error["code"], error["limit"]) == ("quota_exceeded", "cost")
        assert error["quota"]["cost_remaining"] == "0.00500000"
        assert int(refused.headers["retry-after"]) >= 1
        assert Message.objects.count() == messages
        assert len(fake.requests) == 2  # the first turn's two calls, nothing more
