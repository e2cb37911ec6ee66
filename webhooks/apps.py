from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the flows signal to the outbox, and register the settings checks."""
        from webhooks import checks, receivers  # noqa: F401, PLC0415 (Django's ready() idiom)
