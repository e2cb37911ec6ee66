"""Full-text search over messages (docs/api.md#search): a stored tsvector column with a GIN
index on PostgreSQL, an FTS5 table kept in step by triggers on SQLite (core/fts.py). Nothing on
other databases.
"""

from django.db import migrations

from conversations.search import MESSAGE_DOCUMENT, MESSAGE_FTS


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for statement in MESSAGE_DOCUMENT.create_sql():
            schema_editor.execute(statement)
    elif vendor == "sqlite":
        for statement in MESSAGE_FTS.create_sql():
            schema_editor.execute(statement)


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for statement in MESSAGE_DOCUMENT.drop_sql():
            schema_editor.execute(statement)
    elif vendor == "sqlite":
        for statement in MESSAGE_FTS.drop_sql():
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("conversations", "0005_steering")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
