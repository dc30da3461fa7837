"""Hot reads compiled once: the ORM writes a queryset's SQL the first time, the cursor runs it.

Django builds and compiles a query in Python every time one runs: 0.5-2.5 ms per statement on
a small VM, ten or more times what SQLite then takes to answer it. The reads on the way from
Send to the vendor have one shape each and change only their values, so each is a `Compiled`:
its queryset is built once per database connection from sample values (the rule stays in the
queryset, written with the ORM), and each call puts the real values in the parameter list, runs
the SQL through the connection's cursor (the same wrappers, transaction and instrumentation as
the ORM's own statements) and turns the rows into values or model instances with the ORM's own
converters and populators.

Only for shapes the values cannot change: a value the ORM treats specially (None, a list) is
refused rather than compiled into the wrong SQL.
"""

from __future__ import annotations

import datetime
import itertools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, QuerySet
from django.db.models.query import get_related_populators
from django.db.models.sql.compiler import SQLCompiler

Row = tuple[Any, ...]
T = TypeVar("T", bound=Model)
_samples = itertools.count(1)
_INTEGERS = {"AutoField", "BigAutoField", "SmallAutoField", "IntegerField", "BigIntegerField",
             "PositiveIntegerField", "PositiveBigIntegerField"}


def _sample(field: Field[Any, Any]) -> Any:
    """A value of the field's type that no constant of a query can equal."""
    n = next(_samples)
    target = getattr(field, "target_field", None) if field.is_relation else None
    kind = (target or field).get_internal_type()
    if kind == "UUIDField":
        return uuid.UUID(int=0xC0FFEE << 96 | n)
    if kind == "DateTimeField":
        return datetime.datetime(1901, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(
            seconds=n * 7919)
    if kind in _INTEGERS:
        return -(7_000_000_000 + n)
    if kind in ("CharField", "TextField"):
        return f"compiled sample {n} \u2042"
    raise ImproperlyConfigured(f"Compiled: no sample value for a {kind}.")


@dataclass
class _Shape:
    """One connection's compiled statement, and what turns its rows into results."""

    sql: str
    params: tuple[Any, ...]
    slots: list[tuple[int, str]]  # (index in params, value name)
    compiler: SQLCompiler
    converters: Any
    # For objects(): the model, its columns' span and names, populators, annotations.
    builds: tuple[Any, int, int, list[str], list[Any], list[tuple[str, int]]] | None = None


class Compiled(Generic[T]):
    """One read: `build(**samples)` gives its queryset; `rows(**values)` or
    `objects(**values)` runs it.

    `fields` names each value and the model field that adapts it to the database (a foreign
    key, a DateTimeField...), as the ORM would for that lookup.
    """

    def __init__(self, build: Callable[..., QuerySet[T, Any]],
                 **fields: Field[Any, Any]) -> None:
        self.build = build
        self.fields = fields

    def _shape(self, db: BaseDatabaseWrapper) -> _Shape:
        # Kept on the connection object (each thread has its own, and the compiler and its
        # converters refer to it): a shape lives and dies with its connection.
        shapes: dict[Compiled[Any], _Shape] = db.__dict__.setdefault("_compiled_shapes", {})
        shape = shapes.get(self)
        if shape is not None:
            return shape
        samples = {name: _sample(field) for name, field in self.fields.items()}
        compiler = self.build(**samples).query.get_compiler(connection=db)
        sql, params = compiler.as_sql()
        slots: list[tuple[int, str]] = []
        for name, field in self.fields.items():
            adapted = field.get_db_prep_value(samples[name], db)
            found = [i for i, param in enumerate(params) if param == adapted]
            if not found:
                raise ImproperlyConfigured(f"Compiled: {name} is not a parameter.")
            slots += [(i, name) for i in found]
        columns = [s[0] for s in compiler.select[0:compiler.col_count]]
        shape = _Shape(sql, tuple(params), slots, compiler, compiler.get_converters(columns))
        shapes[self] = shape
        return shape

    def _run(self, values: dict[str, Any]) -> tuple[_Shape, list[Any]]:
        db = connections[DEFAULT_DB_ALIAS]
        shape = self._shape(db)
        params = list(shape.params)
        for index, name in shape.slots:
            value = values[name]
            if value is None or (isinstance(value, Sequence) and not isinstance(value, str)):
                raise ValueError(f"Compiled: {name} must be a single value, not {value!r}.")
            params[index] = self.fields[name].get_db_prep_value(value, db)
        with db.cursor() as cursor:
            cursor.execute(shape.sql, params)
            rows = cursor.fetchall()
        if shape.converters:
            rows = list(shape.compiler.apply_converters(rows, shape.converters))
        return shape, rows

    def rows(self, **values: Any) -> list[Row]:
        """The selected columns of each row, converted as the ORM converts them."""
        return [tuple(row) for row in self._run(values)[1]]

    def first(self, **values: Any) -> T | None:
        """The one instance a read by its key finds, or None."""
        found = self.objects(**values)
        return found[0] if found else None

    def objects(self, **values: Any) -> list[T]:
        """Model instances (with what the queryset selected related), as the ORM builds them."""
        shape, rows = self._run(values)
        if shape.builds is None:
            compiler = shape.compiler
            klass_info = compiler.klass_info
            assert klass_info is not None, "Compiled.objects needs a queryset of instances"
            fields = klass_info["select_fields"]
            start, end = fields[0], fields[-1] + 1
            names = [column[0].target.attname for column in compiler.select[start:end]]
            populators = get_related_populators(  # type: ignore[call-arg]  # stubs: Django 6
                klass_info, compiler.select, compiler.using or DEFAULT_DB_ALIAS)
            annotations = list((compiler.annotation_col_map or {}).items())
            shape.builds = (klass_info["model"], start, end, names, populators, annotations)
        model, start, end, names, populators, annotations = shape.builds
        found = []
        for row in rows:
            instance = model.from_db(shape.compiler.using, names, row[start:end])
            for populator in populators:
                populator.populate(row, instance)
            for name, index in annotations:
                setattr(instance, name, row[index])
            found.append(instance)
        return found
