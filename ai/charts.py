"""Server-drawn SVG charts for the admin (no script, no chart library: plain markup that
any Content-Security-Policy allows)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

WIDTH, HEIGHT = 720, 200
#: Room under the bars for the first and last day's labels, and left for the maximum.
BOTTOM, LEFT = 20, 90
#: The most days drawn (the latest ones).
MAX_DAYS = 366


def cost_by_day_svg(days: list[tuple[date, Decimal]], *, currency: str = "") -> SafeString:
    """A bar chart of cost per day (``(day, cost)``, oldest first; days without usage are
    gaps between bars), as inline SVG. Each bar's ``<title>`` says its day and cost. An
    empty string when there are no days."""
    days = days[-MAX_DAYS:]
    if not days:
        return SafeString("")
    first, last = days[0][0], days[-1][0]
    span = (last - first).days + 1
    top = max(cost for _, cost in days) or Decimal(1)
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM
    slot = plot_w / span
    bar_w = max(slot * 0.8, 1.0)
    bars = []
    for day, cost in days:
        h = float(cost / top) * (plot_h - 10)
        x = LEFT + (day - first).days * slot
        bars.append(
            (
                f"{x:.1f}",
                f"{plot_h - h:.1f}",
                f"{bar_w:.1f}",
                f"{h:.1f}",
                f"{day:%Y-%m-%d}: {cost:.8f}",
            )
        )
    rects = format_html_join(
        "",
        '<rect class="usage-bar" x="{}" y="{}" width="{}" height="{}" fill="#417690">'
        "<title>{}</title></rect>",
        bars,
    )
    return format_html(
        '<svg id="usage-cost-chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        'width="{w}" height="{h}" viewBox="0 0 {w} {h}" aria-label="Cost by day (UTC)">'
        '<line x1="{left}" y1="{base}" x2="{w}" y2="{base}" stroke="#888"></line>'
        '<text x="0" y="12" font-size="11" fill="currentColor">{top} {currency}</text>'
        '<text x="0" y="{base}" font-size="11" fill="currentColor">0</text>'
        "{rects}"
        '<text x="{left}" y="{label_y}" font-size="11" fill="currentColor">{first}</text>'
        '<text x="{w}" y="{label_y}" font-size="11" text-anchor="end" '
        'fill="currentColor">{last}</text></svg>',
        w=WIDTH,
        h=HEIGHT,
        left=LEFT,
        base=plot_h,
        label_y=HEIGHT - 4,
        top=f"{top:.8f}",
        currency=currency,
        rects=rects,
        first=f"{first:%Y-%m-%d}",
        last=f"{last:%Y-%m-%d}",
    )
