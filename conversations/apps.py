from django.apps import AppConfig
from django.db import connections
from django.db.models.signals import post_migrate


class ConversationsConfig(AppConfig):
    name = "conversations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_search_indexes_ensure, sender=self)


def _search_indexes_ensure(using: str, **kwargs: object) -> None:
    """After ``migrate`` on SQLite: recreate a search index whose triggers a table rebuild
    dropped, and refill it (core/fts.py)."""
    from conversations.search import MESSAGE_FTS  # noqa: PLC0415  (models: after ready)
    from core.fts import sqlite_fts_ensure  # noqa: PLC0415
    from flows.search import FLOW_FTS  # noqa: PLC0415

    sqlite_fts_ensure(connections[using], [MESSAGE_FTS, FLOW_FTS])
