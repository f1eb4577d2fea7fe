"""Hand-made CDM rows for the derive tests: only the columns a case is about, the rest filled in."""

from __future__ import annotations

import datetime as dt
from itertools import count

import duckdb
import pyarrow as pa

from pipelines.cdm import cdm_schema

_FILLER = {"bigint": 0, "integer": 0, "float": 0.0, "date": dt.date(1900, 1, 1), "boolean": False}
_ids = count(1)


def insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> None:
    """Insert rows into a CDM table; required columns not given get a neutral value (0, text '-', for a
    date the row's first date: an event without an end date lasts that one day), and the primary
    key a fresh id. One bulk insert through Arrow."""
    spec = cdm_schema().table(table)
    completed = []
    for given in rows:
        first_date = next((v for v in given.values() if isinstance(v, dt.date)), None)
        row = {}
        for column in spec.columns:
            if column.name in given:
                row[column.name] = given[column.name]
            elif column.primary_key:
                row[column.name] = next(_ids)
            elif column.type == "date" and column.required and first_date:
                row[column.name] = first_date
            elif column.required:
                row[column.name] = _FILLER.get(column.type, "-")
        completed.append(row)
    for names in {tuple(row) for row in completed}:
        batch = pa.Table.from_pylist([row for row in completed if tuple(row) == names])
        con.register("_derive_test_rows", batch)
        con.execute(f"INSERT INTO main.{table} BY NAME SELECT * FROM _derive_test_rows")
        con.unregister("_derive_test_rows")


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def records(columns: str, values: list[tuple]) -> list[dict]:
    """Rows written as a table: ``records("person_id death_date", [(1, d("2020-01-01"))])``."""
    names = columns.split()
    return [dict(zip(names, row, strict=True)) for row in values]


def expected_periods(
    events: list[tuple[int, dt.date, dt.date | None]],
    deaths: dict[int, dt.date],
    extraction: dt.date,
    *,
    extension: int = 60,
    death_extension: int = 60,
    gap: int = 548,
) -> list[tuple[int, dt.date, dt.date]]:
    """The OHDSI EHR observation-period rule written the slow, obvious way (one event at a time), to
    check the set-based SQL against: (person_id, start, end) sorted."""
    by_person: dict[int, list[tuple[dt.date, dt.date]]] = {}
    for person_id, start, end in events:
        by_person.setdefault(person_id, []).append((start, max(start, end or start)))
    periods = []
    for person_id, spans in sorted(by_person.items()):
        spans.sort()
        first, last = spans[0]
        for start, end in spans[1:]:
            if (start - last).days >= gap:
                periods.append((person_id, first, last))
                first = start
            last = max(last, end)
        periods.append((person_id, first, last))
    result = []
    for person_id, first, last in periods:
        limits = [last + dt.timedelta(days=extension), extraction]
        if person_id in deaths:
            limits.append(deaths[person_id] + dt.timedelta(days=death_extension))
        result.append((person_id, first, max(last, min(limits))))
    return result
