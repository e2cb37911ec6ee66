"""Admin for flows."""

from django.contrib import admin
from django.http import HttpRequest

from flows.models import Flow, FlowEvent


class FlowEventInline(admin.TabularInline):
    """A flow's history, read-only (docs/api.md#flow-history)."""

    model = FlowEvent
    fields = ["created_at", "kind", "actor", "source_message", "changes"]
    readonly_fields = fields
    ordering = ["created_at", "id"]
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Flow)
class FlowAdmin(admin.ModelAdmin):
    list_display = ["title", "user", "context", "priority", "due_date", "status", "created_at"]
    list_filter = ["status", "priority", "reminder_enabled"]
    search_fields = ["title", "user__username", "id"]
    list_select_related = ["user", "context"]
    date_hierarchy = "created_at"
    raw_id_fields = ["user", "context", "conversation", "source_message"]
    readonly_fields = ["id", "title_key", "due_notified_at", "created_at", "updated_at"]
    inlines = [FlowEventInline]
