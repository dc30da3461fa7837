"""Hot reads compiled once: the ORM writes a queryset's SQL the first time, the cursor runs it.

Django builds and compiles a query in Python every time one runs: 0.5-2.5 ms per statement on
a small VM, many times what SQLite or PostgreSQL then takes to answer it. The few reads on the
way from Send to the vendor have one shape and change only their values, so each is a
`Compiled`: its queryset is built once per database vendor from sample values (the rule stays
in the queryset, written once with the ORM), and each call puts the real values in the
parameter list and runs the SQL through the connection's cursor (the same wrappers, the same
transaction, the same instrumentation as the ORM's own statements).

Only for shapes the values cannot change: a value the ORM treats specially (None, an empty
list) is refused rather than compiled into the wrong SQL.
"""

from __future__ import annotations

import datetime
import itertools
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.db.models import Field, QuerySet

Row = tuple[Any, ...]
_samples = itertools.count(1)


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
    if kind in {"AutoField", "BigAutoField", "IntegerField", "BigIntegerField",
                "PositiveIntegerField"}:
        return -(7_000_000_000 + n)
    raise ImproperlyConfigured(f"Compiled: no sample value for a {kind}.")


class Compiled:
    """One read: `build(**samples)` gives its queryset; `rows(**values)` runs it.

    `fields` names each value and the model field that adapts it to the database (a foreign
    key's target's primary key, a DateTimeField...), as the ORM would for that lookup.
    """

    def __init__(self, build: Callable[..., QuerySet[Any, Any]],
                 **fields: Field[Any, Any]) -> None:
        self.build = build
        self.fields = fields
        self._shapes: dict[str, tuple[str, tuple[Any, ...], list[tuple[int, str]]]] = {}
        self._lock = threading.Lock()

    def _shape(self) -> tuple[str, tuple[Any, ...], list[tuple[int, str]]]:
        shape = self._shapes.get(connection.vendor)
        if shape is not None:
            return shape
        with self._lock:
            samples = {name: _sample(field) for name, field in self.fields.items()}
            query = self.build(**samples).query
            sql, params = query.get_compiler(connection=connection).as_sql()
            slots: list[tuple[int, str]] = []
            for name, field in self.fields.items():
                adapted = field.get_db_prep_value(samples[name], connection)
                found = [i for i, param in enumerate(params) if param == adapted]
                if not found:
                    raise ImproperlyConfigured(f"Compiled: {name} is not a parameter.")
                slots += [(i, name) for i in found]
            shape = (sql, tuple(params), slots)
            self._shapes[connection.vendor] = shape
        return shape

    def params(self, **values: Any) -> list[Any]:
        sql_params = list(self._shape()[1])
        for index, name in self._shape()[2]:  # values not in `fields` are not in the SQL
            value = values[name]
            if value is None or (isinstance(value, Sequence) and not isinstance(value, str)):
                raise ValueError(f"Compiled: {name} must be a single value, not {value!r}.")
            sql_params[index] = self.fields[name].get_db_prep_value(value, connection)
        return sql_params

    def rows(self, **values: Any) -> list[Row]:
        sql = self._shape()[0]
        params = self.params(**values)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return list(cursor.fetchall())


def as_datetime(value: Any) -> datetime.datetime | None:
    """A datetime read through the cursor: SQLite returns text (UTC), PostgreSQL a datetime."""
    if value is None or isinstance(value, datetime.datetime):
        return value
    parsed = datetime.datetime.fromisoformat(str(value))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)
