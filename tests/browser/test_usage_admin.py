"""The admin's usage changelist in Chromium: totals, the cost-by-day chart (server-drawn
SVG) and the CSV export, for a user with usage."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from decimal import Decimal

from ai.models import UsageRecord
from ai.services import usage_record_create
from tests import factories


def test_admin_usage_chart_and_csv(page, server, user, console_errors) -> None:
    factories.make_user("root", is_staff=True, is_superuser=True)
    for day, cost in ((1, "0.25"), (2, "1.5"), (4, "0.75")):
        record = usage_record_create(
            user=user, provider="openai", model="gpt-4o-mini", purpose="reply",
            input_tokens=200, output_tokens=20, cache_read_tokens=50, cache_write_tokens=0,
            estimated=False, tokens_charged=220, outcome="complete", cost=Decimal(cost),
        )  # fmt: skip
        UsageRecord.objects.filter(pk=record.pk).update(
            created_at=datetime(2026, 11, day, 10, tzinfo=UTC)
        )

    # The admin has no favicon: Chromium's request for /favicon.ico is the one 404 allowed
    # (checked below by the console errors' location).
    console_errors.allow("status of 404")
    errors_at: list[str] = []
    page.on("console", lambda m: errors_at.append(m.location["url"]) if m.type == "error" else None)
    page.goto(f"{server.url}/admin/login/?next=/admin/ai/usagerecord/")
    page.fill("#id_username", "root")
    page.fill("#id_password", "pw-root")
    page.click("input[type=submit]")
    page.wait_for_selector("#usage-sums-table")
    cells = page.locator("#usage-sums-table tbody td").all_inner_texts()
    assert cells == ["3", "3", "600", "60", "150", "0", "2.50000000"]

    chart = page.locator("svg#usage-cost-chart")
    box = chart.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 100
    bars = page.locator("svg#usage-cost-chart rect.usage-bar")
    assert bars.count() == 3
    heights = [bars.nth(i).bounding_box()["height"] for i in range(3)]
    assert heights[1] > heights[2] > heights[0] > 0  # 1.5 > 0.75 > 0.25
    assert "2026-11-02: 1.50000000" in bars.nth(1).locator("title").text_content()

    with page.expect_download() as info:
        page.click("#usage-csv")
    download = info.value
    assert download.suggested_filename == "usage.csv"
    rows = list(csv.DictReader(io.StringIO(download.path().read_text())))
    assert [row["cost"] for row in rows] == ["0.75000000", "1.50000000", "0.25000000"]
    assert {row["user"] for row in rows} == {"alice"}
    assert all(url.endswith("/favicon.ico") for url in errors_at), errors_at
