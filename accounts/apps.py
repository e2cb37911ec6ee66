"""Who is calling: credentials of every transport, OIDC identities, throttles."""

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and authentication"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # system checks, the schema extension, the failed-login receiver
        from accounts import checks, openapi, throttling  # noqa: F401, PLC0415
