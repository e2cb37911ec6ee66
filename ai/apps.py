from django.apps import AppConfig


class AiConfig(AppConfig):
    name = "ai"
    verbose_name = "AI usage and quota"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ai import checks  # noqa: F401, PLC0415  (registers the system checks)
