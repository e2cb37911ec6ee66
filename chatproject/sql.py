"""Plain SQL for the chat turn's hot statements, with names and values taken from the models.

Every chat turn runs the same few statements (lock the quota row, store the messages,
reserve, then store the reply, the usage ledger and settle). Measured in process
(``bench/turn_cost.py``), the ORM spent 300-800 µs of CPU *building* each of them, while
SQLite ran each in 20-70 µs: query building was most of a turn's fixed cost. These helpers
write such a statement directly, and keep everything else Django gives:

- Django's connection and cursor: the transaction (``atomic``), query logging and
  ``assertNumQueries``, execute wrappers, and database errors mapped to Django's;
- the models' own table and column names (``db_table``, ``Field.column``), so a rename
  in a model and its migration is a rename here too;
- each field's own conversion of values to the database (``get_db_prep_save``, which
  handles UUIDs and time zones on SQLite and PostgreSQL alike), its ``pre_save``
  (``auto_now``, ``auto_now_add``), and the backend's converters on the way back.

Injection: statements are built only from the models' quoted table and column names
(a field name is resolved through ``_meta.get_field``, so an unknown one raises) and
``%s`` placeholders; every value travels as a parameter (hence the ``noqa: S608``).

What it leaves out: lookups other than equality, joins, and model signals (the models
written through here have no receivers). Use it for a measured hot statement; the ORM
stays the way to write everything else.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Field, Model
from django.db.models.fields import AutoFieldMixin

M = TypeVar("M", bound=Model)


@dataclass(frozen=True, slots=True)
class Add:
    """``column = column + amount`` in :func:`update` (a counter moved atomically)."""

    amount: int


def _field(model: type[Model], name: str) -> Field:
    if name == "pk":
        return model._meta.pk  # type: ignore[return-value]
    return model._meta.get_field(name)  # type: ignore[return-value]


def _conn() -> Any:
    """This thread's connection itself (``django.db.connection`` is a proxy to it, and
    each attribute read through the proxy costs a lookup)."""
    return connections[DEFAULT_DB_ALIAS]


def _table(conn: Any, model: type[Model]) -> str:
    return conn.ops.quote_name(model._meta.db_table)


def _where(conn: Any, model: type[Model], where: Mapping[str, Any]) -> tuple[str, list[Any]]:
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


def _converters(conn: Any, model: type[Model], names: tuple[str, ...]) -> list[tuple]:
    """Per selected field: (column expression, converters), as the ORM's compiler uses
    them. Kept on the connection itself (backend converters are bound to it): a cache
    elsewhere would keep a finished thread's connection, and its socket, alive."""
    cache = conn.__dict__.setdefault("_plain_sql_converters", {})
    key = (model, names)
    found = cache.get(key)
    if found is None:
        found = cache[key] = []
        for name in names:
            col = _field(model, name).get_col(model._meta.db_table)
            found.append((col, conn.ops.get_db_converters(col) + col.get_db_converters(conn)))
    return found


def _convert(conn: Any, model: type[Model], names: tuple[str, ...], row: Sequence[Any]) -> list:
    values = list(row)
    for i, (col, converters) in enumerate(_converters(conn, model, names)):
        for convert in converters:
            values[i] = convert(values[i], col, conn)
    return values


def select(
    model: type[M],
    where: Mapping[str, Any],
    *,
    fields: Sequence[str] | None = None,
    limit: int | None = None,
    for_update: bool = False,
) -> list[M]:
    """Instances of ``model`` whose fields equal ``where``, with ``fields`` loaded (all by
    default; the others are deferred, as with ``.only()``). ``for_update`` locks the rows
    where the database can (``SELECT ... FOR UPDATE``; SQLite's write transaction already
    holds the lock). Call it inside ``transaction.atomic`` when locking."""
    conn = _conn()
    names = tuple(fields) if fields is not None else _all_fields(model)
    attnames = [_field(model, name).attname for name in names]
    suffix = f" LIMIT {int(limit)}" if limit is not None else ""
    if for_update and conn.features.has_select_for_update:
        suffix += " FOR UPDATE"
    rows = _rows(conn, model, names, where, suffix)
    return [model.from_db(conn.alias, attnames, _convert(conn, model, names, row)) for row in rows]


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


@functools.cache
def _all_fields(model: type[Model]) -> tuple[str, ...]:
    return tuple(f.name for f in model._meta.concrete_fields)


def select_values(model: type[Model], name: str, where: Mapping[str, Any]) -> list[Any]:
    """The values of one field of the rows whose fields equal ``where``."""
    conn = _conn()
    names = (name,)
    return [_convert(conn, model, names, row)[0] for row in _rows(conn, model, names, where, "")]


def insert(objs: Iterable[Model]) -> None:
    """Store unsaved instances of one model in one ``INSERT``, as ``bulk_create`` would
    (related fields resolved, defaults, ``auto_now``/``auto_now_add`` applied); an
    auto-increment key left unset is not read back."""
    objs = list(objs)
    if not objs:
        return
    conn = _conn()
    model = type(objs[0])
    fields = [
        f
        for f in model._meta.concrete_fields
        if not (isinstance(f, AutoFieldMixin) and getattr(objs[0], f.attname) is None)
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
