"""/metrics counts the cost and cache tokens of each stored ledger line, once."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import transaction

from ai.services import usage_record_build, usage_record_create, usage_records_create

pytestmark = pytest.mark.django_db(transaction=True)


def sample(text: str, name: str, labels: str) -> float:
    match = re.search("^" + re.escape(name + "{" + labels + "}") + r" ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def scrape(client, settings) -> dict[str, float]:
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]
    text = client.get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    return {
        "cost": sample(
            text, "chat_cost_total", 'currency="USD",model="gpt-metric",provider="openai"'
        ),
        "read": sample(
            text, "chat_cache_tokens_total", 'kind="read",model="gpt-metric",provider="openai"'
        ),
        "write": sample(
            text, "chat_cache_tokens_total", 'kind="write",model="gpt-metric",provider="openai"'
        ),
    }


def build(user, **fields):
    values = {
        "provider": "openai",
        "model": "gpt-metric",
        "purpose": "reply",
        "input_tokens": 1000,
        "output_tokens": 50,
        "cache_read_tokens": 600,
        "cache_write_tokens": 100,
        "estimated": False,
        "tokens_charged": 1050,
        "outcome": "complete",
        "cost": Decimal("0.00125000"),
    } | fields
    return usage_record_build(user=user, **values)


def test_each_stored_line_counted_once(client, settings, user) -> None:
    before = scrape(client, settings)
    with transaction.atomic():
        usage_records_create(
            [
                build(user),
                build(
                    user,
                    purpose="extraction",
                    cache_read_tokens=0,
                    cache_write_tokens=0,
                    cost=Decimal("0.00000500"),
                ),
            ]
        )
        assert scrape(client, settings) == before  # not before the commit
    after = scrape(client, settings)
    assert after["cost"] - before["cost"] == pytest.approx(0.001255)
    assert after["read"] - before["read"] == 600
    assert after["write"] - before["write"] == 100
    usage_record_create(
        user=user,
        provider="openai",
        model="gpt-metric",
        purpose="reply",
        input_tokens=10,
        output_tokens=1,
        cache_read_tokens=4,
        estimated=False,
        tokens_charged=11,
        outcome="complete",
        cost=Decimal("0.00000100"),
    )
    last = scrape(client, settings)
    assert last["read"] - after["read"] == 4
    assert last["cost"] - after["cost"] == pytest.approx(0.000001)


def test_rolled_back_lines_are_not_counted(client, settings, user) -> None:
    before = scrape(client, settings)
    with pytest.raises(RuntimeError), transaction.atomic():
        usage_records_create([build(user)])
        raise RuntimeError("rolled back")
    assert scrape(client, settings) == before
