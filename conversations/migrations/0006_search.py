"""Full-text search over messages (docs/api.md#search): a GIN expression index on
PostgreSQL, an FTS5 table kept in step by triggers on SQLite (core/fts.py). Nothing on
other databases.
"""

from django.contrib.postgres.indexes import GinIndex
from django.db import migrations

from conversations.search import MESSAGE_FTS, MESSAGE_SEARCH_INDEX, message_search_vector


def _index() -> GinIndex:
    return GinIndex(message_search_vector(), name=MESSAGE_SEARCH_INDEX)


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.add_index(apps.get_model("conversations", "Message"), _index())
    elif vendor == "sqlite":
        for statement in MESSAGE_FTS.create_sql():
            schema_editor.execute(statement)


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.remove_index(apps.get_model("conversations", "Message"), _index())
    elif vendor == "sqlite":
        for statement in MESSAGE_FTS.drop_sql():
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("conversations", "0005_steering")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
