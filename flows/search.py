"""What makes flows searchable (docs/api.md#search): the index definitions the migration
creates and the search reads with, kept here so that the two cannot drift apart."""

from __future__ import annotations

from core.fts import FtsIndex, PgDocument

#: SQLite: an FTS5 index over a flow's title and description (core/fts.py).
FLOW_FTS = FtsIndex(table="flows_flow", columns=("title", "description"))

#: PostgreSQL: a stored tsvector of the title and description, with a GIN index.
FLOW_DOCUMENT = PgDocument(
    table="flows_flow", columns=("title", "description"), index="flow_search_idx"
)
