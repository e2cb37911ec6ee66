"""Full-text search over flows (docs/api.md#search): a stored tsvector column with a GIN index on
PostgreSQL,
an FTS5 table kept in step by triggers on SQLite (core/fts.py). Nothing on other databases.
"""

from django.db import migrations

from flows.search import FLOW_DOCUMENT, FLOW_FTS


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for statement in FLOW_DOCUMENT.create_sql():
            schema_editor.execute(statement)
    elif vendor == "sqlite":
        for statement in FLOW_FTS.create_sql():
            schema_editor.execute(statement)


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for statement in FLOW_DOCUMENT.drop_sql():
            schema_editor.execute(statement)
    elif vendor == "sqlite":
        for statement in FLOW_FTS.drop_sql():
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("flows", "0002_flow_events")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
