"""Search (docs/api.md#search): the caller's messages and flows, ranked, with snippets.

The same tests run on SQLite (FTS5 kept in step by triggers) and on PostgreSQL (GIN
expression indexes, ``websearch_to_tsquery``): run them with ``DATABASE_URL=postgres://...``
for the second. Each database's own machinery has a test of its own at the end.
"""

from __future__ import annotations

import pytest
from django.db import connection

from conversations.models import Message
from conversations.search import (
    HIGHLIGHT_START,
    HIGHLIGHT_STOP,
    MAX_QUERY_LENGTH,
    MESSAGE_DOCUMENT,
    MESSAGE_FTS,
    fts5_query,
    split_highlights,
)
from core.fts import sqlite_fts_ensure
from flows.search import FLOW_FTS
from tests import factories

pytestmark = pytest.mark.django_db

URL = "/api/v1/search/"


@pytest.fixture
def work(user):
    return factories.make_context(user, name="Work")


@pytest.fixture
def trip(user):
    return factories.make_context(user, name="Trip")


def search(api, q, **params):
    response = api.get(URL, {"q": q, **params})
    assert response.status_code == 200, response.content
    return response.json()


def matched(hit) -> list[str]:
    return [hit["snippet"][start:end] for start, end in hit["highlights"]]


def test_finds_messages_and_flows_best_first_with_highlights(api, user, trip):
    conversation = factories.make_conversation(trip, title="Rome")
    weak = factories.make_message(
        conversation,
        content="We talked about many things today: the weather, the trains, lunch, the "
        "museum opening hours, a long list of errands and, once, Rome.",
    )
    strong = factories.make_message(
        conversation, role="assistant", content="Rome, Rome, Rome: three days in Rome."
    )
    flow = factories.make_flow(trip, title="Book a hotel in Rome", conversation=conversation)
    factories.make_message(conversation, content="Nothing to see here.")

    body = search(api, "rome")

    assert body["count"] == 3
    ids = [hit["id"] for hit in body["results"]]
    assert set(ids) == {str(weak.id), str(strong.id), str(flow.id)}
    assert ids.index(str(strong.id)) < ids.index(str(weak.id))
    ranks = [hit["rank"] for hit in body["results"]]
    assert ranks == sorted(ranks, reverse=True)
    by_id = {hit["id"]: hit for hit in body["results"]}
    message_hit = by_id[str(strong.id)]
    assert message_hit["type"] == "message"
    assert message_hit["role"] == "assistant"
    assert message_hit["conversation_id"] == str(conversation.id)
    assert message_hit["context_id"] == str(trip.id)
    assert message_hit["title"] == "Rome"
    assert matched(message_hit) and all(m.lower() == "rome" for m in matched(message_hit))
    flow_hit = by_id[str(flow.id)]
    assert flow_hit["type"] == "flow"
    assert flow_hit["role"] is None
    assert flow_hit["title"] == "Book a hotel in Rome"
    assert [m.lower() for m in matched(flow_hit)] == ["rome"]
    # The markers never reach the client.
    for hit in body["results"]:
        assert HIGHLIGHT_START not in hit["snippet"] and HIGHLIGHT_STOP not in hit["snippet"]


def test_stemming_finds_other_forms_of_a_word(api, work):
    conversation = factories.make_conversation(work)
    message = factories.make_message(conversation, content="I booked two flights to Oslo.")
    body = search(api, "flight booking")
    assert [hit["id"] for hit in body["results"]] == [str(message.id)]
    assert sorted(m.lower() for m in matched(body["results"][0])) == ["booked", "flights"]


def test_snippet_is_plain_text_never_markup(api, work):
    conversation = factories.make_conversation(work)
    factories.make_message(
        conversation, content='<img src=x onerror="alert(1)"> the payload <b>word</b> here'
    )
    hit = search(api, "payload")["results"][0]
    # Nothing added: the matches are ranges, not tags.
    assert "<mark>" not in hit["snippet"] and "<b>payload" not in hit["snippet"]
    assert matched(hit) == ["payload"]
    assert "payload" in hit["snippet"] and "here" in hit["snippet"]
    if connection.vendor == "sqlite":
        # The message's own text, as text.
        assert '<img src=x onerror="alert(1)">' in hit["snippet"]
    else:
        # ts_headline's parser leaves what looks like an HTML tag out of a snippet.
        assert "<img" not in hit["snippet"]


def test_a_long_message_gives_a_short_snippet_around_the_match(api, work):
    conversation = factories.make_conversation(work)
    filler = " ".join(f"word{i}" for i in range(400))
    factories.make_message(conversation, content=f"{filler} needle {filler}")
    hit = search(api, "needle")["results"][0]
    assert len(hit["snippet"]) < 600
    assert matched(hit) == ["needle"]


def test_context_filter(api, work, trip):
    in_work = factories.make_message(factories.make_conversation(work), content="budget review")
    factories.make_message(factories.make_conversation(trip), content="budget for the trip")
    work_flow = factories.make_flow(work, title="Send the budget")
    factories.make_flow(trip, title="Trip budget sheet")

    body = search(api, "budget", context_id=str(work.id))
    assert {hit["id"] for hit in body["results"]} == {str(in_work.id), str(work_flow.id)}
    assert search(api, "budget")["count"] == 4


def test_another_users_data_is_never_found(api, other_api, user, other_user, work):
    mine = factories.make_message(factories.make_conversation(work), content="secret plan one")
    theirs_context = factories.make_context(other_user, name="Theirs")
    theirs = factories.make_message(
        factories.make_conversation(theirs_context), content="secret plan two"
    )
    their_flow = factories.make_flow(theirs_context, title="Secret plan")

    assert [hit["id"] for hit in search(api, "secret plan")["results"]] == [str(mine.id)]
    other_ids = {hit["id"] for hit in search(other_api, "secret plan")["results"]}
    assert other_ids == {str(theirs.id), str(their_flow.id)}
    # Their context as a filter finds nothing of theirs (and nothing of mine).
    assert search(api, "secret", context_id=str(theirs_context.id))["count"] == 0


def test_superseded_messages_are_not_found(api, work):
    conversation = factories.make_conversation(work)
    factories.make_message(conversation, content="old zebra answer", superseded=True)
    current = factories.make_message(conversation, content="new zebra answer")
    assert [hit["id"] for hit in search(api, "zebra")["results"]] == [str(current.id)]


def test_index_follows_updates_and_deletes(api, work):
    conversation = factories.make_conversation(work)
    message = factories.make_message(conversation, content="apples")
    flow = factories.make_flow(work, title="Buy apples")
    assert search(api, "apples")["count"] == 2

    message.content = "pears"
    message.save()
    flow.title = "Buy plums"
    flow.description = "and pears"
    flow.save()
    assert search(api, "apples")["count"] == 0
    assert {hit["id"] for hit in search(api, "pears")["results"]} == {
        str(message.id),
        str(flow.id),
    }

    # An update that leaves the text alone (a streaming reply's status, usage) keeps it found.
    Message.objects.filter(pk=message.pk).update(status="complete", output_tokens=7)
    assert search(api, "pears")["count"] == 2

    message.delete()
    flow.delete()
    assert search(api, "pears")["count"] == 0
    # The same words stored again are found again (the index holds no stale entries).
    again = factories.make_message(conversation, content="pears again")
    assert [hit["id"] for hit in search(api, "pears")["results"]] == [str(again.id)]
    conversation.delete()
    assert search(api, "pears")["count"] == 0


HOSTILE = [
    '"',
    '"unterminated phrase',
    "NEAR(a b)",
    "content:secret",
    "title:x OR",
    "a AND AND b",
    "OR",
    "-",
    "--",
    "-word",
    "*",
    "a*",
    "^start",
    "(((",
    ")",
    "'; DROP TABLE conversations_message; --",
    "\\",
    "{content} : x",
    "a NOT",
    "😀 émoji",
    "%_%",
    "<script>alert(1)</script>",
    "x" * MAX_QUERY_LENGTH,
]


@pytest.mark.parametrize("q", HOSTILE)
def test_query_syntax_from_users_never_breaks_the_search(api, work, q):
    factories.make_message(factories.make_conversation(work), content="a word and a script")
    response = api.get(URL, {"q": q})
    assert response.status_code == 200, (q, response.content)
    assert isinstance(response.json()["results"], list)


def test_phrases_or_and_exclusion(api, work):
    conversation = factories.make_conversation(work)
    red_car = factories.make_message(conversation, content="a red car")
    car_red = factories.make_message(conversation, content="the car is red")
    blue = factories.make_message(conversation, content="a blue boat")

    def ids(q):
        return {hit["id"] for hit in search(api, q)["results"]}

    assert ids('"red car"') == {str(red_car.id)}
    assert ids("red car") == {str(red_car.id), str(car_red.id)}
    assert ids("car or boat") == {str(red_car.id), str(car_red.id), str(blue.id)}
    assert ids("car -blue") == {str(red_car.id), str(car_red.id)}
    assert ids("car -red") == set()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   "}, "q"),
        ({"q": "x" * (MAX_QUERY_LENGTH + 1)}, "q"),
        ({"q": "a\x00b"}, "q"),
        ({"q": "ok", "context_id": "nope"}, "context_id"),
    ],
)
def test_bad_input_answers_400_naming_the_field(api, params, field):
    response = api.get(URL, params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert field in body["errors"]


def test_needs_authentication(anon_api):
    assert anon_api.get(URL, {"q": "x"}).status_code == 401


def test_paginated_like_the_other_lists(api, work):
    conversation = factories.make_conversation(work)
    Message.objects.bulk_create(
        [
            Message(user=work.user, conversation=conversation, role="user", content=f"kiwi {i}")
            for i in range(60)
        ]
    )
    first = search(api, "kiwi")
    assert first["count"] == 60
    assert len(first["results"]) == 50
    assert first["previous"] is None and "page=2" in first["next"]
    second = api.get(first["next"]).json()
    assert len(second["results"]) == 10
    seen = {hit["id"] for hit in first["results"]} | {hit["id"] for hit in second["results"]}
    assert len(seen) == 60


# --- the pieces --------------------------------------------------------------------------


def test_split_highlights():
    marked = f"a {HIGHLIGHT_START}b{HIGHLIGHT_STOP} c {HIGHLIGHT_START}dd{HIGHLIGHT_STOP}"
    assert split_highlights(marked) == ("a b c dd", [(2, 3), (6, 8)])
    # An unbalanced marker is dropped, never shown.
    assert split_highlights(f"x{HIGHLIGHT_STOP}y{HIGHLIGHT_START}z") == ("xyz", [(2, 3)])


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("hello world", '"hello" AND "world"'),
        ('"red car" boat', '"red car" AND "boat"'),
        ("a or b c", '("a" OR "b") AND "c"'),
        ("a -b", '("a") NOT "b"'),
        ("-b", None),
        ('content:x NEAR(y) "z', '"content x" AND "NEAR y" AND "z"'),
        ("*** ^^^", None),
        ("or", None),
    ],
)
def test_fts5_query_quotes_every_term(q, expected):
    assert fts5_query(q) == expected


# --- each database's own machinery ---------------------------------------------------------


def test_sqlite_index_is_rebuilt_when_a_table_rebuild_dropped_its_triggers(api, work):
    if connection.vendor != "sqlite":
        pytest.skip("the FTS5 triggers are SQLite's; PostgreSQL has an index of the table")
    conversation = factories.make_conversation(work)
    factories.make_message(conversation, content="before")
    with connection.cursor() as cursor:
        for name in MESSAGE_FTS.triggers:
            cursor.execute(f"DROP TRIGGER {name}")
    # Written while the triggers are gone: the index does not know it.
    late = factories.make_message(conversation, content="unseen words")
    assert search(api, "unseen")["count"] == 0

    assert sqlite_fts_ensure(connection, [MESSAGE_FTS, FLOW_FTS]) == [MESSAGE_FTS.name]
    assert [hit["id"] for hit in search(api, "unseen")["results"]] == [str(late.id)]
    assert sqlite_fts_ensure(connection, [MESSAGE_FTS, FLOW_FTS]) == []


def test_postgres_search_uses_the_gin_index_of_the_stored_vector(user, work):
    if connection.vendor != "postgresql":
        pytest.skip("tsvector columns are PostgreSQL's; SQLite has FTS5 tables")
    from django.contrib.postgres.search import SearchQuery

    conversation = factories.make_conversation(work)
    message = factories.make_message(conversation, content="indexed words")
    query = SearchQuery("indexed", search_type="websearch", config="english")
    qs = Message.objects.alias(document=MESSAGE_DOCUMENT.expression()).filter(document=query)
    assert list(qs.values_list("id", flat=True)) == [message.id]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = qs.values("id").explain()
    assert MESSAGE_DOCUMENT.index in plan, plan
    # The database keeps the vector in step with the text (a generated column).
    Message.objects.filter(pk=message.pk).update(content="other text")
    assert not qs.exists()


def test_only_the_newest_matches_are_ranked_when_many_match(api, work, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    monkeypatch.setattr("conversations.search.RANK_WINDOW", 2)
    conversation = factories.make_conversation(work)
    start = timezone.now() - timedelta(hours=1)
    texts = [
        "lime lime lime lime",  # oldest, the best match: outside the window
        "lime and more words",
        "lime once among many other words here",
        "lime lime here",  # in the window
        "lime here among other words too",  # newest: in the window
    ]
    messages = [
        factories.make_message(conversation, content=text, created_at=start + timedelta(minutes=i))
        for i, text in enumerate(texts)
    ]
    body = search(api, "lime")
    assert body["count"] == 5
    ids = [hit["id"] for hit in body["results"]]
    # The window (the newest two), best first; then the rest, newest first.
    assert ids == [str(messages[i].id) for i in (3, 4, 2, 1, 0)]
    ranks = [hit["rank"] for hit in body["results"]]
    assert ranks[0] > ranks[1] > 0 and ranks[2:] == [0, 0, 0]
