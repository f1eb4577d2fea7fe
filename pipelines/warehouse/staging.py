"""One batch table on its way into the CDM: checked, typed, given ids, its references resolved.

A staging table holds the batch rows with the CDM types, the row's id (``_id``) and, for rows that
cannot go in, a reason (``_status`` machine-readable, ``_reason`` for people). The first reason found
wins. Reasons never carry values or identifiers: only the column or the kind of record at fault.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import duckdb
import polars as pl

from pipelines.cdm.spec import Table, cdm_schema
from pipelines.errors import WarehouseError
from pipelines.mapping.batch import LINEAGE_COLUMNS, REF_PREFIX
from pipelines.warehouse.cdm_tables import duckdb_type, quoted, references

STAGE = "_passerelle_stage"
_KEYS = "_passerelle_stage_keys"
HELD = "held"  # the _status of a row waiting for a record of a later batch
_BOOKKEEPING_TYPES = {"_position": "BIGINT"}  # every other bookkeeping column is text
_REQUIRED_BOOKKEEPING = ("_record_key", "_source_format", "_source_file")
MAX_ID = 2**53 - 1  # R-based OHDSI tools read BIGINT as double


@dataclass
class StageCounts:
    nulled_references: dict[str, int] = field(default_factory=dict)  # "table.column" -> rows
    truncated: dict[str, int] = field(default_factory=dict)  # "table.column" -> values cut to CDM length
    new_ids: int = 0


def check_frame(name: str, table: Table, columns: list[str]) -> None:
    """Refuse a frame (its ``columns``) that does not follow the MappedBatch contract; the message
    names what to fix."""
    refs = references(table)
    allowed = (
        (set(table.column_names) - set(table.primary_key))
        | {"_key", "_record_key", *LINEAGE_COLUMNS}
        | {REF_PREFIX + c for c in refs}
    )
    unknown = sorted(set(columns) - allowed)
    if unknown:
        raise WarehouseError(
            f"batch table {name}: columns {', '.join(unknown)} are neither CDM v5.4 columns of {name} "
            f"(its primary key is allocated by the loader) nor MappedBatch bookkeeping; "
            f"references are allowed on {', '.join(sorted(refs)) or 'no column'}"
        )
    needed = list(_REQUIRED_BOOKKEEPING) + (["_key"] if table.primary_key else [])
    missing = [c for c in needed if c not in columns]
    if missing:
        raise WarehouseError(f"batch table {name}: bookkeeping columns {', '.join(missing)} are missing")


def stage(con: duckdb.DuckDBPyConnection, table: Table, frame: pl.DataFrame, first_row: int) -> int:
    """(Re)create the staging table from a batch table: CDM types, absent CDM columns and references
    as NULL (so rows held back from several batches share one shape), rows numbered from
    ``first_row`` (unique over a run), and the first problem of each row (no key, a value not of its
    column's type) already noted. Returns the rows staged."""
    present = set(frame.columns)
    pk = set(table.primary_key)
    selects = [f"{_ROW} + {int(first_row)} AS _row", "CAST(NULL AS BIGINT) AS _id"]
    problems: list[tuple[str, str, str]] = []  # (condition, status, reason), the first one wins
    if table.primary_key:
        problems.append(("_key IS NULL", "missing_key", "the mapper gave the row no source key"))
    problems.append(("_record_key IS NULL", "missing_key", "the mapper gave the row no record key"))
    for column in ("_key", "_record_key", *LINEAGE_COLUMNS):
        type_ = _BOOKKEEPING_TYPES.get(column, "VARCHAR")
        source = quoted(column) if column in present else "NULL"
        selects.append(f"TRY_CAST({source} AS {type_}) AS {column}")
    for name in sorted(references(table)):
        column = REF_PREFIX + name
        source = quoted(column) if column in present else "NULL"
        selects.append(f"CAST({source} AS VARCHAR) AS {quoted(column)}")
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
    sql = f"CREATE OR REPLACE TEMP TABLE {STAGE} AS SELECT {', '.join(selects)} FROM batch_rows"
    return on_frame(con, frame.with_row_index(_ROW), "batch_rows", sql)[0][0]


_ROW = "_passerelle_row"  # the row's position in its batch table


def on_frame(con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, name: str, sql: str) -> list[tuple]:
    """Run ``sql``, in which ``frame`` is the table ``name``, and return its rows.

    DuckDB reads the frame through Arrow without a copy. Not with ``con.register``: DuckDB keeps a
    registered frame alive until the run's commit (measured: +100 bytes per row); a relation's
    query lets go of it when done. Before, batches went through Parquet files: about 2 s of the
    load's 19 at 10 k patients."""
    return con.from_arrow(frame.to_arrow()).query(name, sql).fetchall()


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def drop_superseded(con: duckdb.DuckDBPyConnection) -> None:
    """Rows sharing a source key: the last one in the batch is the current version of that row
    (``allocate_ids`` does the same for tables with a primary key)."""
    con.execute(
        f"""UPDATE {STAGE} SET _status = '{_DUPLICATE[0]}', _reason = '{_DUPLICATE[1]}'
            WHERE _status IS NULL AND _row IN (
              SELECT _row FROM (
                SELECT _row, row_number() OVER (PARTITION BY _key ORDER BY _row DESC) AS n
                FROM {STAGE} WHERE _status IS NULL)
              WHERE n > 1)"""
    )


_DUPLICATE = ("duplicate_key", "a later row of this batch has the same source key and was loaded instead")


def allocate_ids(
    con: duckdb.DuckDBPyConnection, table: Table, run_id: int, side: str, ids: RunIds
) -> tuple[int, int]:
    """Give every new source key the next id of its table, in the order the keys first appear in the
    batch; known keys keep theirs. Returns the new keys and the known ones.

    Rows sharing a source key: the last one in the batch is the current version of that row, the
    others are noted as duplicates. Both come from one grouping of the stage by key (a window over
    the stage for the duplicates and three passes for the ids took 2.5 times longer at 10k patients;
    numbering the keys in text order rather than by row took 1.4 times longer).
    """
    base = ids.highest(con, table)
    known_ids = ids.of(con, table)
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {_KEYS} AS
            SELECT k._key, k.live, k.last_row, m.omop_id IS NULL AS new,
                   coalesce(
                     m.omop_id, ? + row_number() OVER (PARTITION BY m.omop_id IS NULL ORDER BY k.first_row)
                   ) AS omop_id
            FROM (SELECT _key, sum(CASE WHEN _status IS NULL THEN 1 ELSE 0 END) AS live,
                         max(CASE WHEN _status IS NULL THEN _row END) AS last_row, min(_row) AS first_row
                  FROM {STAGE} WHERE _key IS NOT NULL GROUP BY _key) k
            LEFT JOIN {known_ids} m ON m.source_key = k._key""",
        [base],
    )
    new, known, duplicated = con.execute(
        "SELECT count(*) FILTER (WHERE new), count(*) FILTER (WHERE NOT new),"
        f" count(*) FILTER (WHERE live > 1) FROM {_KEYS}"
    ).fetchall()[0]
    if base + new > MAX_ID:
        raise WarehouseError(
            f"{table.name}: ids would pass 2^53 - 1, which R-based OHDSI tools cannot read exactly"
        )
    if duplicated:
        con.execute(
            f"""UPDATE {STAGE} s SET _status = '{_DUPLICATE[0]}', _reason = '{_DUPLICATE[1]}'
                FROM {_KEYS} k
                WHERE k._key = s._key AND k.live > 1 AND s._status IS NULL AND s._row <> k.last_row"""
        )
    if new:
        con.execute(
            f"""INSERT INTO {ids.new_keys(con)} (omop_table, source_key, omop_id, first_run_id)
                SELECT ?, _key, omop_id, ? FROM {_KEYS} WHERE new""",
            [table.name, run_id],
        )
        con.execute(f"INSERT INTO {known_ids} SELECT _key, omop_id FROM {_KEYS} WHERE new")
        ids.taken(table, base + new)
    con.execute(f"UPDATE {STAGE} s SET _id = k.omop_id FROM {_KEYS} k WHERE k._key = s._key")
    return new, known


class RunIds:
    """The id map of each table a run touches, copied once into a temporary table of its own and
    kept up to date with the ids the run gives.

    Every batch looks keys up for its own tables and for the tables its references point at; within
    the run's transaction DuckDB scans the whole id map for that (zone maps do not prune the rows the
    transaction itself wrote), so a run's lookups grew with the square of its size. Per table, a
    person reference reads the persons' keys only.
    """

    def __init__(self, side: str) -> None:
        self._side = side
        self._highest: dict[str, int] = {}
        self._new: str | None = None

    def new_keys(self, con: duckdb.DuckDBPyConnection) -> str:
        """The temporary table of the id map rows this run adds, written to the id map by ``store``.

        One INSERT per run rather than one per table and batch: DuckDB wrote the rows of 33 small
        INSERTs to its WAL and compressed them again at the commit, the run's tail."""
        if self._new is None:
            self._new = "_passerelle_new_ids"
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {self._new} AS SELECT * FROM {self._side}.id_map LIMIT 0"
            )
        return self._new

    def store(self, con: duckdb.DuckDBPyConnection) -> None:
        """Write the run's new keys to the id map."""
        if self._new is not None:
            con.execute(f"INSERT INTO {self._side}.id_map SELECT * FROM {self._new}")
            con.execute(f"DROP TABLE {self._new}")
            self._new = None

    def of(self, con: duckdb.DuckDBPyConnection, table: Table) -> str:
        """The temporary table (source_key, omop_id) of ``table``'s keys."""
        name = f"_passerelle_ids__{table.name}"
        if table.name not in self._highest:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {name} AS "
                f"SELECT source_key, omop_id FROM {self._side}.id_map WHERE omop_table = ?",
                [table.name],
            )
            highest = con.execute(f"SELECT coalesce(max(omop_id), 0) FROM {name}").fetchall()[0][0]
            if table.primary_key:
                pk = quoted(table.primary_key[0])
                in_table = f"SELECT coalesce(max({pk}), 0) FROM main.{table.name}"
                highest = max(highest, con.execute(in_table).fetchall()[0][0])
            self._highest[table.name] = highest
        return name

    def highest(self, con: duckdb.DuckDBPyConnection, table: Table) -> int:
        """The highest id of ``table`` so far: in its id map or in the table itself."""
        self.of(con, table)
        return self._highest[table.name]

    def taken(self, table: Table, highest: int) -> None:
        self._highest[table.name] = highest


def resolve_references(
    con: duckdb.DuckDBPyConnection,
    table: Table,
    ids: RunIds,
    counts: StageCounts,
    *,
    columns: Collection[str],
    hold: bool,
) -> None:
    """Turn the ``_ref__<column>`` source keys of ``columns`` into ids of rows in the warehouse.

    A reference resolves when the id map knows the key and the row is in the warehouse (rows of this
    batch's earlier tables are already inserted; a self-reference may also point into this batch).
    ``hold``: a row with a reference not resolved yet is held back (``_status`` 'held'): a later batch
    of the run may bring the record it points at. Otherwise a required column sends the row to
    quarantine, an optional one becomes NULL.
    """
    wanted = {name: column for name, column in references(table).items() if name in columns}
    # Self-references last: a row they point at must have passed the other references first.
    own = {name: column for name, column in wanted.items() if column.references[0] == table.name}
    for group in ({n: c for n, c in wanted.items() if n not in own}, own):
        if group:
            _look_up_references(con, table, ids, group)
            _settle_references(con, table, group, counts, hold=hold)


def _look_up_references(con: duckdb.DuckDBPyConnection, table: Table, ids: RunIds, wanted: dict) -> None:
    """The ids of ``wanted``'s references, all in one UPDATE: a join per referenced table, one pass
    over the stage (a statement per column took 1.7 s of the load at 10 k patients, half of it this)."""
    schema = cdm_schema()
    joins, sets, picks = [], [], []
    for number, (name, column) in enumerate(wanted.items()):
        target, target_column = column.references
        existing = f"SELECT {quoted(target_column)} FROM main.{target}"
        if target == table.name:
            existing += f" UNION ALL SELECT _id FROM {STAGE} WHERE _status IS NULL"
        alias = f"m{number}"
        joins.append(
            f"LEFT JOIN (SELECT source_key, omop_id FROM {ids.of(con, schema.table(target))}"
            f" WHERE omop_id IN ({existing})) {alias} ON {alias}.source_key = s2.{quoted(REF_PREFIX + name)}"
        )
        picks.append(f"{alias}.omop_id AS {alias}")
        sets.append(f"{quoted(name)} = r.{alias}")
    con.execute(
        f"""UPDATE {STAGE} s SET {", ".join(sets)}
            FROM (SELECT s2._row, {", ".join(picks)} FROM {STAGE} s2 {" ".join(joins)}) r
            WHERE s._row = r._row"""
    )


def _settle_references(
    con: duckdb.DuckDBPyConnection, table: Table, wanted: dict, counts: StageCounts, *, hold: bool
) -> None:
    for name, column in wanted.items():
        target = column.references[0]
        unresolved = f"{quoted(REF_PREFIX + name)} IS NOT NULL AND {quoted(name)} IS NULL"
        if hold:
            _reject(con, HELD, "held back until the run's last batch", unresolved)
        elif column.required:
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
    """Rows with an empty required column are quarantined, naming the first such column; one UPDATE
    for all the columns (one per column was 269 statements at 10 k patients)."""
    required = [c.name for c in table.columns if c.required and not c.primary_key]
    if not required:
        return
    reason = " ".join(
        f"WHEN {quoted(name)} IS NULL THEN '{name}: required by CDM v5.4 but empty'" for name in required
    )
    empty = " OR ".join(f"{quoted(name)} IS NULL" for name in required)
    con.execute(
        f"UPDATE {STAGE} SET _status = 'missing_required_value', _reason = CASE {reason} END "
        f"WHERE _status IS NULL AND ({empty})"
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
