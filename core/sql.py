"""Plain SQL for the chat turn's hot statements, with names and values taken from the models.

Every chat turn runs the same few statements: authenticate (the token, its user), lock the
quota row, find the conversation, check the user's streaming replies, store the messages,
reserve; then store the reply, the usage ledger and settle. Measured in process, the ORM
spent most of a turn's fixed CPU *building* them: ``bench/turn_cost.py`` went from 7.0-8.3
ms per turn on SQLite (13.1 ms on PostgreSQL) to 3.5-3.9 ms (5.2 ms) with these four
functions, and each one pays for itself on its own (CPU per call, ``thread_time``, best
of five rounds of 1,000, Django 5.2, SQLite and a local PostgreSQL, 2026-12):

==========================================  ===============  ==========================
statement                                   here, SQLite/PG  ORM, SQLite/PG
==========================================  ===============  ==========================
:func:`select`: the quota row FOR UPDATE    46 / 185 µs      244 / 458 µs
:func:`select_values`: the streaming check  27 / 121 µs      342 / 465 µs
:func:`insert`: the turn's two messages     145 / 276 µs     281 / 727 µs (bulk_create)
:func:`update`: the reservation (``Add``)   25 / 121 µs      288 / 495 µs (``F() + n``)
==========================================  ===============  ==========================

The streaming check was measured as ``select_values``, which read one value per streaming
reply of the user; it is now :func:`count`, one row whatever their number (a user with
hundreds of replies streaming, as the benchmark's, paid a UUID conversion each on every
turn), and ``select_values`` is gone.

Everything else is the ORM. What these functions keep of Django:

- its connection and cursor: the transaction (``atomic``), query logging and
  ``assertNumQueries``, execute wrappers, and database errors mapped to Django's;
- the models' own table and column names (``db_table``, ``Field.column``), so a rename in
  a model and its migration is a rename here too;
- each field's conversion of values to the database (``get_db_prep_save``: UUIDs and time
  zones on SQLite and PostgreSQL alike), its ``pre_save`` (``auto_now``,
  ``auto_now_add``), and the backend's converters on the way back; instances are built by
  ``Model.from_db`` as the ORM builds them.

Injection: statements are built only from the models' quoted table and column names (a
field name is resolved through ``_meta.get_field``, so an unknown one raises) and ``%s``
placeholders; every value travels as a parameter (hence the ``noqa: S608``).

What it leaves out: lookups other than equality, joins, and model signals (the models
written through here have no receivers).

Django internals relied upon (not documented as public API; each is checked, with the
Django version these figures were measured on, by ``tests/test_plain_sql.py``: on a
Django upgrade, re-measure and re-check them):

1. ``Model._prepare_related_fields_for_save(operation_name=...)`` (:func:`insert`): what
   ``save()`` and ``bulk_create()`` call to refuse an unsaved related object and to copy a
   related object's key into its ``*_id`` attribute.
2. ``Options.concrete_fields`` (:func:`select`, :func:`insert`): the model's columns, in the
   order ``Model.from_db`` reads values in.
3. ``Field.get_col(alias)``, ``Expression.get_db_converters(connection)`` and
   ``connection.ops.get_db_converters(expression)`` (:func:`select`): the converters the
   ORM's compiler applies to each column read, each called as
   ``convert(value, expression, connection)``.
4. A cache of those converters in the connection object's own ``__dict__`` (they are bound
   to it): a connection wrapper takes attributes and is one per thread. Measured: 100 µs
   of the 4 reads of a turn (190 µs with it, 300 µs without).
5. ``connection.features.has_select_for_update`` and ``connection.ops.quote_name``.
6. ``AutoField`` matching every auto-increment key class in ``isinstance``
   (``BigAutoField`` and ``SmallAutoField`` too, through ``AutoFieldMeta``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import AutoField, Field, Model

M = TypeVar("M", bound=Model)

#: Where the converters are kept on a connection object (see :func:`_converters`).
CONVERTERS_ATTRIBUTE = "_plain_sql_converters"


@dataclass(frozen=True, slots=True)
class Add:
    """``column = column + amount`` in :func:`update` (a counter moved atomically)."""

    amount: int


def _field(model: type[Model], name: str) -> Field:
    """The model's field called ``name`` (``pk`` too); FieldDoesNotExist otherwise."""
    if name == "pk":
        return model._meta.pk  # type: ignore[return-value]
    return model._meta.get_field(name)  # type: ignore[return-value]


def _conn() -> Any:
    """This thread's connection itself (``django.db.connection`` is a proxy to it, and
    each attribute read through the proxy costs a lookup)."""
    return connections[DEFAULT_DB_ALIAS]


def _table(conn: Any, model: type[Model]) -> str:
    """The model's quoted table name."""
    return conn.ops.quote_name(model._meta.db_table)


def _where(conn: Any, model: type[Model], where: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """``a = %s AND b IS NULL ...`` for ``where`` (field name to value), and its params."""
    if not where:
        raise ValueError("A plain statement names the rows it touches: where is empty.")
    clauses, params = [], []
    for name, value in where.items():
        field = _field(model, name)
        if value is None:
            clauses.append(f"{conn.ops.quote_name(field.column)} IS NULL")
        else:
            clauses.append(f"{conn.ops.quote_name(field.column)} = %s")
            params.append(field.get_db_prep_save(value, conn))
    return " AND ".join(clauses), params


@functools.cache
def _loaded(model: type[Model], fields: tuple[str, ...] | None) -> tuple[tuple[str, ...], tuple]:
    """The field names :func:`select` reads for ``fields`` (None: all), and their attnames.

    ``Model.from_db`` takes a subset of the fields' values in the model's field order, so
    the names are put in that order whatever order they were given in, the primary key
    is always among them (as with ``.only()``), and each is read once. A name that is not
    a column of the model raises ValueError.
    """
    concrete = model._meta.concrete_fields
    if fields is None:
        chosen = list(concrete)
    else:
        wanted = {_field(model, name) for name in fields} | {model._meta.pk}
        if not wanted <= set(concrete):
            names = sorted(f.name for f in wanted - set(concrete))
            raise ValueError(f"Not columns of {model.__name__}: {', '.join(names)}.")
        chosen = [f for f in concrete if f in wanted]
    return tuple(f.name for f in chosen), tuple(f.attname for f in chosen)


def _converters(conn: Any, model: type[Model], names: tuple[str, ...]) -> list[tuple]:
    """Per selected field: (column expression, converters), as the ORM's compiler uses
    them. Kept on the connection object itself (backend converters are bound to it): a
    cache elsewhere would keep a finished thread's connection, and its socket, alive."""
    cache = conn.__dict__.setdefault(CONVERTERS_ATTRIBUTE, {})
    key = (model, names)
    found = cache.get(key)
    if found is None:
        found = cache[key] = []
        for name in names:
            col = _field(model, name).get_col(model._meta.db_table)
            found.append((col, conn.ops.get_db_converters(col) + col.get_db_converters(conn)))
    return found


def _convert(conn: Any, model: type[Model], names: tuple[str, ...], row: Sequence[Any]) -> list:
    """A raw row of ``names`` converted to Python values as the ORM would."""
    values = list(row)
    for i, (col, converters) in enumerate(_converters(conn, model, names)):
        for convert in converters:
            values[i] = convert(values[i], col, conn)
    return values


def _rows(
    conn: Any, model: type[Model], names: tuple[str, ...], where: Mapping[str, Any], suffix: str
) -> list[tuple]:
    """The raw rows of ``SELECT names FROM model WHERE where`` + ``suffix``."""
    columns = ", ".join(conn.ops.quote_name(_field(model, n).column) for n in names)
    clause, params = _where(conn, model, where)
    sql = f"SELECT {columns} FROM {_table(conn, model)} WHERE {clause}{suffix}"  # noqa: S608
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def select(
    model: type[M],
    where: Mapping[str, Any],
    *,
    fields: Sequence[str] | None = None,
    limit: int | None = None,
    for_update: bool = False,
) -> list[M]:
    """Instances of ``model`` whose fields equal ``where`` (a value of None: ``IS NULL``).

    ``fields``: the fields to load, in any order (the primary key is always loaded); the
    others are deferred, as with ``.only()``. None loads all. ``for_update`` locks the rows
    where the database can (``SELECT ... FOR UPDATE``; SQLite's write transaction already
    holds the lock): call it inside ``transaction.atomic`` then.
    """
    conn = _conn()
    names, attnames = _loaded(model, tuple(fields) if fields is not None else None)
    suffix = f" LIMIT {int(limit)}" if limit is not None else ""
    if for_update and conn.features.has_select_for_update:
        suffix += " FOR UPDATE"
    rows = _rows(conn, model, names, where, suffix)
    return [model.from_db(conn.alias, attnames, _convert(conn, model, names, row)) for row in rows]


def select_through(
    model: type[M], *, via: type[Model], fk: str, where: Mapping[str, Any]
) -> M | None:
    """The ``model`` row that the ``via`` row found by ``where`` points to by its foreign key
    ``fk``, all fields loaded, in one statement (``... WHERE pk = (SELECT fk FROM via
    WHERE ...)``); None when either row is missing."""
    conn = _conn()
    names, attnames = _loaded(model, None)
    columns = ", ".join(conn.ops.quote_name(_field(model, n).column) for n in names)
    clause, params = _where(conn, via, where)
    pk = conn.ops.quote_name(model._meta.pk.column)
    fk_column = conn.ops.quote_name(_field(via, fk).column)
    sql = (
        f"SELECT {columns} FROM {_table(conn, model)} WHERE {pk} = "  # noqa: S608
        f"(SELECT {fk_column} FROM {_table(conn, via)} WHERE {clause})"
    )
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    return model.from_db(conn.alias, attnames, _convert(conn, model, names, row))


def count(
    model: type[Model], where: Mapping[str, Any], *, among: tuple[str, Any]
) -> tuple[int, int]:
    """How many rows match ``where``, and how many of those also have ``among``'s field
    equal to its value, in one statement that returns one row (no row reaches Python)."""
    conn = _conn()
    clause, params = _where(conn, model, where)
    name, value = among
    field = _field(model, name)
    column = conn.ops.quote_name(field.column)
    sql = (
        f"SELECT COUNT(*), COALESCE(SUM(CASE WHEN {column} = %s THEN 1 ELSE 0 END), 0) "  # noqa: S608
        f"FROM {_table(conn, model)} WHERE {clause}"
    )
    with conn.cursor() as cursor:
        cursor.execute(sql, [field.get_db_prep_save(value, conn), *params])
        total, matching = cursor.fetchone()
    return int(total), int(matching)


def insert(objs: Iterable[Model]) -> None:
    """Store unsaved instances of one model in one ``INSERT``, as ``bulk_create`` would
    (related fields checked and resolved, defaults, ``auto_now``/``auto_now_add``
    applied); an auto-increment key left unset is not read back."""
    objs = list(objs)
    if not objs:
        return
    conn = _conn()
    model = type(objs[0])
    fields = [
        f
        for f in model._meta.concrete_fields
        if not (isinstance(f, AutoField) and getattr(objs[0], f.attname) is None)
    ]
    rows = []
    for obj in objs:
        if type(obj) is not model:
            raise TypeError("insert() takes instances of one model")
        obj._prepare_related_fields_for_save(operation_name="insert")
        rows.extend(f.get_db_prep_save(f.pre_save(obj, True), conn) for f in fields)
    columns = ", ".join(conn.ops.quote_name(f.column) for f in fields)
    one = "(" + ", ".join(["%s"] * len(fields)) + ")"
    rows_sql = ", ".join([one] * len(objs))
    sql = f"INSERT INTO {_table(conn, model)} ({columns}) VALUES {rows_sql}"  # noqa: S608
    with conn.cursor() as cursor:
        cursor.execute(sql, rows)
    for obj in objs:
        obj._state.adding = False
        obj._state.db = conn.alias


def update(model: type[Model], values: Mapping[str, Any], where: Mapping[str, Any]) -> int:
    """``UPDATE`` the rows whose fields equal ``where``; returns how many matched.

    A value of :class:`Add` moves a counter in the database. ``auto_now`` fields are not
    set by themselves here: name them in ``values``.
    """
    conn = _conn()
    sets, params = [], []
    for name, value in values.items():
        field = _field(model, name)
        col = conn.ops.quote_name(field.column)
        if isinstance(value, Add):
            sets.append(f"{col} = {col} + %s")
            params.append(value.amount)
        else:
            sets.append(f"{col} = %s")
            params.append(field.get_db_prep_save(value, conn))
    clause, where_params = _where(conn, model, where)
    sets_sql = ", ".join(sets)
    sql = f"UPDATE {_table(conn, model)} SET {sets_sql} WHERE {clause}"  # noqa: S608
    with conn.cursor() as cursor:
        cursor.execute(sql, params + where_params)
        return cursor.rowcount
