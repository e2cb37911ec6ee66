"""What makes flows searchable (docs/api.md#search): the index definitions the migration
creates and the search reads with, kept here so that the two cannot drift apart."""

from __future__ import annotations

from django.contrib.postgres.search import SearchVector

from core.fts import PG_CONFIG, FtsIndex

#: SQLite: an FTS5 index over a flow's title and description (core/fts.py).
FLOW_FTS = FtsIndex(table="flows_flow", columns=("title", "description"))

#: PostgreSQL: a GIN index over this expression; a query must use the same expression.
FLOW_SEARCH_INDEX = "flow_search_idx"


def flow_search_vector() -> SearchVector:
    """The ``tsvector`` of a flow (title and description), as its GIN index holds it."""
    return SearchVector("title", "description", config=PG_CONFIG)
