"""The usage changelist: totals for the filter, the cost-by-day chart and the CSV export."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client

from ai import admin as ai_admin
from ai.models import UsageRecord
from ai.services import usage_record_create
from tests import factories

pytestmark = pytest.mark.django_db

URL = "/admin/ai/usagerecord/"


@pytest.fixture
def admin_client_(db) -> Client:
    admin = factories.make_user("root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(admin)
    return client


def line(user, day: date, **fields) -> UsageRecord:
    values = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "purpose": "reply",
        "input_tokens": 100,
        "output_tokens": 10,
        "cache_read_tokens": 30,
        "cache_write_tokens": 5,
        "estimated": False,
        "tokens_charged": 110,
        "outcome": "complete",
        "cost": Decimal("0.00100000"),
    } | fields
    record = usage_record_create(user=user, **values)
    UsageRecord.objects.filter(pk=record.pk).update(
        created_at=datetime(day.year, day.month, day.day, 9, tzinfo=UTC)
    )
    return record


@pytest.fixture
def ledger(user, other_user) -> None:
    line(user, date(2026, 11, 1))
    line(user, date(2026, 11, 1), purpose="extraction", cost=Decimal("0.00000200"))
    line(user, date(2026, 11, 3), provider="anthropic", model="claude-x", cost=Decimal("0.5"))
    line(other_user, date(2026, 11, 2), input_tokens=7, cost=Decimal("2"))


def test_totals_and_chart_follow_the_filter(admin_client_, ledger) -> None:
    page = admin_client_.get(URL)
    assert page.status_code == 200
    sums = page.context["usage_sums"]
    assert sums["calls"] == 4 and sums["requests"] == 3
    assert sums["input_tokens"] == 307
    assert sums["cache_read_tokens"] == 120 and sums["cache_write_tokens"] == 20
    assert sums["cost"] == Decimal("2.501002")
    html = page.content.decode()
    assert 'id="usage-sums-table"' in html and "2.50100200" in html
    assert html.count('class="usage-bar"') == 3  # three days with usage
    assert "2026-11-01: 0.00100200" in html and "2026-11-03: 0.50000000" in html

    filtered = admin_client_.get(URL, {"q": "alice", "provider": "openai"})
    assert filtered.context["usage_sums"]["calls"] == 2
    assert filtered.context["usage_sums"]["cost"] == Decimal("0.001002")
    assert filtered.content.decode().count('class="usage-bar"') == 1
    assert filtered.context["usage_csv_url"].endswith("?q=alice&provider=openai")


def test_csv_exports_the_filtered_rows(admin_client_, ledger, user) -> None:
    response = admin_client_.get(URL + "csv/", {"q": "alice"})
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 3
    assert {row["user"] for row in rows} == {"alice"}
    newest = rows[0]
    assert newest["created_at"].startswith("2026-11-03")
    assert (newest["provider"], newest["model"], newest["cost"]) == (
        "anthropic",
        "claude-x",
        "0.50000000",
    )
    assert newest["cache_read_tokens"] == "30" and newest["cache_write_tokens"] == "5"
    assert sorted(row["purpose"] for row in rows) == ["extraction", "reply", "reply"]


def test_csv_needs_staff(user, ledger) -> None:
    client = Client()
    client.force_login(user)
    response = client.get(URL + "csv/")
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


def test_no_chart_without_usage(admin_client_) -> None:
    page = admin_client_.get(URL)
    assert page.context["usage_sums"]["calls"] == 0
    assert "usage-cost-chart" not in page.content.decode()


@pytest.mark.django_db(transaction=True)
async def test_csv_under_asgi_streams_page_by_page_from_the_database_pool() -> None:
    """Under ASGI the export is an async iterator reading one keyset page at a time (a sync
    iterator would be read whole before the first byte): every row once, newest first."""

    def setup() -> tuple[object, int]:
        root = factories.make_user("root", is_staff=True, is_superuser=True)
        alice = factories.make_user("alice")
        count = ai_admin.CSV_PAGE_SIZE * 2 + 7
        UsageRecord.objects.bulk_create(
            UsageRecord(
                user=alice,
                provider="openai",
                model="gpt-4o-mini",
                purpose="reply",
                input_tokens=i,
                outcome="complete",
            )
            for i in range(count)
        )
        # Same second for many rows: the keyset must still take each row exactly once.
        UsageRecord.objects.update(created_at=datetime(2026, 11, 1, 9, tzinfo=UTC))
        return root, count

    root, count = await sync_to_async(setup)()
    client = AsyncClient()
    await client.aforce_login(root)
    response = await client.get(URL + "csv/")
    assert response.status_code == 200 and response.is_async
    chunks = [chunk async for chunk in response.streaming_content]
    assert len(chunks) >= 3  # the header, then a chunk per page
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(rows) == count
    assert sorted(int(row["input_tokens"]) for row in rows) == list(range(count))
