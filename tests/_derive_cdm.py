"""Hand-made CDM rows for the derive tests: only the columns a case is about, the rest filled in."""

from __future__ import annotations

import datetime as dt
from itertools import count

import duckdb

from pipelines.cdm import cdm_schema

_FILLER = {"bigint": 0, "integer": 0, "float": 0.0, "date": dt.date(1900, 1, 1), "boolean": False}
_ids = count(1)


def insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> None:
    """Insert rows into a CDM table; required columns not given get a neutral value (0, text '-', for a
    date the row's first date: an event without an end date lasts that one day), and the primary
    key a fresh id."""
    spec = cdm_schema().table(table)
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
        names = list(row)
        con.execute(
            f"INSERT INTO main.{table} ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
            [row[n] for n in names],
        )


def rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def records(columns: str, values: list[tuple]) -> list[dict]:
    """Rows written as a table: ``records("person_id death_date", [(1, d("2020-01-01"))])``."""
    names = columns.split()
    return [dict(zip(names, row, strict=True)) for row in values]
