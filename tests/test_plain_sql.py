"""chatproject.sql: the turn's hot statements, checked against what the ORM reads and
writes on the same database (SQLite in ``make test``, PostgreSQL in CI's second run)."""

from __future__ import annotations

import gc
import threading
import uuid
import weakref
from datetime import UTC, datetime, timedelta

import pytest
from django.db import DEFAULT_DB_ALIAS, connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token

from accounts.api_tokens import token_lookup, user_for_api_token
from accounts.errors import AuthenticationError
from ai.models import Quota, Reservation, UsageRecord
from ai.providers.base import Usage
from ai.quota.services import quota_get_or_create
from ai.services import usage_record_build, usage_records_create
from chatproject import sql
from conversations.models import Context, Conversation, Message
from conversations.services import ReplyOutcome, turn_finish
from conversations.streaming.turn import prepare_turn
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)

USAGE = Usage(input_tokens=10, output_tokens=5)


def test_select_reads_every_field_as_the_orm_does(user):
    context = factories.make_context(user, name="Work", instructions="Be brief.")
    conversation = factories.make_conversation(context, title="Plan")
    message = factories.make_message(
        conversation, "assistant", "Hi", status=Message.Status.FAILED, error_retryable=True
    )
    (plain,) = sql.select(Message, {"id": message.id, "user": user.pk})
    orm = Message.objects.get(pk=message.id)
    for field in Message._meta.concrete_fields:
        assert getattr(plain, field.attname) == getattr(orm, field.attname), field.name
    assert isinstance(plain.id, uuid.UUID) and isinstance(plain.conversation_id, uuid.UUID)
    assert plain.created_at.tzinfo is not None and plain.error_retryable is True
    assert plain._state.adding is False and plain._state.db == DEFAULT_DB_ALIAS


def test_select_with_fields_defers_the_others_and_filters_by_every_key(user):
    other = factories.make_user()
    context = factories.make_context(user, name="Mine", instructions="x")
    factories.make_context(other, name="Mine")
    (plain,) = sql.select(Context, {"id": context.id, "user": user.pk}, fields=("id", "name"))
    assert plain.name == "Mine"
    assert plain.get_deferred_fields() >= {"instructions", "description"}
    assert plain.instructions == "x"  # a deferred field still loads on access
    assert sql.select(Context, {"id": context.id, "user": other.pk}) == []
    assert sql.select(Context, {"user": other.pk, "name": "nope"}) == []


def test_select_values_and_is_null(user):
    conversation = factories.make_conversation(factories.make_context(user))
    factories.make_message(conversation, "assistant", "", status=Message.Status.STREAMING)
    factories.make_message(conversation, "user", "hi")
    values = sql.select_values(
        Message, "conversation", {"user": user.pk, "status": Message.Status.STREAMING}
    )
    assert values == [conversation.id]
    quota_get_or_create(user=user)
    Quota.objects.filter(user=user).update(resets_at=None)
    assert [q.user_id for q in sql.select(Quota, {"resets_at": None})] == [user.pk]


def test_insert_writes_what_bulk_create_would(user):
    context = factories.make_context(user)
    before = timezone.now()
    conversation = Conversation(user=user, context=context, title="T")
    sql.insert([conversation])
    assert conversation._state.adding is False
    stored = Conversation.objects.get(pk=conversation.pk)
    assert stored.title == "T" and stored.context_id == context.id
    # auto_now_add and auto_now were applied, on the instance and in the row alike.
    assert before <= stored.created_at == conversation.created_at
    assert before <= stored.updated_at == conversation.updated_at
    when = datetime(2026, 1, 2, 3, 4, 5, 600_000, tzinfo=UTC)
    first = Message(user=user, conversation=conversation, role="user", content="a", created_at=when)
    second = Message(
        user=user,
        conversation=conversation,
        role="assistant",
        status=Message.Status.STREAMING,
        created_at=when + timedelta(microseconds=1),
    )
    sql.insert([first, second])
    rows = list(Message.objects.filter(conversation=conversation).order_by("created_at"))
    assert [(m.id, m.role, m.status, m.created_at) for m in rows] == [
        (first.id, "user", "complete", when),
        (second.id, "assistant", "streaming", when + timedelta(microseconds=1)),
    ]


def test_insert_leaves_an_auto_key_to_the_database_and_refuses_mixed_models(user):
    line = usage_record_build(
        user=user, provider="mock", model="m", purpose="reply", input_tokens=1,
        output_tokens=2, estimated=True, tokens_charged=3, outcome="complete",
    )  # fmt: skip
    usage_records_create([line, usage_record_build(
        user=user, provider="mock", model="m", purpose="extraction", input_tokens=4,
        output_tokens=5, estimated=False, tokens_charged=9, outcome="failed",
        error_code="bad_output",
    )])  # fmt: skip
    rows = UsageRecord.objects.filter(user=user).order_by("id")
    assert [(r.purpose, r.tokens_charged, r.estimated, r.error_code) for r in rows] == [
        ("reply", 3, True, ""),
        ("extraction", 9, False, "bad_output"),
    ]
    with pytest.raises(TypeError):
        sql.insert([Context(user=user, name="a"), Conversation(user=user)])
    with pytest.raises(ValueError, match="where is empty"):
        sql.update(UsageRecord, {"tokens_charged": 0}, {})
    assert UsageRecord.objects.filter(tokens_charged=0).count() == 0


def test_update_sets_adds_and_counts_matched_rows(user):
    quota = quota_get_or_create(user=user)
    now = timezone.now()
    matched = sql.update(
        Quota,
        {"requests_reserved": sql.Add(1), "tokens_reserved": sql.Add(250), "updated_at": now},
        {"id": quota.pk},
    )
    assert matched == 1
    quota.refresh_from_db()
    assert (quota.requests_reserved, quota.tokens_reserved, quota.updated_at) == (1, 250, now)
    message = factories.make_message(
        factories.make_conversation(factories.make_context(user)), "assistant", "x",
        status=Message.Status.STREAMING,
    )  # fmt: skip
    where = {"id": message.id, "status": Message.Status.STREAMING, "cancel_requested": False}
    assert sql.update(Message, {"content": "y"}, where) == 1
    Message.objects.filter(pk=message.id).update(cancel_requested=True)
    assert sql.update(Message, {"content": "z"}, where) == 0
    assert Message.objects.get(pk=message.id).content == "y"


def test_select_for_update_locks_where_the_database_can(user):
    quota_get_or_create(user=user)
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        sql.select(Quota, {"user": user.pk}, for_update=True)
    (select,) = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert select.endswith("FOR UPDATE") == connection.features.has_select_for_update


def test_a_finished_threads_connection_is_not_kept_alive(user):
    """Per-thread converters live on the connection: a cache holding it would keep its
    socket open after the thread ends (PostgreSQL: "too many clients")."""
    factories.make_context(user)
    refs: list[weakref.ref] = []

    def work() -> None:
        assert len(sql.select(Context, {"user": user.pk})) == 1
        refs.append(weakref.ref(connections[DEFAULT_DB_ALIAS]))
        connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    gc.collect()
    assert refs and refs[0]() is None


def test_token_lookup_and_authentication(user):
    key = factories.make_token(user)
    token = token_lookup(key)
    assert token is not None and token.user == user and token.key == key
    assert token_lookup("0" * 40) is None
    assert user_for_api_token(key) == user
    assert token.key == Token.objects.get(key=key).key
    with pytest.raises(AuthenticationError, match="Invalid token"):
        user_for_api_token("nope")
    user.is_active = False
    user.save()
    with pytest.raises(AuthenticationError, match="inactive"):
        user_for_api_token(key)


def test_a_turn_runs_a_bounded_number_of_statements(user):
    """The turn's fixed cost is its statements (bench/turn_cost.py): a regression guard."""
    context = factories.make_context(user)
    quota_get_or_create(user=user)
    payload = {"context_id": str(context.id), "messages": [{"role": "user", "content": "Hi"}]}
    with CaptureQueriesContext(connection) as prepared:
        turn, _provider = prepare_turn(user=user, payload=payload)
    outcome = ReplyOutcome(
        status=Message.Status.COMPLETE, finish_reason="stop", content="Hello",
        usage=USAGE,
    )  # fmt: skip
    with CaptureQueriesContext(connection) as finished:
        turn_finish(turn=turn, outcome=outcome, drafts=[], extraction_usage=USAGE)
    # BEGIN/COMMIT included where the backend logs them (SQLite's BEGIN IMMEDIATE).
    assert len(prepared.captured_queries) <= 9, [q["sql"][:60] for q in prepared]
    assert len(finished.captured_queries) <= 7, [q["sql"][:60] for q in finished]
    reservation = Reservation.objects.get(pk=turn.reservation_id)
    assert reservation.status == Reservation.Status.SETTLED
    quota = Quota.objects.get(user=user)
    assert (quota.requests_used, quota.requests_reserved, quota.tokens_reserved) == (1, 0, 0)
    assert quota.tokens_used == reservation.tokens_charged == 2 * USAGE.total


def test_the_streaming_check_reads_an_index_not_all_of_the_users_messages(user):
    """Every turn asks which of its user's replies are streaming; with a long history that
    must stay an index lookup of the few streaming rows (message_user_streaming_idx), not a
    walk over all of the user's messages."""
    context = factories.make_context(user)
    conversation = factories.make_conversation(context)
    Message.objects.bulk_create(
        Message(user=user, conversation=conversation, role="user", content="x") for _ in range(300)
    )
    quota_get_or_create(user=user)
    statements: list[tuple[str, tuple]] = []

    def record(execute, sql_text, params, many, context_):
        statements.append((sql_text, tuple(params or ())))
        return execute(sql_text, params, many, context_)

    payload = {"context_id": str(context.id), "messages": [{"role": "user", "content": "Hi"}]}
    with connection.execute_wrapper(record):
        prepare_turn(user=user, payload=payload)
    (check, params), *_ = [
        (s, p)
        for s, p in statements
        if s.startswith("SELECT") and "conversations_message" in s and '"status"' in s
    ]
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("ANALYZE")
            cursor.execute("EXPLAIN QUERY PLAN " + check, params)
            plan = " ".join(str(row) for row in cursor.fetchall())
        else:
            cursor.execute("ANALYZE conversations_message")
            cursor.execute("EXPLAIN " + check, params)
            plan = " ".join(row[0] for row in cursor.fetchall())
    assert "message_user_streaming_idx" in plan, plan
