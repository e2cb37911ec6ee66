"""OIDC identities in the admin: read-only, beside the users they belong to."""

from django.contrib import admin

from accounts.models import OIDCIdentity


@admin.register(OIDCIdentity)
class OIDCIdentityAdmin(admin.ModelAdmin):
    list_display = ("subject", "issuer", "user", "created_at")
    list_filter = ("issuer",)
    search_fields = ("subject", "user__username")
    readonly_fields = ("user", "issuer", "subject", "created_at")

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False
