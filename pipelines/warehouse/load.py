"""Load one MappedBatch into the warehouse: one transaction, incremental by source record.

In that transaction: the rows of every record the batch brings (new versions) or deletes are removed,
the batch rows get their ids from the id map, their references are resolved, the rows that cannot go
in are quarantined with a reason, the rest are inserted with their lineage, and a run_log row records
the counts. A crash or an error at any point leaves the warehouse as it was. Exports (Parquet,
PostgreSQL) are refreshed from the committed warehouse afterwards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import duckdb
import polars as pl

from pipelines.cdm.spec import Table, cdm_schema
from pipelines.errors import WarehouseError
from pipelines.mapping.batch import REF_PREFIX, MappedBatch
from pipelines.warehouse import staging
from pipelines.warehouse.cdm_tables import load_order, quoted, references, row_hash_sql
from pipelines.warehouse.duckdb_file import SIDE_SCHEMA
from pipelines.warehouse.targets import Target, store_all, system_of_record, warehouse_vocabulary_version

if TYPE_CHECKING:  # pipelines.vocab imports the warehouse package: no import cycle at run time
    from pipelines.vocab import Vocabulary

logger = logging.getLogger(__name__)

_AFFECTED = "_passerelle_affected_records"
_LINEAGE = "_passerelle_run_lineage"
_ORPHANS = "_passerelle_orphans"


@dataclass
class LoadReport:
    """What one load changed; stored as JSON in run_log.summary."""

    run_id: int
    inserted: dict[str, int] = field(default_factory=dict)  # rows per CDM table
    removed: dict[str, int] = field(default_factory=dict)  # previous rows of replaced/deleted records
    orphaned: dict[str, int] = field(
        default_factory=dict
    )  # rows removed: their required reference was deleted
    new_ids: dict[str, int] = field(default_factory=dict)  # source keys seen for the first time
    quarantined: dict[str, int] = field(default_factory=dict)  # by reason_code (mapper's and loader's)
    nulled_references: dict[str, int] = field(default_factory=dict)  # "table.column": optional refs
    truncated: dict[str, int] = field(default_factory=dict)  # "table.column": text cut to CDM length
    records_loaded: int = 0  # source records with rows in this batch
    records_deleted: int = 0  # deletions that removed rows
    exported: dict[str, dict[str, int]] = field(default_factory=dict)  # target -> rows per table it holds
    outputs: dict[str, str] = field(default_factory=dict)  # where the CDM now is, e.g. {"parquet": DIR}

    @property
    def rows(self) -> dict[str, int]:
        """Rows written per CDM table."""
        return self.inserted

    def summary(self) -> dict:
        return asdict(self)


def load_batch(
    batch: MappedBatch,
    targets: list[Target],
    *,
    run_id: int | None = None,
    vocab: Vocabulary | None = None,
    vocabulary_version: str | None = None,
    export: bool = True,
) -> LoadReport:
    """Load ``batch`` into the DuckDB warehouse among ``targets``, then refresh the other targets.

    ``run_id`` defaults to the next one in run_log. With ``vocab``, its tables are written to the
    warehouse first when the warehouse holds another release (or none), so OHDSI tools find them.
    ``export=False`` leaves Parquet/PostgreSQL for a later ``export_cdm`` (after the derived tables).
    """
    _check_batch(batch)  # before the warehouse is opened (or created)
    return load_batches(
        [batch], targets, run_id=run_id, vocab=vocab, vocabulary_version=vocabulary_version, export=export
    )


def load_batches(
    batches: Iterable[MappedBatch],
    targets: list[Target],
    *,
    run_id: int | None = None,
    vocab: Vocabulary | None = None,
    vocabulary_version: str | None = None,
    export: bool = True,
) -> LoadReport:
    """Load the batches of one run, as they come, in one transaction: ``load_batch`` over many.

    Only one batch is in memory at a time (the iterator makes the next one when this one is in), so
    a run's memory is bounded by its batch size, not by its input. A row whose reference points at a
    record of a later batch (a Bulk Observation read before its Patient file) is held back in a
    DuckDB table and resolved after the last batch; only what is still dangling then is quarantined.
    The report and the run_log row cover the whole run.
    """
    warehouse = system_of_record(targets)
    started = _utc_now()
    con = warehouse.open()
    try:
        con.execute(f"SET memory_limit = '{_MEMORY_LIMIT}'")
        if vocab is not None:
            vocabulary_version = vocabulary_version or vocab.version
            held = con.execute(
                "SELECT max(vocabulary_version) FROM main.vocabulary WHERE vocabulary_id = 'None'"
            ).fetchall()[0][0]
            if held != vocab.version:
                from pipelines.vocab import write_vocabulary

                write_vocabulary(con, vocab)
        # Without insertion order DuckDB writes each table's rows to the file as its row groups fill,
        # while the mappers work, and runs the lineage's one INSERT on both cores; with it, what each
        # INSERT left short of a row group went to the WAL and was compressed again at the commit,
        # the run's tail (the loader on the 10 k batches: 19-19.6 s against 16-16.8 s without).
        # Rows carry their ids; OMOP tables have no order.
        con.execute("SET preserve_insertion_order = false")
        con.execute("BEGIN")
        try:
            if run_id is None:
                run_id = con.execute(
                    f"SELECT coalesce(max(run_id), 0) + 1 FROM {SIDE_SCHEMA}.run_log"
                ).fetchall()[0][0]
            report = LoadReport(run_id=run_id, outputs={t.name: t.location for t in targets})
            run = _Run(con, report)
            for number, batch in enumerate(batches, start=1):
                run.add(batch, number)
                del batch  # let it go before the next one is made, not after
            run.finish()
            run.store()
            _settle_orphans(con, run_id, report)
            version = vocabulary_version or warehouse_vocabulary_version(con)
            _write_run_log(con, report, started, version)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.execute("RESET preserve_insertion_order")  # exports keep their order
        logger.info("run %d committed to %s", run_id, warehouse.description)
        if export:
            try:  # the warehouse itself only counts its rows: what every target now holds
                report.exported = store_all(con, targets, run_id=run_id, vocabulary_version=version)
            except BaseException:
                con.execute(
                    f"UPDATE {SIDE_SCHEMA}.run_log SET status = 'export_failed' WHERE run_id = ?", [run_id]
                )
                raise
            con.execute(
                f"UPDATE {SIDE_SCHEMA}.run_log SET summary = ? WHERE run_id = ?",
                [json.dumps(report.summary()), run_id],
            )
    finally:
        con.close()
    return report


# DuckDB's memory for a load (it spills to the warehouse's .tmp folder beyond it). Its default, 80 %
# of the machine, let a 10k-patient run's load grow past 4 GB beside the mappers' batches; a run must
# fit 8 GB whatever its size.
_MEMORY_LIMIT = "2GB"


def _check_batch(batch: MappedBatch) -> dict[str, pl.DataFrame]:
    """The batch's non-empty tables, each checked against the MappedBatch contract."""
    schema = cdm_schema()
    tables = {name: frame for name, frame in batch.tables.items() if frame.height}  # empty ones add nothing
    for name, frame in tables.items():
        if name not in schema.table_names:
            raise WarehouseError(f"batch table {name!r} is not an OMOP CDM v5.4 table")
        staging.check_frame(name, schema.table(name), frame.columns)
    return tables


class _Run:
    """The batches of one run on their way in, inside its transaction: what is carried from one batch
    to the next (the ids given so far, the rows held back, the numbering of staged rows)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, report: LoadReport) -> None:
        self.con, self.report = con, report
        # The run's lineage rows, written to the lineage table by ``store`` in one INSERT (see
        # ``staging.RunIds.new_keys`` for why).
        con.execute(f"CREATE OR REPLACE TEMP TABLE {_LINEAGE} AS SELECT * FROM {SIDE_SCHEMA}.lineage LIMIT 0")
        self.ids = staging.RunIds(SIDE_SCHEMA)
        self.held: set[str] = set()  # tables with rows held back
        self.rows = 0  # rows staged so far: the next staged row's number

    def add(self, batch: MappedBatch, number: int) -> None:
        """Load one batch; DuckDB reads its frames through Arrow (see ``staging.stage``), the frames
        let go of by the caller as soon as it likes."""
        tables = _check_batch(batch)
        con, report, schema = self.con, self.report, cdm_schema()
        _remove_records(con, tables, batch.deletions, report)
        for name in load_order():
            if name in tables:
                self._load_table(schema.table(name), tables[name])
        _store_mapper_quarantine(con, batch.quarantine, report)
        logger.info("batch %d loaded: %d rows", number, sum(f.height for f in tables.values()))

    def store(self) -> None:
        """Write the run's lineage rows and new keys where they belong."""
        self.con.execute(f"INSERT INTO {SIDE_SCHEMA}.lineage SELECT * FROM {_LINEAGE}")
        self.con.execute(f"DROP TABLE {_LINEAGE}")
        self.ids.store(self.con)

    def finish(self) -> None:
        """The rows held back, resolved now that every batch is in: what still points nowhere is
        quarantined (required reference) or loses the reference (optional one)."""
        con = self.con
        for name in load_order():
            if name not in self.held:
                continue
            table = cdm_schema().table(name)
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {staging.STAGE} AS "
                "SELECT * REPLACE (CAST(NULL AS VARCHAR) AS _status, CAST(NULL AS VARCHAR) AS _reason) "
                f"FROM {_held(name)}"
            )
            con.execute(f"DROP TABLE {_held(name)}")
            self._settle_stage(table, references(table), hold=False)
        self.held.clear()

    def _load_table(self, table: Table, frame: pl.DataFrame) -> None:
        con, report, columns = self.con, self.report, frame.columns
        self.rows += staging.stage(con, table, frame, self.rows)
        if table.primary_key:
            new, known = staging.allocate_ids(con, table, report.run_id, SIDE_SCHEMA, self.ids)
            report.new_ids[table.name] = report.new_ids.get(table.name, 0) + new
            if known:  # a new id is above every id given so far: no row to replace (a first load)
                self._replace_known_rows(table)
        elif "_key" in columns:
            staging.drop_superseded(con)
        refs = {c.removeprefix(REF_PREFIX) for c in columns if c.startswith(REF_PREFIX)}
        self._settle_stage(table, refs, hold=True)

    def _replace_known_rows(self, table: Table) -> None:
        """The rows of the stage's known keys that are already in (an earlier run's, or an earlier
        batch's copy of the same record) go: a source key that moved to another record still owns
        its id, and the later copy of a record wins."""
        con = self.con
        accepted_ids = f"SELECT _id FROM {staging.STAGE} WHERE _status IS NULL"
        _count(self.report.removed, table.name, _delete_rows(con, table, accepted_ids, []))
        for lineage in (f"{SIDE_SCHEMA}.lineage", _LINEAGE):  # an earlier run's, or this run's
            con.execute(
                f"DELETE FROM {lineage} WHERE omop_table = ? AND omop_id IN ({accepted_ids})", [table.name]
            )
        if table.name in self.held:
            con.execute(f"DELETE FROM {_held(table.name)} WHERE _id IN ({accepted_ids})")

    def _settle_stage(self, table: Table, refs: Collection[str], *, hold: bool) -> None:
        """References, required values and text lengths of the staged rows; then the rows that can go
        in are inserted with their lineage, the others quarantined or (``hold``) held back."""
        con, report, run_id = self.con, self.report, self.report.run_id
        counts = staging.StageCounts()
        staging.resolve_references(con, table, self.ids, counts, columns=refs, hold=hold)
        staging.check_required(con, table)
        staging.truncate_text(con, table, counts)
        for key, n in counts.nulled_references.items():
            _count(report.nulled_references, key, n)
        for key, n in counts.truncated.items():
            _count(report.truncated, key, n)

        columns = ", ".join(quoted(c) for c in table.column_names)
        values = ", ".join("_id" if c in table.primary_key else quoted(c) for c in table.column_names)
        inserted = con.execute(
            f"INSERT INTO main.{table.name} ({columns}) "
            f"SELECT {values} FROM {staging.STAGE} WHERE _status IS NULL"
        ).fetchall()[0][0]
        _count(report.inserted, table.name, inserted)
        identity = "s._id" if table.primary_key else row_hash_sql(table, "s")
        con.execute(
            f"""INSERT INTO {_LINEAGE}
                  (record_key, omop_table, omop_id, source_format, source_file, position, record_type,
                   record_id, record_version, run_id)
                SELECT _record_key, ?, {identity}, _source_format, _source_file, _position, _record_type,
                       _record_id, _record_version, ?
                FROM {staging.STAGE} s WHERE _status IS NULL""",
            [table.name, run_id],
        )
        rejected = con.execute(
            f"SELECT _status, count(*) FROM {staging.STAGE} WHERE _status IS NOT NULL GROUP BY _status"
        ).fetchall()
        held = sum(n for code, n in rejected if code == staging.HELD)
        if held:
            keep = f"SELECT * FROM {staging.STAGE} WHERE _status = '{staging.HELD}'"
            if table.name in self.held:
                con.execute(f"INSERT INTO {_held(table.name)} {keep}")
            else:
                con.execute(f"CREATE TEMP TABLE {_held(table.name)} AS {keep}")
                self.held.add(table.name)
        con.execute(
            f"""INSERT INTO {SIDE_SCHEMA}.quarantine
                  (run_id, source_format, source_file, position, record_type, record_id, reason_code, reason)
                SELECT ?, coalesce(_source_format, 'unknown'), coalesce(_source_file, 'unknown'), _position,
                       _record_type, _record_id, _status, ? || ': ' || _reason
                FROM {staging.STAGE} WHERE _status IS NOT NULL AND _status <> ?""",
            [run_id, table.name, staging.HELD],
        )
        for code, n in rejected:
            if code != staging.HELD:
                _count(report.quarantined, code, n)
        logger.info(
            "%s: %d rows inserted, %d quarantined, %d held back",
            table.name,
            inserted,
            sum(n for _, n in rejected) - held,
            held,
        )


def _held(name: str) -> str:
    return f"_passerelle_held__{name}"


def _remove_records(
    con: duckdb.DuckDBPyConnection,
    tables: dict[str, pl.DataFrame],
    deletions: pl.DataFrame,
    report: LoadReport,
) -> None:
    """Take out every row of the records this batch brings again or deletes, and their lineage.

    Rows of earlier runs only: a record deleted by one batch and brought by another of the same run
    keeps the rows brought, as within one batch; a record brought again by a later batch of the run
    replaces its rows through their ids (``_Run._load_table``)."""
    brought = pl.concat(
        [pl.DataFrame(schema={"_record_key": pl.Utf8})]
        + [f.select(pl.col("_record_key").cast(pl.Utf8)) for f in tables.values()]
    ).unique()
    deleted = deletions.select(pl.col("_record_key").cast(pl.Utf8)).unique()
    report.records_loaded += brought.get_column("_record_key").drop_nulls().len()
    affected = pl.concat([brought, deleted]).drop_nulls().unique()
    staging.on_frame(
        con, affected, "keys", f"CREATE OR REPLACE TEMP TABLE {_AFFECTED} AS SELECT _record_key FROM keys"
    )
    report.records_deleted += staging.on_frame(
        con,
        deleted.drop_nulls(),
        "deleted",
        f"""SELECT count(DISTINCT d._record_key) FROM deleted d
            JOIN {SIDE_SCHEMA}.lineage l
              ON l.record_key = d._record_key AND l.run_id <> {int(report.run_id)}""",
    )[0][0]
    # run_id <> ?: DuckDB skips the row groups of this run's lineage (min = max = this run).
    ours = f"run_id <> {int(report.run_id)} AND record_key IN (SELECT _record_key FROM {_AFFECTED})"
    touched = con.execute(f"SELECT DISTINCT omop_table FROM {SIDE_SCHEMA}.lineage WHERE {ours}").fetchall()
    for (name,) in touched:
        ids = f"SELECT omop_id FROM {SIDE_SCHEMA}.lineage WHERE omop_table = ? AND {ours}"
        _count(report.removed, name, _delete_rows(con, cdm_schema().table(name), ids, [name]))
    if touched:
        con.execute(f"DELETE FROM {SIDE_SCHEMA}.lineage WHERE {ours}")


def _delete_rows(con: duckdb.DuckDBPyConnection, table: Table, ids_sql: str, params: list) -> int:
    """Delete the rows of ``table`` whose lineage id is in ``ids_sql`` (primary key or row hash)."""
    identity = quoted(table.primary_key[0]) if table.primary_key else row_hash_sql(table, "t")
    deleted = con.execute(f"DELETE FROM main.{table.name} t WHERE {identity} IN ({ids_sql})", params)
    return deleted.fetchall()[0][0]


def _settle_orphans(con: duckdb.DuckDBPyConnection, run_id: int, report: LoadReport) -> None:
    """Rows of untouched records that point at a row this load deleted (e.g. a deleted Patient).

    The same rule as for the batch's own rows: a required reference sends the row to quarantine (it
    leaves the CDM, its lineage goes with it into the quarantine row), an optional one becomes NULL.
    Tables are visited in load order, so a removed visit's details are settled after the visit.
    """
    schema = cdm_schema()
    for name in load_order():
        table = schema.table(name)
        for column_name, column in references(table).items():
            target, target_column = column.references
            if target not in report.removed and target not in report.orphaned:
                continue
            col = quoted(column_name)
            dangling = (
                f"t.{col} IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM main.{target} r WHERE r.{quoted(target_column)} = t.{col})"
            )
            if not column.required:
                nulled = con.execute(
                    f"UPDATE main.{name} t SET {col} = NULL WHERE {dangling} RETURNING 1"
                ).fetchall()
                _count(report.nulled_references, f"{name}.{column_name}", len(nulled))
                continue
            identity = quoted(table.primary_key[0]) if table.primary_key else row_hash_sql(table, "t")
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {_ORPHANS} AS "
                f"SELECT DISTINCT {identity} AS omop_id FROM main.{name} t WHERE {dangling}"
            )
            orphans = con.execute(f"SELECT count(*) FROM {_ORPHANS}").fetchall()[0][0]
            if not orphans:
                continue
            ids = f"SELECT omop_id FROM {_ORPHANS}"
            _count(report.orphaned, name, _delete_rows(con, table, ids, []))
            reason = f"{name}: {column_name}: the {target} record it refers to was deleted"
            # Rows with lineage came from a source record: they go to quarantine. Rows without it
            # (derived eras and periods) are simply gone; `derive` rebuilds those tables.
            kept = con.execute(
                f"""INSERT INTO {SIDE_SCHEMA}.quarantine (run_id, source_format, source_file, position,
                      record_type, record_id, reason_code, reason)
                    SELECT ?, source_format, source_file, position, record_type, record_id,
                           'orphaned_reference', ?
                    FROM {SIDE_SCHEMA}.lineage WHERE omop_table = ? AND omop_id IN ({ids})""",
                [run_id, reason, name],
            ).fetchall()[0][0]
            con.execute(
                f"DELETE FROM {SIDE_SCHEMA}.lineage WHERE omop_table = ? AND omop_id IN ({ids})", [name]
            )
            _count(report.quarantined, "orphaned_reference", kept)


def _store_mapper_quarantine(
    con: duckdb.DuckDBPyConnection, quarantine: pl.DataFrame, report: LoadReport
) -> None:
    if not quarantine.height:
        return
    counts = staging.on_frame(
        con, quarantine, "q", "SELECT coalesce(reason_code, 'unspecified'), count(*) FROM q GROUP BY ALL"
    )
    staging.on_frame(
        con,
        quarantine,
        "q",
        f"""INSERT INTO {SIDE_SCHEMA}.quarantine
              (run_id, source_format, source_file, position, record_type, record_id, reason_code, reason)
            SELECT {int(report.run_id)}, coalesce(source_format, 'unknown'), coalesce(source_file, 'unknown'),
                   position, record_type, record_id, coalesce(reason_code, 'unspecified'),
                   coalesce(reason, 'no reason given by the mapper')
            FROM q""",
    )
    for code, n in counts:
        _count(report.quarantined, code, n)


def _write_run_log(
    con: duckdb.DuckDBPyConnection, report: LoadReport, started: datetime, version: str | None
) -> None:
    """One run_log row per run; a row the orchestrator opened for this run_id is completed."""
    con.execute(
        f"""INSERT INTO {SIDE_SCHEMA}.run_log
              (run_id, command, started_at, finished_at, status, vocabulary_version, summary)
            VALUES (?, 'load', ?, ?, 'succeeded', ?, ?)
            ON CONFLICT (run_id) DO UPDATE SET
              finished_at = excluded.finished_at, status = excluded.status,
              vocabulary_version = coalesce(excluded.vocabulary_version, run_log.vocabulary_version),
              summary = excluded.summary""",
        [report.run_id, started, _utc_now(), version, json.dumps(report.summary())],
    )


def _count(counter: dict[str, int], key: str, n: int) -> None:
    if n:
        counter[key] = counter.get(key, 0) + n


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
