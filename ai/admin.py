"""Admin for quota (limits per user, reset action), reservations, the usage ledger, the
models' prices (with the models in use that have none) and the routes' circuit breakers
(a read-only page under the prices, with a "close breaker" button)."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

from django.contrib import admin, messages
from django.core.handlers.asgi import ASGIRequest
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from ai.breaker import breaker_close, breaker_states
from ai.charts import cost_by_day_svg
from ai.models import ModelPrice, Quota, Reservation, UsageRecord
from ai.pricing import FREE_PROVIDERS, price_for, unpriced_models
from ai.quota.resets import quota_reset, quota_set_limits
from ai.quota.services import quota_get_or_create, quota_release
from ai.routing import allowed_routes, configured_routes, system_route
from ai.selectors import usage_cost_by_day, usage_totals, usage_totals_by_user_and_day
from core.db import db_run


class ReadOnlyAdmin(admin.ModelAdmin):
    """Listing and detail only: these rows are written by services, never by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    """Per-user limits. Counters are changed only by the services (and the reset action);
    saving writes only the period and the limits, so replies in flight are never lost."""

    list_display = (
        "user",
        "period",
        "requests",
        "tokens",
        "cost",
        "requests_reserved",
        "tokens_reserved",
        "resets_at",
    )
    list_filter = ("period",)
    search_fields = ("user__username",)
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    readonly_fields = (
        "requests_used",
        "tokens_used",
        "requests_reserved",
        "tokens_reserved",
        "cost_used",
        "cost_reserved",
        "period_started_at",
        "resets_at",
        "updated_at",
    )
    actions = ("reset_selected",)

    @admin.display(description="requests used / limit")
    def requests(self, obj: Quota) -> str:
        return f"{obj.requests_used} / {obj.requests_limit}"

    @admin.display(description="tokens used / limit")
    def tokens(self, obj: Quota) -> str:
        return f"{obj.tokens_used} / {obj.tokens_limit}"

    @admin.display(description="cost used / limit")
    def cost(self, obj: Quota) -> str:
        return f"{obj.cost_used} / {obj.cost_limit if obj.cost_limit is not None else '-'}"

    def get_readonly_fields(self, request: HttpRequest, obj: Quota | None = None) -> Any:
        if obj is not None:
            return ("user", *self.readonly_fields)
        return self.readonly_fields

    def save_model(self, request: HttpRequest, obj: Quota, form: Any, change: bool) -> None:
        quota = obj if change else quota_get_or_create(user=obj.user)
        quota_set_limits(
            quota=quota,
            period=form.cleaned_data["period"],
            requests_limit=form.cleaned_data["requests_limit"],
            tokens_limit=form.cleaned_data["tokens_limit"],
            cost_limit=form.cleaned_data.get("cost_limit"),
        )
        if not change:
            obj.pk = quota.pk
            obj.refresh_from_db()

    @admin.action(description="Reset the selected users' quota", permissions=["change"])
    def reset_selected(self, request: HttpRequest, queryset: QuerySet[Quota]) -> None:
        users = [quota.user for quota in queryset.select_related("user")]
        results = quota_reset(users=users)
        self.message_user(
            request,
            f"Reset the quota of {len(results)} user(s); replies in flight keep their "
            "reservations.",
            messages.SUCCESS,
        )


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    """Quota holds of replies, from reserve to settle or release."""

    list_display = (
        "id",
        "user",
        "message",
        "status",
        "tokens",
        "requests_charged",
        "tokens_charged",
        "created_at",
        "closed_at",
    )
    list_filter = ("status", "created_at")
    search_fields = ("user__username", "id")
    list_select_related = ("user", "message")
    date_hierarchy = "created_at"
    actions = ("release_selected",)

    def has_release_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("ai.change_quota")

    @admin.action(
        description="Release the selected held reservations (charge nothing)",
        permissions=["release"],
    )
    def release_selected(self, request: HttpRequest, queryset: QuerySet[Reservation]) -> None:
        held = queryset.filter(status=Reservation.Status.HELD).values_list("pk", flat=True)
        released = sum(quota_release(reservation_id=pk) for pk in list(held))
        self.message_user(request, f"Released {released} reservation(s).", messages.SUCCESS)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """The usage ledger. Above the list, for the records the filters select: their totals
    (tokens by kind, cost), a chart of cost by day and a CSV export; below it, totals per
    user and day."""

    list_display = (
        "created_at",
        "user",
        "purpose",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "estimated",
        "cost",
        "currency",
        "priced",
        "tokens_charged",
        "outcome",
        "error_code",
        "duration_ms",
    )
    list_filter = ("purpose", "outcome", "provider", "estimated")
    search_fields = ("user__username",)
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    raw_id_fields = ("user", "context", "conversation", "message")

    @admin.display(boolean=True, description="priced")
    def priced(self, obj: UsageRecord) -> bool:
        """Whether the call's model had a price that day (no: its cost is 0)."""
        if obj.provider in FREE_PROVIDERS:
            return True
        return price_for(obj.provider, obj.model, obj.created_at) is not None

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context is not None and "cl" in context:
            # Totals follow the changelist's filters, search and date drill-down.
            records = context["cl"].queryset
            context["usage_totals"] = usage_totals_by_user_and_day(queryset=records)
            context["usage_sums"] = usage_totals(records)
            context["usage_chart"] = cost_by_day_svg(usage_cost_by_day(records))
            query = request.GET.urlencode()
            context["usage_csv_url"] = reverse("admin:ai_usagerecord_csv") + (
                f"?{query}" if query else ""
            )
        return response

    def get_urls(self) -> list[URLPattern]:
        csv_view = self.admin_site.admin_view(self.csv_view)
        return [path("csv/", csv_view, name="ai_usagerecord_csv"), *super().get_urls()]

    def csv_view(self, request: HttpRequest) -> HttpResponse:
        """The records the changelist's filters (the same query string) select, as CSV,
        streamed row by row."""
        if not self.has_view_permission(request):
            return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
        records = self.get_changelist_instance(request).queryset.select_related("user")
        # Under daphne a sync iterator would be read whole into memory before the first
        # byte (Django's ASGI handler): there the rows come a page at a time from the
        # database pool instead.
        lines = (
            _csv_pages(records)
            if isinstance(request, ASGIRequest)
            else _csv_lines(records.order_by("-created_at", "-id"))
        )
        response = StreamingHttpResponse(lines, content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response


#: The CSV export's columns: ledger fields (``user`` is the username).
CSV_COLUMNS = (
    "created_at",
    "user",
    "purpose",
    "outcome",
    "provider",
    "model",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "estimated",
    "cost",
    "currency",
    "tokens_charged",
    "conversation_id",
    "message_id",
    "error_code",
    "duration_ms",
)


class _Echo:
    """A file-like object whose ``write`` hands the line back, for streaming csv.writer."""

    def write(self, value: str) -> str:
        return value


#: Records per page of the CSV export under ASGI.
CSV_PAGE_SIZE = 1000


def _csv_page(
    records: QuerySet[UsageRecord], after: tuple[datetime, int] | None
) -> tuple[str, tuple[datetime, int] | None]:
    """The CSV lines of the page of ``records`` after the keyset ``after`` (newest first),
    and the next page's keyset (``None``: this was the last)."""
    if after is not None:
        created_at, pk = after
        records = records.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=pk))
    page = list(records.order_by("-created_at", "-id")[:CSV_PAGE_SIZE])
    writer = csv.writer(_Echo())
    text = "".join(writer.writerow(_csv_row(record)) for record in page)
    last = page[-1] if len(page) == CSV_PAGE_SIZE else None
    return text, (last.created_at, last.pk) if last is not None else None


async def _csv_pages(records: QuerySet[UsageRecord]) -> AsyncIterator[str]:
    """The header, then the records' lines a page at a time, each page read on the
    database pool (keyset pagination: no cursor held across pages)."""
    yield csv.writer(_Echo()).writerow(CSV_COLUMNS)
    after: tuple[datetime, int] | None = None
    while True:
        text, after = await db_run(_csv_page, records, after)
        if text:
            yield text
        if after is None:
            return


def _csv_lines(records: QuerySet[UsageRecord]) -> Iterator[str]:
    """The header, then one CSV line per record, read from the database in chunks."""
    writer = csv.writer(_Echo())
    yield writer.writerow(CSV_COLUMNS)
    for record in records.iterator(chunk_size=2000):
        yield writer.writerow(_csv_row(record))


def _csv_row(record: UsageRecord) -> list[Any]:
    """One record's CSV fields, in :data:`CSV_COLUMNS` order."""
    return [
        record.created_at.isoformat(),
        record.user.get_username(),
        record.purpose,
        record.outcome,
        record.provider,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.cache_read_tokens,
        record.cache_write_tokens,
        record.estimated,
        f"{record.cost:.8f}",
        record.currency,
        record.tokens_charged,
        record.conversation_id or "",
        record.message_id or "",
        record.error_code,
        record.duration_ms,
    ]


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """List prices per million tokens, by provider, model and the day they start. The
    changelist warns about models in the usage ledger that have no price (they cost 0)."""

    list_display = (
        "provider",
        "model",
        "valid_from",
        "input_per_mtok",
        "cache_read_per_mtok",
        "cache_write_per_mtok",
        "output_per_mtok",
        "currency",
    )
    list_filter = ("provider", "currency")
    search_fields = ("model",)
    date_hierarchy = "valid_from"

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        missing = unpriced_models()
        if missing and request.method == "GET":
            names = ", ".join(f"{provider}/{model}" for provider, model in missing)
            self.message_user(
                request,
                f"Models in the usage ledger without a price (their calls cost 0): {names}. "
                "Add a price for each.",
                messages.WARNING,
            )
        extra = {**(extra_context or {}), "unpriced_models": missing}
        return super().changelist_view(request, extra)

    def get_urls(self) -> list[URLPattern]:
        routes = self.admin_site.admin_view(self.routes_view)
        return [path("routes/", routes, name="ai_routes"), *super().get_urls()]

    def routes_view(self, request: HttpRequest) -> HttpResponse:
        """The routes (docs/api.md#routing): order, breaker state, failures in a row, when
        it opened; POST ``close`` (with the change permission on prices) closes one."""
        if not self.has_view_permission(request):
            return HttpResponse(status=403)
        routes = configured_routes()
        extra = [r for r in [*allowed_routes(), system_route()] if r not in routes]
        everything = [*routes, *dict.fromkeys(extra)]
        names = [route.name for route in everything]
        can_close = self.has_change_permission(request)
        if request.method == "POST":
            name = request.POST.get("close", "")
            if can_close and name in names:
                breaker_close(name)
                self.message_user(request, f"The breaker of {name} is closed.", messages.SUCCESS)
            return HttpResponseRedirect(request.path)
        system = system_route()
        rows = [
            {
                "name": route.name,
                "position": routes.index(route) + 1 if route in routes else None,
                "system": route == system,
                "allowed": route in allowed_routes(),
                "state": state.state.replace("_", "-"),
                "failures": state.failures,
                "opened_at": _when(state.opened_at),
                "retry_in": int(state.retry_in),
            }
            for route, state in zip(everything, breaker_states(names), strict=True)
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Routes",
            "rows": rows,
            "can_close": can_close,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/ai/routes.html", context)


def _when(timestamp: float | None) -> Any:
    """A Unix time as an aware datetime (``None`` stays ``None``)."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC)
