"""One batch table on its way into the CDM: checked, typed, given ids, its references resolved.

A staging table holds the batch rows with the CDM types, the row's id (``_id``) and, for rows that
cannot go in, a reason (``_status`` machine-readable, ``_reason`` for people). The first reason found
wins. Reasons never carry values or identifiers: only the column or the kind of record at fault.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import polars as pl

from pipelines.cdm.spec import Table
from pipelines.errors import WarehouseError
from pipelines.mapping.batch import LINEAGE_COLUMNS, REF_PREFIX
from pipelines.warehouse.cdm_tables import duckdb_type, quoted, references

STAGE = "_passerelle_stage"
_FRAME = "_passerelle_frame"
_BOOKKEEPING_TYPES = {"_position": "BIGINT"}  # every other bookkeeping column is text
_REQUIRED_BOOKKEEPING = ("_record_key", "_source_format", "_source_file")
MAX_ID = 2**53 - 1  # R-based OHDSI tools read BIGINT as double


@dataclass
class StageCounts:
    nulled_references: dict[str, int] = field(default_factory=dict)  # "table.column" -> rows
    truncated: dict[str, int] = field(default_factory=dict)  # "table.column" -> values cut to CDM length
    new_ids: int = 0


def check_frame(name: str, table: Table, frame: pl.DataFrame) -> None:
    """Refuse a frame that does not follow the MappedBatch contract; the message names what to fix."""
    refs = references(table)
    allowed = (
        (set(table.column_names) - set(table.primary_key))
        | {"_key", "_record_key", *LINEAGE_COLUMNS}
        | {REF_PREFIX + c for c in refs}
    )
    unknown = sorted(set(frame.columns) - allowed)
    if unknown:
        raise WarehouseError(
            f"batch table {name}: columns {', '.join(unknown)} are neither CDM v5.4 columns of {name} "
            f"(its primary key is allocated by the loader) nor MappedBatch bookkeeping; "
            f"references are allowed on {', '.join(sorted(refs)) or 'no column'}"
        )
    needed = list(_REQUIRED_BOOKKEEPING) + (["_key"] if table.primary_key else [])
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise WarehouseError(f"batch table {name}: bookkeeping columns {', '.join(missing)} are missing")


def stage(con: duckdb.DuckDBPyConnection, table: Table, frame: pl.DataFrame) -> None:
    """(Re)create the staging table from ``frame``: CDM types, absent CDM columns as NULL, and the
    first problem of each row (no key, a value not of its column's type) already noted."""
    con.register(_FRAME, frame.with_row_index("_row"))
    present = set(frame.columns)
    pk = set(table.primary_key)
    selects = ["_row", "CAST(NULL AS BIGINT) AS _id"]
    problems: list[tuple[str, str, str]] = []  # (condition, status, reason), the first one wins
    if table.primary_key:
        problems.append(("_key IS NULL", "missing_key", "the mapper gave the row no source key"))
    problems.append(("_record_key IS NULL", "missing_key", "the mapper gave the row no record key"))
    for column in ("_key", "_record_key", *LINEAGE_COLUMNS):
        type_ = _BOOKKEEPING_TYPES.get(column, "VARCHAR")
        source = quoted(column) if column in present else "NULL"
        selects.append(f"TRY_CAST({source} AS {type_}) AS {column}")
    for column in sorted(c for c in present if c.startswith(REF_PREFIX)):
        selects.append(f"CAST({quoted(column)} AS VARCHAR) AS {quoted(column)}")
    for column in table.columns:
        type_ = duckdb_type(column)
        name = quoted(column.name)
        if column.name in pk or column.name not in present:
            selects.append(f"CAST(NULL AS {type_}) AS {name}")
            continue
        selects.append(f"TRY_CAST({name} AS {type_}) AS {name}")
        problems.append(
            (
                f"{name} IS NOT NULL AND TRY_CAST({name} AS {type_}) IS NULL",
                "invalid_value",
                f"{column.name}: the value is not a valid {column.type}",
            )
        )
    status = " ".join(f"WHEN {condition} THEN '{code}'" for condition, code, _ in problems)
    reason = " ".join(f"WHEN {condition} THEN '{text}'" for condition, _, text in problems)
    selects += [f"CASE {status} END AS _status", f"CASE {reason} END AS _reason"]
    con.execute(f"CREATE OR REPLACE TEMP TABLE {STAGE} AS SELECT {', '.join(selects)} FROM {_FRAME}")
    con.unregister(_FRAME)


def drop_superseded(con: duckdb.DuckDBPyConnection) -> None:
    """Rows sharing a source key: the last one in the batch is the current version of that row."""
    con.execute(
        f"""UPDATE {STAGE} SET _status = 'duplicate_key',
              _reason = 'a later row of this batch has the same source key and was loaded instead'
            WHERE _status IS NULL AND _row IN (
              SELECT _row FROM (
                SELECT _row, row_number() OVER (PARTITION BY _key ORDER BY _row DESC) AS n
                FROM {STAGE} WHERE _status IS NULL)
              WHERE n > 1)"""
    )


def allocate_ids(con: duckdb.DuckDBPyConnection, table: Table, run_id: int, side: str) -> int:
    """Give every new source key the next id of its table; known keys keep theirs. New ids count."""
    pk = quoted(table.primary_key[0])
    base = con.execute(
        f"""SELECT greatest(
              (SELECT coalesce(max(omop_id), 0) FROM {side}.id_map WHERE omop_table = ?),
              (SELECT coalesce(max({pk}), 0) FROM main.{table.name}))""",
        [table.name],
    ).fetchall()[0][0]
    new = con.execute(
        f"""SELECT count(*) FROM (SELECT DISTINCT _key FROM {STAGE} WHERE _key IS NOT NULL) k
            WHERE NOT EXISTS (SELECT 1 FROM {side}.id_map m
                              WHERE m.omop_table = ? AND m.source_key = k._key)""",
        [table.name],
    ).fetchall()[0][0]
    if base + new > MAX_ID:
        raise WarehouseError(
            f"{table.name}: ids would pass 2^53 - 1, which R-based OHDSI tools cannot read exactly"
        )
    con.execute(
        f"""INSERT INTO {side}.id_map (omop_table, source_key, omop_id, first_run_id)
            SELECT ?, _key, ? + row_number() OVER (ORDER BY _key), ?
            FROM (SELECT DISTINCT _key FROM {STAGE} WHERE _key IS NOT NULL) k
            WHERE NOT EXISTS (SELECT 1 FROM {side}.id_map m
                              WHERE m.omop_table = ? AND m.source_key = k._key)""",
        [table.name, base, run_id, table.name],
    )
    con.execute(
        f"""UPDATE {STAGE} s SET _id = m.omop_id FROM {side}.id_map m
            WHERE m.omop_table = ? AND m.source_key = s._key""",
        [table.name],
    )
    return new


def resolve_references(con: duckdb.DuckDBPyConnection, table: Table, side: str, counts: StageCounts) -> None:
    """Turn ``_ref__<column>`` source keys into ids of rows that exist after this load.

    A reference resolves when the id map knows the key and the row is in the warehouse (rows of this
    batch's earlier tables are already inserted; a self-reference may also point into this batch).
    Unresolved: a required column sends the row to quarantine, an optional one becomes NULL.
    """
    staged = {r[0] for r in con.execute(f"DESCRIBE {STAGE}").fetchall()}
    for name, column in references(table).items():
        ref = REF_PREFIX + name
        if ref not in staged:
            continue
        target, target_column = column.references
        existing = f"SELECT {quoted(target_column)} FROM main.{target}"
        if target == table.name:
            existing += f" UNION ALL SELECT _id FROM {STAGE} WHERE _status IS NULL"
        con.execute(
            f"""UPDATE {STAGE} s SET {quoted(name)} = r.omop_id
                FROM (SELECT s2._row, m.omop_id
                      FROM {STAGE} s2
                      LEFT JOIN (SELECT source_key, omop_id FROM {side}.id_map
                                 WHERE omop_table = ? AND omop_id IN ({existing})) m
                        ON m.source_key = s2.{quoted(ref)}
                      WHERE s2.{quoted(ref)} IS NOT NULL) r
                WHERE s._row = r._row""",
            [target],
        )
        unresolved = f"{quoted(ref)} IS NOT NULL AND {quoted(name)} IS NULL"
        if column.required:
            _reject(
                con,
                "dangling_reference",
                f"{name}: the {target} record it refers to is neither in this batch nor in the warehouse",
                unresolved,
            )
        else:
            nulled = con.execute(
                f"SELECT count(*) FROM {STAGE} WHERE _status IS NULL AND {unresolved}"
            ).fetchall()[0][0]
            if nulled:
                counts.nulled_references[f"{table.name}.{name}"] = nulled


def check_required(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    for column in table.columns:
        if column.required and not column.primary_key:
            _reject(
                con,
                "missing_required_value",
                f"{column.name}: required by CDM v5.4 but empty",
                f"{quoted(column.name)} IS NULL",
            )


def truncate_text(con: duckdb.DuckDBPyConnection, table: Table, counts: StageCounts) -> None:
    """Cut text to its CDM length (PostgreSQL enforces varchar(N)); every cut is counted."""
    limited = [c for c in table.columns if c.varchar_length]
    if not limited:
        return
    sums = ", ".join(
        f"count(*) FILTER (WHERE length({quoted(c.name)}) > {c.varchar_length})" for c in limited
    )
    found = con.execute(f"SELECT {sums} FROM {STAGE} WHERE _status IS NULL").fetchall()[0]
    for column, n in zip(limited, found, strict=True):
        if n:
            name = quoted(column.name)
            con.execute(f"UPDATE {STAGE} SET {name} = left({name}, {column.varchar_length})")
            counts.truncated[f"{table.name}.{column.name}"] = n


def _reject(con: duckdb.DuckDBPyConnection, code: str, reason: str, condition: str) -> None:
    con.execute(
        f"UPDATE {STAGE} SET _status = ?, _reason = ? WHERE _status IS NULL AND ({condition})",
        [code, reason],
    )
