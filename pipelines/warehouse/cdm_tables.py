"""What the loader and the exports need to know about the CDM tables, read from the one CDM spec.

Load order follows the foreign keys between clinical tables (a person before its visits, a visit
before its details) so a reference is resolved against rows that are already in place.
"""

from __future__ import annotations

from functools import cache

from pipelines.cdm.spec import Column, Table, cdm_schema

# Vocabulary tables are referenced by concept ids the mappers already resolved, never by source keys.
_VOCABULARY_GROUP = "vocabulary"

# DuckDB type of each logical CDM type; varchar(N) is plain VARCHAR in DuckDB (it ignores N).
_DUCKDB_TYPES = {
    "bigint": "BIGINT",
    "integer": "INTEGER",
    "float": "DOUBLE",
    "date": "DATE",
    "datetime": "TIMESTAMP",
    "boolean": "BOOLEAN",
}


def duckdb_type(column: Column) -> str:
    return _DUCKDB_TYPES.get(column.type, "VARCHAR")


def table(name: str) -> Table:
    return cdm_schema().table(name)


def vocabulary_table_names() -> list[str]:
    return [t.name for t in cdm_schema().group(_VOCABULARY_GROUP)]


def references(table_: Table) -> dict[str, Column]:
    """Columns of ``table_`` that point at a row of a non-vocabulary table, by column name."""
    vocabulary = {t.name for t in cdm_schema().group(_VOCABULARY_GROUP)}
    return {c.name: c for c in table_.columns if c.references and c.references[0] not in vocabulary}


@cache
def load_order() -> tuple[str, ...]:
    """Every CDM table, each after the tables its references point at (self-references aside)."""
    tables = {t.name: t for t in cdm_schema().tables}
    placed: list[str] = []
    pending = list(tables)
    while pending:
        ready = [
            name
            for name in pending
            if all(
                c.references[0] in placed or c.references[0] == name
                for c in references(tables[name]).values()
            )
        ]
        if not ready:  # a cycle would be a spec error; the CDM v5.4 has none
            raise ValueError(f"reference cycle among CDM tables: {pending}")
        placed.extend(ready)
        pending = [name for name in pending if name not in ready]
    return tuple(placed)


def row_hash_sql(table_: Table, alias: str) -> str:
    """A stable 52-bit number for a row of a table without a primary key (death, fact_relationship).

    Lineage needs one number per row; md5 of the values is the same in every DuckDB release, so the
    row can be found again for an incremental replace or delete.
    """
    parts = ", ".join(f"coalesce(CAST({alias}.{quoted(c.name)} AS VARCHAR), '\\N')" for c in table_.columns)
    return f"CAST('0x' || substr(md5(concat_ws('|', {parts})), 1, 13) AS BIGINT)"


def quoted(name: str) -> str:
    """A column name quoted for SQL (note_nlp.offset is a reserved word)."""
    return f'"{name}"'
