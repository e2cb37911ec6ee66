"""Full-text search over flows (docs/api.md#search): a GIN expression index on PostgreSQL,
an FTS5 table kept in step by triggers on SQLite (core/fts.py). Nothing on other databases.
"""

from django.contrib.postgres.indexes import GinIndex
from django.db import migrations

from flows.search import FLOW_FTS, FLOW_SEARCH_INDEX, flow_search_vector


def _index() -> GinIndex:
    return GinIndex(flow_search_vector(), name=FLOW_SEARCH_INDEX)


def create(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.add_index(apps.get_model("flows", "Flow"), _index())
    elif vendor == "sqlite":
        for statement in FLOW_FTS.create_sql():
            schema_editor.execute(statement)


def drop(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.remove_index(apps.get_model("flows", "Flow"), _index())
    elif vendor == "sqlite":
        for statement in FLOW_FTS.drop_sql():
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("flows", "0002_flow_events")]

    operations = [migrations.RunPython(create, drop, elidable=False)]
