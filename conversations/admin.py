"""Admin for contexts, conversations and messages (conversations show their messages)."""

from django.contrib import admin

from conversations.models import Context, Conversation, Message


@admin.register(Context)
class ContextAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "created_at", "updated_at"]
    search_fields = ["name", "user__username", "id"]
    list_select_related = ["user"]
    readonly_fields = ["id", "created_at", "updated_at"]
    raw_id_fields = ["user"]


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    show_change_link = True
    fields = [
        "created_at",
        "role",
        "status",
        "superseded",
        "finish_reason",
        "content",
        "output_tokens",
    ]
    readonly_fields = fields
    ordering = ["created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["__str__", "user", "context", "created_at", "updated_at"]
    list_filter = ["created_at"]
    search_fields = ["title", "user__username", "id"]
    list_select_related = ["user", "context"]
    readonly_fields = ["id", "created_at", "updated_at"]
    raw_id_fields = ["user", "context"]
    inlines = [MessageInline]

    def save_model(self, request, obj: Conversation, form, change: bool) -> None:
        """A title changed here is the user's: generated titles never overwrite it."""
        if "title" in form.changed_data:
            obj.title_set_by_user = True
        super().save_model(request, obj, form, change)


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "user",
        "role",
        "status",
        "finish_reason",
        "provider",
        "model",
        "input_tokens",
        "output_tokens",
        "created_at",
    ]
    list_filter = ["role", "status", "finish_reason", "provider", "superseded"]
    search_fields = ["id", "user__username", "conversation__id"]
    list_select_related = ["user"]
    date_hierarchy = "created_at"
    raw_id_fields = ["user", "conversation"]
    readonly_fields = [
        "id",
        "created_at",
        "updated_at",
        "input_tokens",
        "output_tokens",
        "usage_estimated",
        "provider",
        "model",
        "worker",
        "error_code",
        "reply_to",
        "generated_title",
    ]
