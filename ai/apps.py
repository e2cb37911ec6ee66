from django.apps import AppConfig


class AiConfig(AppConfig):
    name = "ai"
    verbose_name = "AI usage and quota"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ai import checks  # noqa: F401, PLC0415  (registers the system checks)
        from ai.breaker import BreakerCollector  # noqa: PLC0415
        from ai.routing import configured_routes  # noqa: PLC0415
        from core.metrics import register_scrape_collector  # noqa: PLC0415

        register_scrape_collector(
            BreakerCollector(lambda: [(r.provider, r.model) for r in configured_routes()])
        )
