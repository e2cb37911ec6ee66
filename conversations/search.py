"""Full-text search over the caller's messages and flows (docs/api.md#search).

One selector, :func:`search_for`, hides the two databases:

- **PostgreSQL**: ``websearch_to_tsquery`` (any text is a valid query: words, ``"a
  phrase"``, ``or``, ``-word``) against stored ``english`` ``tsvector`` columns with GIN
  indexes (a message's content; a flow's title and description: core/fts.py says why
  not expression indexes), ranked by ``ts_rank``, snippets by ``ts_headline`` (Django's
  ``SearchQuery``, ``SearchRank``, ``SearchHeadline``);
- **SQLite**: FTS5 tables kept in step by triggers (core/fts.py), ranked by ``bm25``,
  snippets by ``snippet()``. The user's text never reaches ``MATCH`` as syntax:
  :func:`fts5_query` rebuilds a query of quoted terms from its words.

Both find only the caller's rows (messages not superseded), optionally of one context,
best first (then newest). Snippets are plain text; what matched is given as ranges into
it (:func:`split_highlights`), never as markup, so a page can show them without trusting
message text. Only the shown page's snippets are computed: the ranked list of matches is
one query, the page's snippets a second one.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.contrib.postgres.search import SearchHeadline, SearchQuery, SearchRank
from django.db import connection
from django.db.models import Case, CharField, F, FloatField, TextField, Value, When
from django.db.models.functions import Cast, Concat
from django.utils.dateparse import parse_datetime

from conversations.models import Context, Conversation, Message
from core.fts import PG_CONFIG, FtsIndex, PgDocument
from flows.models import Flow
from flows.search import FLOW_DOCUMENT, FLOW_FTS

#: SQLite: an FTS5 index over message text (core/fts.py).
MESSAGE_FTS = FtsIndex(table="conversations_message", columns=("content",))
#: PostgreSQL: a stored tsvector of the content, with a GIN index (core/fts.py).
MESSAGE_DOCUMENT = PgDocument(
    table="conversations_message", columns=("content",), index="message_search_idx"
)

#: Ranking costs per match (``ts_rank`` reads each match's vector, ``bm25`` its index
#: data), so when more messages match, only the newest this many are ranked: they come
#: first, best first, then the older matches, newest first. ``count`` stays exact.
#: Measured with 100,000 messages (bench/search.py): a word in half of them took 1.5 s on
#: SQLite with every match ranked, 1.0 s with this window.
RANK_WINDOW = 2_000
#: Longest accepted query, in characters.
MAX_QUERY_LENGTH = 200
#: Where a match starts and stops in the database's snippet: Unicode private-use
#: characters, turned into ``highlights`` ranges and removed before anything is answered.
HIGHLIGHT_START = "\ue000"
HIGHLIGHT_STOP = "\ue001"
#: Words (PostgreSQL) or tokens (SQLite) around the matches in a snippet.
SNIPPET_WORDS = 24
ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One match: a message (with its conversation) or a flow."""

    type: str  # "message" or "flow"
    id: uuid.UUID
    context_id: uuid.UUID
    conversation_id: uuid.UUID | None
    title: str  # the conversation's title for a message, the flow's own for a flow
    role: str | None  # a message's role; None for a flow
    snippet: str
    highlights: list[tuple[int, int]]
    rank: float
    created_at: datetime


def search_for(
    *, user: AbstractBaseUser, q: str, context_id: uuid.UUID | None = None
) -> SearchResults:
    """The caller's messages (not superseded) and flows matching ``q``, best first.

    A lazy, sliceable result for Django's paginator: ``count()`` and ``[a:b]`` each run
    their own queries. ``q`` must be validated already (not blank, at most
    :data:`MAX_QUERY_LENGTH` characters, no NUL).
    """
    if connection.vendor == "postgresql":
        return _PostgresResults(user=user, q=q, context_id=context_id)
    return _SqliteResults(user=user, q=q, context_id=context_id)


class SearchResults(Sequence[SearchHit]):
    """Matches ranked best first; slicing fetches that page with its snippets."""

    def __init__(self, *, user: AbstractBaseUser, q: str, context_id: uuid.UUID | None) -> None:
        self.user = user
        self.q = q
        self.context_id = context_id
        self._count: int | None = None

    def count(self) -> int:  # type: ignore[override]
        """How many matches in all (one query, cached)."""
        if self._count is None:
            self._count = self._count_matches()
        return self._count

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, int):
            page = self[index : index + 1]
            if not page:
                raise IndexError(index)
            return page[0]
        start, stop = index.start or 0, index.stop
        if stop is None:
            stop = self.count()
        if stop <= start:
            return []
        return self._page(start, stop - start)

    def _count_matches(self) -> int:
        raise NotImplementedError

    def _page(self, offset: int, limit: int) -> list[SearchHit]:
        raise NotImplementedError


def split_highlights(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """A snippet with :data:`HIGHLIGHT_START`/:data:`HIGHLIGHT_STOP` around matches, as
    plain text and ``[start, end)`` ranges (code points) of the matches in it."""
    text: list[str] = []
    ranges: list[tuple[int, int]] = []
    length = 0
    start: int | None = None
    for part in re.split(f"([{HIGHLIGHT_START}{HIGHLIGHT_STOP}])", marked):
        if part == HIGHLIGHT_START:
            start = length
        elif part == HIGHLIGHT_STOP:
            if start is not None and length > start:
                ranges.append((start, length))
            start = None
        else:
            text.append(part)
            length += len(part)
    if start is not None and length > start:
        ranges.append((start, length))
    return "".join(text), ranges


# --- PostgreSQL -----------------------------------------------------------------------------


class _PostgresResults(SearchResults):
    def _query(self) -> SearchQuery:
        return SearchQuery(self.q, search_type="websearch", config=PG_CONFIG)

    def _ranked(self) -> Any:
        query = self._query()
        messages = (
            Message.objects.filter(user=self.user, superseded=False)
            .alias(document=MESSAGE_DOCUMENT.expression())
            .filter(document=query)
        )
        flows = (
            Flow.objects.filter(user=self.user)
            .alias(document=FLOW_DOCUMENT.expression())
            .filter(document=query)
        )
        if self.context_id is not None:
            messages = messages.filter(conversation__context_id=self.context_id)
            flows = flows.filter(context_id=self.context_id)
        # Only the newest RANK_WINDOW matches are ranked (CASE computes ts_rank for them
        # only); older ones rank 0.
        window = messages.order_by("-created_at", "-id").values("id")[:RANK_WINDOW]
        message_rank = Case(
            When(id__in=window, then=Cast(SearchRank(F("document"), query), FloatField())),
            default=Value(0.0),
            output_field=FloatField(),
        )
        # The same columns in the same order on both sides of the UNION.
        messages = messages.annotate(
            kind=Value("message", output_field=CharField()), rank=message_rank
        ).values_list("kind", "id", "rank", "created_at")
        flows = flows.annotate(
            kind=Value("flow", output_field=CharField()),
            rank=Cast(SearchRank(F("document"), query), FloatField()),
        ).values_list("kind", "id", "rank", "created_at")
        return messages.union(flows, all=True)

    def _count_matches(self) -> int:
        return self._ranked().count()

    def _page(self, offset: int, limit: int) -> list[SearchHit]:
        rows = list(self._ranked().order_by("-rank", "-created_at", "id")[offset : offset + limit])
        query = self._query()
        options = {
            "config": PG_CONFIG,
            "start_sel": HIGHLIGHT_START,
            "stop_sel": HIGHLIGHT_STOP,
            "max_words": SNIPPET_WORDS,
            "min_words": SNIPPET_WORDS // 2,
            "max_fragments": 2,
            "fragment_delimiter": f" {ELLIPSIS} ",
        }
        message_ids = [row[1] for row in rows if row[0] == "message"]
        flow_ids = [row[1] for row in rows if row[0] == "flow"]
        messages = {
            m["id"]: m
            for m in Message.objects.filter(id__in=message_ids, user=self.user)
            .annotate(headline=SearchHeadline("content", query, **options))
            .values(
                "id",
                "conversation_id",
                "conversation__context_id",
                "conversation__title",
                "role",
                "headline",
            )
        }
        flows = {
            f["id"]: f
            for f in Flow.objects.filter(id__in=flow_ids, user=self.user)
            .annotate(
                headline=SearchHeadline(
                    Concat("title", Value(" · "), "description", output_field=TextField()),
                    query,
                    **options,
                )
            )
            .values("id", "context_id", "conversation_id", "title", "headline")
        }
        hits = []
        for kind, pk, rank, created_at in rows:
            if kind == "message" and pk in messages:
                m = messages[pk]
                hits.append(
                    _hit(
                        "message",
                        pk,
                        m["conversation__context_id"],
                        m["conversation_id"],
                        m["conversation__title"],
                        m["role"],
                        m["headline"],
                        rank,
                        created_at,
                    )
                )
            elif kind == "flow" and pk in flows:
                f = flows[pk]
                hits.append(
                    _hit(
                        "flow",
                        pk,
                        f["context_id"],
                        f["conversation_id"],
                        f["title"],
                        None,
                        f["headline"],
                        rank,
                        created_at,
                    )
                )
        return hits


def _hit(
    kind: str,
    pk: uuid.UUID,
    context_id: uuid.UUID,
    conversation_id: uuid.UUID | None,
    title: str,
    role: str | None,
    marked: str,
    rank: float,
    created_at: datetime,
) -> SearchHit:
    snippet, highlights = split_highlights(marked or "")
    return SearchHit(
        type=kind,
        id=pk,
        context_id=context_id,
        conversation_id=conversation_id,
        title=title,
        role=role,
        snippet=snippet,
        highlights=highlights,
        rank=float(rank),
        created_at=created_at,
    )


# --- SQLite ---------------------------------------------------------------------------------

_QUERY_TOKEN = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_WORD = re.compile(r"\w+")


def fts5_query(q: str) -> str | None:
    """An FTS5 ``MATCH`` expression for what a user typed, or ``None`` when it has no
    words: each word, or ``"quoted phrase"``, becomes a quoted FTS5 string (so no
    operator, column filter or quote of the user's is ever syntax); ``or`` between two of
    them is ``OR``, a leading ``-`` excludes one (as PostgreSQL's ``websearch_to_tsquery``
    reads the same text). Only word characters survive inside the quotes."""
    terms: list[str] = []
    excluded: list[str] = []
    pending_or = False
    for negated, phrase, bare in _QUERY_TOKEN.findall(q):
        if bare and bare.lower() == "or":
            pending_or = bool(terms)
            continue
        if bare.startswith("-") and len(bare) > 1:
            negated, bare = "-", bare[1:]
        words = _WORD.findall(phrase or bare)
        if not words:
            continue
        term = '"' + " ".join(words) + '"'
        if negated:
            excluded.append(term)
        elif pending_or:
            terms[-1] = f"{terms[-1]} OR {term}"
        else:
            terms.append(term)
        pending_or = False
    if not terms:
        return None
    expression = " AND ".join(f"({t})" if " OR " in t else t for t in terms)
    for term in excluded:
        expression = f"({expression}) NOT {term}"
    return expression


def _q(name: str) -> str:
    """A quoted table name. Injection: the SQL below is built only from the models' table
    names, the index names of core/fts.py and constants; every value is a parameter
    (hence its ``noqa: S608``)."""
    return connection.ops.quote_name(name)


class _SqliteResults(SearchResults):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.match = fts5_query(self.q)

    def _ranked_sql(self, *, ranked: bool = True) -> tuple[str, list[Any]]:
        """``kind, id, rank, created_at, rowid`` of every match (a UNION of both kinds).

        ``CROSS JOIN`` keeps the FTS table in the outer loop (SQLite never reorders it):
        otherwise the planner may walk the user's rows by index and run the ``MATCH`` once
        per row (measured: 100 ms instead of 1 for a word with no match, 5,000 rows).
        Without ``ranked`` (to count), ``rank`` is 0: ``bm25`` is most of the cost; with
        it, only the newest :data:`RANK_WINDOW` matching messages get a ``bm25`` rank."""
        mf, ff = _q(MESSAGE_FTS.name), _q(FLOW_FTS.name)
        message_table, flow_table = _q(Message._meta.db_table), _q(Flow._meta.db_table)
        user_pk = self.user.pk
        flow_rank = f"-bm25({ff})" if ranked else "0"
        context = (
            Context._meta.pk.get_db_prep_value(self.context_id, connection)
            if self.context_id is not None
            else None
        )
        in_context = (
            f" AND {{m}}.conversation_id IN (SELECT id FROM "  # noqa: S608
            f"{_q(Conversation._meta.db_table)} WHERE context_id = %s)"
        )
        rank_params: list[Any] = []
        message_rank = "0"
        if ranked:
            window = (
                f"SELECT w.rowid FROM {message_table} w WHERE w.rowid IN "  # noqa: S608
                f"(SELECT rowid FROM {mf} WHERE {mf} MATCH %s) "
                f"AND w.user_id = %s AND NOT w.superseded"
            )
            rank_params = [self.match, user_pk]
            if context is not None:
                window += in_context.format(m="w")
                rank_params.append(context)
            window += f" ORDER BY w.created_at DESC, w.id DESC LIMIT {RANK_WINDOW:d}"
            message_rank = f"CASE WHEN m.rowid IN ({window}) THEN -bm25({mf}) ELSE 0 END"
        message_sql = (
            f"SELECT 'message' AS kind, m.id AS id, {message_rank} AS rank, "  # noqa: S608
            f"m.created_at AS created_at, m.rowid AS row "
            f"FROM {mf} CROSS JOIN {message_table} m ON m.rowid = {mf}.rowid "
            f"WHERE {mf} MATCH %s AND m.user_id = %s AND NOT m.superseded"
        )
        message_params: list[Any] = [*rank_params, self.match, user_pk]
        flow_sql = (
            f"SELECT 'flow' AS kind, f.id AS id, {flow_rank} AS rank, "  # noqa: S608
            f"f.created_at AS created_at, f.rowid AS row "
            f"FROM {ff} CROSS JOIN {flow_table} f ON f.rowid = {ff}.rowid "
            f"WHERE {ff} MATCH %s AND f.user_id = %s"
        )
        flow_params: list[Any] = [self.match, user_pk]
        if context is not None:
            message_sql += in_context.format(m="m")
            message_params.append(context)
            flow_sql += " AND f.context_id = %s"
            flow_params.append(context)
        return f"{message_sql} UNION ALL {flow_sql}", message_params + flow_params

    def _count_matches(self) -> int:
        if self.match is None:
            return 0
        sql, params = self._ranked_sql(ranked=False)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({sql})", params)  # noqa: S608
            return cursor.fetchone()[0]

    def _page(self, offset: int, limit: int) -> list[SearchHit]:
        if self.match is None:
            return []
        sql, params = self._ranked_sql()
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT kind, id, rank, created_at, row FROM ({sql}) "  # noqa: S608
                "ORDER BY rank DESC, created_at DESC, id LIMIT %s OFFSET %s",
                [*params, limit, offset],
            )
            rows = cursor.fetchall()
        message_rows = [row[4] for row in rows if row[0] == "message"]
        flow_rows = [row[4] for row in rows if row[0] == "flow"]
        messages = self._message_details(message_rows)
        flows = self._flow_details(flow_rows)
        hits = []
        for kind, pk, rank, created_at, row in rows:
            details = (messages if kind == "message" else flows).get(row)
            if details is None:
                continue
            context_id, conversation_id, title, role, marked = details
            hits.append(
                _hit(
                    kind,
                    uuid.UUID(pk),
                    uuid.UUID(context_id),
                    uuid.UUID(conversation_id) if conversation_id else None,
                    title,
                    role,
                    marked,
                    rank,
                    _datetime(created_at),
                )
            )
        return hits

    def _snippet(self, fts: str, column: int) -> str:
        return (
            f"snippet({fts}, {column}, '{HIGHLIGHT_START}', '{HIGHLIGHT_STOP}', "
            f"'{ELLIPSIS}', {SNIPPET_WORDS})"
        )

    def _message_details(self, rows: list[int]) -> dict[int, tuple]:
        if not rows:
            return {}
        mf = _q(MESSAGE_FTS.name)
        marks = ", ".join(["%s"] * len(rows))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT m.rowid, c.context_id, m.conversation_id, c.title, m.role, "  # noqa: S608
                f"{self._snippet(mf, 0)} "
                f"FROM {mf} CROSS JOIN {_q(Message._meta.db_table)} m ON m.rowid = {mf}.rowid "
                f"JOIN {_q(Conversation._meta.db_table)} c ON c.id = m.conversation_id "
                f"WHERE {mf} MATCH %s AND {mf}.rowid IN ({marks}) AND m.user_id = %s",
                [self.match, *rows, self.user.pk],
            )
            return {row[0]: row[1:] for row in cursor.fetchall()}

    def _flow_details(self, rows: list[int]) -> dict[int, tuple]:
        if not rows:
            return {}
        ff = _q(FLOW_FTS.name)
        marks = ", ".join(["%s"] * len(rows))
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT f.rowid, f.context_id, f.conversation_id, f.title, NULL, "  # noqa: S608
                f"{self._snippet(ff, -1)} "
                f"FROM {ff} CROSS JOIN {_q(Flow._meta.db_table)} f ON f.rowid = {ff}.rowid "
                f"WHERE {ff} MATCH %s AND {ff}.rowid IN ({marks}) AND f.user_id = %s",
                [self.match, *rows, self.user.pk],
            )
            return {row[0]: row[1:] for row in cursor.fetchall()}


def _datetime(value: Any) -> datetime:
    """A ``created_at`` read by raw SQL (SQLite answers text) as an aware datetime."""
    if isinstance(value, datetime):
        return value
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError(f"not a datetime: {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed
