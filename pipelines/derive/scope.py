"""Which persons a rebuild touches, and how their derived rows are replaced.

A rebuild either covers the whole CDM or only the persons a load touched: their rows are deleted and
recomputed from their events, every other person's rows (and ids) stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

CDM = "main"  # CDM tables live in DuckDB's default schema, lowercase (as OHDSI tools expect)
_SCOPE_TABLE = "_passerelle_derive_scope"


@dataclass(frozen=True)
class Scope:
    """The persons being rebuilt: everyone, or the ids in a temporary table."""

    limited: bool

    @classmethod
    def create(cls, con: duckdb.DuckDBPyConnection, person_ids: list[int] | None) -> Scope:
        if person_ids is None:
            return cls(limited=False)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {_SCOPE_TABLE} AS"
            " SELECT DISTINCT unnest(?::BIGINT[]) AS person_id",
            [list(person_ids)],
        )
        return cls(limited=True)

    def where(self) -> str:
        """A SQL predicate on ``person_id`` keeping the rows of the persons in scope."""
        if not self.limited:
            return "TRUE"
        return f"person_id IN (SELECT person_id FROM {_SCOPE_TABLE})"

    def drop(self, con: duckdb.DuckDBPyConnection) -> None:
        if self.limited:
            con.execute(f"DROP TABLE IF EXISTS {_SCOPE_TABLE}")


def replace_rows(
    con: duckdb.DuckDBPyConnection, table: str, id_column: str, rows_sql: str, order_by: str, scope: Scope
) -> int:
    """Delete the in-scope rows of ``table`` and insert ``rows_sql`` in their place; rows inserted.

    New ids continue after the largest id left in the table, so rows of persons outside the scope
    keep theirs; ``order_by`` makes the numbering deterministic (the same CDM gives the same ids).
    """
    con.execute(f"DELETE FROM {CDM}.{table} WHERE {scope.where()}")
    inserted = con.execute(
        f"""
        INSERT INTO {CDM}.{table} BY NAME
        SELECT (SELECT coalesce(max({id_column}), 0) FROM {CDM}.{table})
                   + row_number() OVER (ORDER BY {order_by}) AS {id_column},
               *
        FROM ({rows_sql})
        """
    ).fetchone()
    return int(inserted[0]) if inserted else 0


def existing_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Names of the base tables in the CDM schema (lowercase)."""
    rows = con.execute(
        "SELECT lower(table_name) FROM information_schema.tables"
        " WHERE table_schema = ? AND table_catalog = current_database()",
        [CDM],
    ).fetchall()
    return {name for (name,) in rows}


def existing_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    rows = con.execute(
        "SELECT lower(column_name) FROM information_schema.columns"
        " WHERE table_schema = ? AND table_name = ? AND table_catalog = current_database()",
        [CDM, table],
    ).fetchall()
    return {name for (name,) in rows}
