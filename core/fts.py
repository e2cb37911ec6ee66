"""SQLite FTS5 full-text indexes over a model's table, kept in step by triggers.

The PostgreSQL side of search needs no help (a GIN expression index); on SQLite each
searchable table gets an *external content* FTS5 table (the text is not stored twice: the
index reads it back from the model's table by ``rowid``) and three triggers that keep it
in step with every ``INSERT``, ``UPDATE`` of the indexed columns and ``DELETE`` (the
pattern of https://sqlite.org/fts5.html#external_content_tables). The migrations that
create the indexes and :func:`sqlite_fts_ensure` (which repairs them after a migration
rebuilt a table) share these statements, so they cannot drift apart.

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

from django.db.backends.base.base import BaseDatabaseWrapper

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
