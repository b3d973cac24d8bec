"""SQLite tables derived from the result records of :mod:`probprune.records` (the schema is written once).

A record's table has one column per field, in field order: the SQL type from the field's
annotation (``int``/``bool`` → ``INTEGER``, ``float`` → ``REAL``, ``str``/a ``Literal`` of strings →
``TEXT``), ``NOT NULL`` unless the annotation admits ``None``, and the primary key from
:data:`probprune.records.KEYS` (one key column: ``INTEGER PRIMARY KEY``; several: a table
constraint). Values cross the boundary through :func:`to_sql` (``bool`` → 0/1, NaN → NULL) and
:func:`from_sql` (0/1 → ``bool`` where the field is a ``bool``); nothing else is renamed or converted.

>>> from probprune.records import SlopeRow
>>> columns(SlopeRow)[:3]
(('prune_index', 'INTEGER PRIMARY KEY'), ('method', 'TEXT NOT NULL'), ('n_widths', 'INTEGER NOT NULL'))
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from probprune.records import KEYS

__all__ = ["columns", "create_table", "from_sql", "names", "to_sql", "values"]

R = TypeVar("R")

_SQL = {int: "INTEGER", bool: "INTEGER", float: "REAL", str: "TEXT"}


def _base(tp: Any) -> tuple[type, bool]:
    """``(python type, nullable)`` of an annotation: ``X`` or ``X | None``, a Literal read as its values' type."""
    nullable = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        nullable = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            raise TypeError(f"record field type {tp!r}: one type (or that type | None) expected")
        tp = args[0]
    if typing.get_origin(tp) is typing.Literal:
        tp = type(typing.get_args(tp)[0])
    if tp not in _SQL:
        raise TypeError(f"record field type {tp!r}: no SQL type for it")
    return tp, nullable


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, type, bool], ...]:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, *_base(hints[f.name])) for f in dataclasses.fields(cls))


@functools.cache
def columns(cls: type, key: tuple[str, ...] | None = None) -> tuple[tuple[str, str], ...]:
    """``(name, SQL declaration)`` of every field of the record ``cls``, in field order.

    Args:
        cls: a record of :mod:`probprune.records`.
        key: the primary key (default ``KEYS[cls]``); one column becomes ``INTEGER PRIMARY KEY``.
    """
    key = KEYS.get(cls, ()) if key is None else key
    out = []
    for name, tp, nullable in _fields(cls):
        decl = _SQL[tp]
        if len(key) == 1 and name == key[0]:
            decl += " PRIMARY KEY"
        elif not nullable:
            decl += " NOT NULL"
        out.append((name, decl))
    return tuple(out)


def names(cls: type) -> list[str]:
    """The column names of ``cls``'s table (its field names)."""
    return [n for n, _, _ in _fields(cls)]


def create_table(table: str, cols: Sequence[tuple[str, str]], key: Sequence[str] = ()) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for ``cols``; a key of several columns becomes a table constraint."""
    body = ", ".join(f"{c} {t}" for c, t in cols)
    extra = f", PRIMARY KEY ({', '.join(key)})" if len(key) > 1 else ""
    return f"CREATE TABLE IF NOT EXISTS {table} ({body}{extra})"


def to_sql(v: Any) -> Any:
    """A value as SQLite stores it: ``bool`` → 0/1, NaN → NULL, anything else as it is."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float) and v != v:  # NaN is stored as NULL
        return None
    return v


def values(record: Any) -> list[Any]:
    """The SQL values of a record, in column order."""
    return [to_sql(getattr(record, n)) for n in names(type(record))]


def from_sql(cls: type[R], row: Mapping[str, Any] | Sequence[Any]) -> R:
    """The record ``cls`` of one stored row (a mapping by column name, or values in column order)."""
    vals = dict(row) if isinstance(row, Mapping) else dict(zip(names(cls), row))
    kw = {}
    for name, tp, _ in _fields(cls):  # type: ignore[arg-type]  # a record class is hashable
        v = vals.get(name)
        kw[name] = bool(v) if tp is bool and v is not None else v
    return cls(**kw)
