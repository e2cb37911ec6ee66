"""What every app shares (errors, database units, HTTP helpers, logging, metrics, health,
the deploy checks); it imports no other app of the project."""

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from core import checks  # noqa: F401, PLC0415  (registers the deploy checks)
