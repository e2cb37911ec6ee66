"""core.sql: the turn's hot statements, checked against what the ORM reads and
writes on the same database (SQLite in ``make test``, PostgreSQL in CI's second run), and
each Django internal it relies on, pinned to the Django version it was checked on."""

from __future__ import annotations

import gc
import threading
import uuid
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any

import django
import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import FieldDoesNotExist
from django.db import DEFAULT_DB_ALIAS, connection, connections, models, transaction
from django.db.models import AutoField, Model
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.authtoken.models import Token

from accounts.api_tokens import token_lookup, user_for_api_token
from accounts.errors import AuthenticationError
from ai.models import Quota, Reservation, UsageRecord
from ai.pricing import price_for
from ai.providers.base import Usage
from ai.quota.services import quota_get_or_create
from ai.services import usage_record_build, usage_records_create
from conversations.models import Context, Conversation, Message
from conversations.streaming.turn import prepare_turn
from conversations.turn_finish import ReplyOutcome, turn_finish
from core import sql
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


def test_select_where_is_null(user):
    quota_get_or_create(user=user)
    Quota.objects.filter(user=user).update(resets_at=None)
    assert [q.user_id for q in sql.select(Quota, {"resets_at": None})] == [user.pk]


def test_count_counts_in_the_database_and_marks_one_value(user, other_user):
    context = factories.make_context(user)
    first, second, third = (factories.make_conversation(context) for _ in range(3))
    for conversation in (first, second, third):
        factories.make_message(conversation, "assistant", "", status=Message.Status.STREAMING)
    factories.make_message(first, "assistant", "done")
    idle = factories.make_conversation(context)
    factories.make_message(idle, "assistant", "done")
    streaming = {"user": user.pk, "status": Message.Status.STREAMING}
    assert sql.count(Message, streaming, among=("conversation", first.id)) == (3, 1)
    assert sql.count(Message, streaming, among=("conversation", idle.id)) == (3, 0)
    elsewhere = factories.make_conversation(factories.make_context(other_user))
    assert sql.count(Message, streaming, among=("conversation", elsewhere.id)) == (3, 0)
    nobody = {"user": other_user.pk, "status": Message.Status.STREAMING}
    assert sql.count(Message, nobody, among=("conversation", first.id)) == (0, 0)


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
    # The price table is read once a minute per process (ai/pricing.py), not per turn: load it
    # first, as a running server has (another test may just have cleared it).
    price_for("mock", "mock-1", timezone.now())
    with CaptureQueriesContext(connection) as prepared:
        turn, _provider = prepare_turn(user=user, payload=payload)
    outcome = ReplyOutcome(
        status=Message.Status.COMPLETE, finish_reason="stop", content="Hello",
        usage=USAGE,
    )  # fmt: skip
    with CaptureQueriesContext(connection) as finished:
        turn_finish(turn=turn, outcome=outcome, drafts=[], extraction_usage=USAGE)
    # BEGIN/COMMIT included where the backend logs them (SQLite's BEGIN IMMEDIATE).
    # 10: the context's flows the extraction will see are read with the start, so that
    # the reservation covers them (docs/api.md#flow-extraction).
    assert len(prepared.captured_queries) <= 10, [q["sql"][:60] for q in prepared]
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


# --- select's fields: any order (Model.from_db reads values in the model's field order) ----


def test_select_with_fields_in_any_order_loads_each_into_its_own_field(user):
    conversation = factories.make_conversation(factories.make_context(user))
    message = factories.make_message(
        conversation, "assistant", "Hello", status=Message.Status.FAILED, error_code="ai_timeout"
    )
    # Not the model's order (id, ..., content, status, ...), and without the key.
    (plain,) = sql.select(Message, {"id": message.id}, fields=["error_code", "status", "content"])
    assert (plain.id, plain.content, plain.status, plain.error_code) == (
        message.id, "Hello", "failed", "ai_timeout",
    )  # fmt: skip
    assert "role" in plain.get_deferred_fields() and "id" not in plain.get_deferred_fields()
    # Every field, shuffled: each value still lands in its own field.
    names = [f.name for f in Message._meta.concrete_fields][::-1]
    (every,) = sql.select(Message, {"id": message.id}, fields=names)
    orm = Message.objects.get(pk=message.id)
    for field in Message._meta.concrete_fields:
        assert getattr(every, field.attname) == getattr(orm, field.attname), field.name
    # A name given twice is read once; an attname names its field.
    (twice,) = sql.select(Message, {"id": message.id}, fields=("status", "status", "user_id"))
    assert (twice.status, twice.user_id) == ("failed", user.pk)


def test_select_refuses_names_that_are_not_columns(user):
    with pytest.raises(FieldDoesNotExist):
        sql.select(Message, {"user": user.pk}, fields=("nope",))
    with pytest.raises(ValueError, match="Not columns of Context: conversations"):
        sql.select(Context, {"user": user.pk}, fields=("name", "conversations"))


# --- Django internals core/sql.py relies on (its docstring lists them) ----------------

UPGRADE = "re-measure (bench/turn_cost.py) and re-check core/sql.py's private API"


def test_pinned_to_the_django_version_it_was_measured_and_checked_on():
    assert django.VERSION[:2] == (5, 2), f"Django {django.get_version()}: {UPGRADE} on an upgrade"


def test_private_api_prepare_related_fields_for_save(user):
    """1: refuses an unsaved related object; copies a related object's key saved later."""
    assert callable(Model._prepare_related_fields_for_save), UPGRADE
    unsaved = get_user_model()(username="ghost")
    with pytest.raises(ValueError, match=r"insert\(\) prohibited .* unsaved related object"):
        sql.insert([_ledger_line(unsaved)])
    later = get_user_model()(username="later")
    line = _ledger_line(later)
    later.save()
    assert line.user_id is None
    sql.insert([line])
    assert line.user_id == later.pk
    assert UsageRecord.objects.get(user=later).tokens_charged == 3


def test_private_api_concrete_fields_are_the_columns_in_from_db_order():
    """2: ``Options.concrete_fields`` lists the columns; ``from_db`` reads a subset of
    values in that order (what ``_loaded`` sorts ``fields`` into)."""
    fields = Context._meta.concrete_fields
    assert [f.name for f in fields][:2] == ["id", "user"], UPGRADE
    loaded = Context.from_db(DEFAULT_DB_ALIAS, ["id", "name"], [uuid.uuid4(), "n"])
    assert loaded.name == "n" and "description" in loaded.get_deferred_fields()


def test_private_api_converters_are_the_compilers():
    """3: for every column, ``get_col`` + the backend's and the expression's
    ``get_db_converters`` are the converters the ORM's compiler applies."""
    for model in (Message, Quota, Reservation, get_user_model(), Token):
        names = tuple(f.name for f in model._meta.concrete_fields)
        ours = sql._converters(connections[DEFAULT_DB_ALIAS], model, names)
        compiler = model.objects.all().query.get_compiler(using=DEFAULT_DB_ALIAS)
        compiler.setup_query()
        columns = [col for col, _select, _alias in compiler.select]
        theirs = compiler.get_converters(columns)
        for i, (col, converters) in enumerate(ours):
            assert col == columns[i], UPGRADE
            expected = theirs[i][0] if i in theirs else []
            # SQLite's DecimalField converter is a closure made per call: same function.
            assert [_code(c) for c in converters] == [_code(c) for c in expected], (
                model,
                col,
                UPGRADE,
            )


def _code(converter: Any) -> Any:
    """The code a converter runs (SQLite makes its decimal converter anew per call)."""
    return getattr(converter, "__code__", None) or converter


def test_private_api_converter_cache_lives_on_each_threads_connection(user):
    """4: the connection object takes the cache in its ``__dict__``; another thread has
    its own connection object, hence its own cache (the converters are bound to it)."""
    factories.make_context(user)
    sql.select(Context, {"user": user.pk})
    mine = connections[DEFAULT_DB_ALIAS]
    assert sql.CONVERTERS_ATTRIBUTE in vars(mine), UPGRADE
    theirs: list[Any] = []

    def work() -> None:
        try:
            sql.select(Context, {"user": user.pk})
            theirs.append(connections[DEFAULT_DB_ALIAS])
        finally:
            connections.close_all()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert theirs and theirs[0] is not mine
    cached = vars(theirs[0])[sql.CONVERTERS_ATTRIBUTE]
    assert cached is not vars(mine)[sql.CONVERTERS_ATTRIBUTE]
    for converters in cached.values():
        for _col, bound in converters:
            assert all(getattr(f, "__self__", None) is not mine.ops for f in bound)


def test_private_api_backend_features_and_quoting():
    """5: the two backend attributes the statements are built with."""
    wrapper = connections[DEFAULT_DB_ALIAS]
    assert isinstance(wrapper.features.has_select_for_update, bool), UPGRADE
    assert wrapper.features.has_select_for_update == (wrapper.vendor != "sqlite")
    assert wrapper.ops.quote_name("ai_quota") == '"ai_quota"'


def test_private_api_autofield_isinstance_matches_every_auto_key():
    """6: ``insert`` leaves out an unset auto-increment key, found by ``isinstance``."""
    assert isinstance(UsageRecord._meta.pk, models.BigAutoField)
    assert isinstance(UsageRecord._meta.pk, AutoField), UPGRADE
    assert isinstance(models.SmallAutoField(), AutoField), UPGRADE
    assert not isinstance(Message._meta.pk, AutoField)


def _ledger_line(owner: Any) -> UsageRecord:
    return usage_record_build(
        user=owner, provider="mock", model="m", purpose="reply", input_tokens=1,
        output_tokens=2, estimated=False, tokens_charged=3, outcome="complete",
    )  # fmt: skip
