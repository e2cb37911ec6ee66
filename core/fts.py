"""Full-text indexes over a model's table: PostgreSQL ``tsvector`` columns, SQLite FTS5.

On PostgreSQL (:class:`PgDocument`) each searchable table gets a stored generated
``tsvector`` column with a GIN index on it. Not a GIN *expression* index: ``ts_rank`` and
a phrase's position check need the vector itself, and with an expression index PostgreSQL
parses each candidate's text again (bench/search.py, 100,000 messages: a word in nearly
every message took 24 s; a phrase of common words 7 s). The column is computed by the
database on every insert and update of the text; no model declares it, so the ORM never
writes it, and :class:`StoredDocument` reads it in queries.

On SQLite each searchable table gets an *external content* FTS5 table (the text is not
stored twice: the index reads it back from the model's table by ``rowid``) and three
triggers that keep it in step with every ``INSERT``, ``UPDATE`` of the indexed columns
and ``DELETE`` (the pattern of https://sqlite.org/fts5.html#external_content_tables).
The migrations that create the indexes and :func:`sqlite_fts_ensure` (which repairs them
after a migration rebuilt a table) share these statements, so they cannot drift apart.

The link is SQLite's implicit ``rowid``: the models' keys are UUIDs, not integers. A
table that Django's SQLite schema editor remakes (some ``AlterField``) loses its triggers
and may renumber its rows; :func:`sqlite_fts_ensure` notices the missing triggers after
``migrate`` and rebuilds the index.

Injection: the statements are built from the table and column names given in code (never
from input), hence the ``noqa: S608``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.contrib.postgres.search import SearchVectorField
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Expression

#: Porter stemming over Unicode word splitting ("flights" finds "flight"), as PostgreSQL's
#: ``english`` configuration (:data:`PG_CONFIG`) does on the other side.
TOKENIZE = "porter unicode61"
PG_CONFIG = "english"


@dataclass(frozen=True)
class FtsIndex:
    """An FTS5 index over ``columns`` of ``table`` (named ``<table>_fts``)."""

    table: str
    columns: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.table}_fts"

    @property
    def triggers(self) -> tuple[str, str, str]:
        return (f"{self.name}_ai", f"{self.name}_ad", f"{self.name}_au")

    def create_sql(self) -> list[str]:
        """The FTS table, filled from the rows already there, and its three triggers."""
        return [self.create_table_sql(), self.rebuild_sql(), *self.create_triggers_sql()]

    def create_table_sql(self) -> str:
        cols = ", ".join(self.columns)
        return (
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.name} USING fts5({cols}, "
            f"content='{self.table}', content_rowid='rowid', tokenize='{TOKENIZE}')"
        )

    def rebuild_sql(self) -> str:
        """Index every row of the table again (FTS5's ``rebuild`` command)."""
        return f"INSERT INTO {self.name}({self.name}) VALUES ('rebuild')"  # noqa: S608

    def create_triggers_sql(self) -> list[str]:
        cols = ", ".join(self.columns)
        new = ", ".join(f"new.{c}" for c in self.columns)
        old = ", ".join(f"old.{c}" for c in self.columns)
        changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in self.columns)
        insert_new = f"INSERT INTO {self.name}(rowid, {cols}) VALUES (new.rowid, {new});"  # noqa: S608
        delete_old = (
            f"INSERT INTO {self.name}({self.name}, rowid, {cols}) "  # noqa: S608
            f"VALUES ('delete', old.rowid, {old});"
        )
        ai, ad, au = self.triggers
        return [
            f"CREATE TRIGGER IF NOT EXISTS {ai} AFTER INSERT ON {self.table} BEGIN "
            f"{insert_new} END",
            f"CREATE TRIGGER IF NOT EXISTS {ad} AFTER DELETE ON {self.table} BEGIN "
            f"{delete_old} END",
            # Only when an indexed column really changed: a streaming reply's status or
            # usage updates leave the index alone.
            f"CREATE TRIGGER IF NOT EXISTS {au} AFTER UPDATE OF {cols} ON {self.table} "
            f"WHEN {changed} BEGIN {delete_old} {insert_new} END",
        ]

    def drop_sql(self) -> list[str]:
        return [
            *(f"DROP TRIGGER IF EXISTS {t}" for t in self.triggers),
            f"DROP TABLE IF EXISTS {self.name}",
        ]


def sqlite_fts_ensure(connection: BaseDatabaseWrapper, indexes: Sequence[FtsIndex]) -> list[str]:
    """Recreate what is missing of ``indexes`` on a SQLite ``connection`` and rebuild an
    index whose triggers were gone (its rows may have changed unseen). Answers the names of
    the indexes it rebuilt; does nothing on other databases or before the tables exist."""
    if connection.vendor != "sqlite":
        return []
    rebuilt = []
    with connection.cursor() as cursor:
        cursor.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')")
        existing = {name for _type, name in cursor.fetchall()}
        for index in indexes:
            if index.table not in existing:
                continue
            if index.name in existing and all(t in existing for t in index.triggers):
                continue
            cursor.execute(index.create_table_sql())
            for statement in index.create_triggers_sql():
                cursor.execute(statement)
            cursor.execute(index.rebuild_sql())
            rebuilt.append(index.name)
    return rebuilt


@dataclass(frozen=True)
class PgDocument:
    """PostgreSQL: a stored ``tsvector`` column ``column`` of ``table``, generated from
    ``columns`` (:data:`PG_CONFIG`), and a GIN index ``index`` on it."""

    table: str
    columns: tuple[str, ...]
    index: str
    column: str = "search_document"

    def create_sql(self) -> list[str]:
        text = " || ' ' || ".join(f"COALESCE({c}, '')" for c in self.columns)
        return [
            f"ALTER TABLE {self.table} ADD COLUMN {self.column} tsvector GENERATED ALWAYS AS "
            f"(to_tsvector('{PG_CONFIG}'::regconfig, {text})) STORED",
            f"CREATE INDEX {self.index} ON {self.table} USING gin ({self.column})",
        ]

    def drop_sql(self) -> list[str]:
        return [
            f"DROP INDEX IF EXISTS {self.index}",
            f"ALTER TABLE {self.table} DROP COLUMN IF EXISTS {self.column}",
        ]

    def expression(self) -> StoredDocument:
        return StoredDocument(self.column)


class StoredDocument(Expression):
    """A query's own ``tsvector`` column that no model declares (:class:`PgDocument`),
    qualified by the alias of the query's base table (so it is right in subqueries too)."""

    def __init__(self, column: str) -> None:
        super().__init__(output_field=SearchVectorField())
        self.column = column

    def as_sql(self, compiler: Any, connection: BaseDatabaseWrapper) -> tuple[str, list]:
        alias = compiler.query.get_initial_alias()
        qualified = compiler.quote_name_unless_alias(alias)
        return f"{qualified}.{connection.ops.quote_name(self.column)}", []
