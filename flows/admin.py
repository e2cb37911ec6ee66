"""Admin for flows."""

from django.contrib import admin

from flows.models import Flow


@admin.register(Flow)
class FlowAdmin(admin.ModelAdmin):
    list_display = ["title", "user", "context", "priority", "due_date", "status", "created_at"]
    list_filter = ["status", "priority", "reminder_enabled"]
    search_fields = ["title", "user__username", "id"]
    list_select_related = ["user", "context"]
    date_hierarchy = "created_at"
    raw_id_fields = ["user", "context", "conversation", "source_message"]
    readonly_fields = ["id", "title_key", "created_at", "updated_at"]
