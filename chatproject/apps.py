"""The project package as an app: it registers the project's own system checks."""

from django.apps import AppConfig


class ChatProjectConfig(AppConfig):
    name = "chatproject"
    verbose_name = "Chat service"

    def ready(self) -> None:
        from chatproject import checks  # noqa: F401  (registers the deploy checks)
