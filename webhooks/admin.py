"""Admin for webhooks: subscriptions (never their secret), deliveries with their attempts,
and a "retry now" action (docs/operations.md#webhooks)."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from webhooks.addresses import url_refusal
from webhooks.models import Delivery, DeliveryAttempt, Subscription
from webhooks.services import deliveries_retry_now


class SubscriptionForm(forms.ModelForm):
    """The admin's form: the same URL refusals as the API."""

    url = forms.URLField(max_length=2000, assume_scheme="https")

    class Meta:
        model = Subscription
        fields = ["user", "url", "events", "active"]

    def clean_url(self) -> str:
        url = self.cleaned_data["url"]
        refusal = url_refusal(url)
        if refusal:
            raise forms.ValidationError(refusal)
        return url


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    form = SubscriptionForm
    list_display = ["url", "user", "events", "active", "created_at"]
    list_filter = ["active"]
    search_fields = ["url", "user__username", "id"]
    list_select_related = ["user"]
    raw_id_fields = ["user"]
    # The secret is not a form field (editable=False) and not shown anywhere here.
    fields = ["id", "user", "url", "events", "active", "created_at", "updated_at"]
    readonly_fields = ["id", "created_at", "updated_at"]


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    extra = 0
    can_delete = False
    fields = ["number", "started_at", "duration_ms", "status_code", "succeeded", "error"]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "webhook_id",
        "event_type",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = ["status", "event_type"]
    search_fields = ["webhook_id", "=flow_id", "subscription__url", "subscription__user__username"]
    date_hierarchy = "created_at"
    raw_id_fields = ["subscription"]
    inlines = [DeliveryAttemptInline]
    actions = ["retry_now"]
    readonly_fields = [
        "id",
        "webhook_id",
        "subscription",
        "event_type",
        "flow_id",
        "payload",
        "status",
        "attempts",
        "next_attempt_at",
        "locked_until",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    ]
    exclude = ["lease_token"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Retry now", permissions=["change"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        """Pending or given-up deliveries become due now (status pending)."""
        count = deliveries_retry_now(delivery_ids=queryset.values_list("pk", flat=True))
        self.message_user(request, f"{count} deliveries will be sent now.", messages.SUCCESS)
