"""Putting a loaded vocabulary into the DuckDB warehouse, and recording which release it is.

The vocabulary tables are replaced as a whole, in one transaction with the run-log row, so the
warehouse never holds half of one release and half of another. DuckDB reads the cached Parquet files
directly: no rows pass through Python.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import duckdb

from pipelines.vocab.athena import vocabulary_tables
from pipelines.vocab.vocabulary import Vocabulary
from pipelines.warehouse.duckdb_file import CDM_SCHEMA, SIDE_SCHEMA


def write_vocabulary(
    con: duckdb.DuckDBPyConnection, vocab: Vocabulary, *, command: str = "vocab load"
) -> dict[str, int]:
    """Replace the warehouse's vocabulary tables with ``vocab``'s; rows per table.

    Tables the download does not have are left empty. The release goes to
    ``cdm_source.vocabulary_version`` when a cdm_source row exists (the DERIVE room writes that row;
    with none yet, it takes the release from the VOCABULARY table when it does) and to a new
    ``passerelle.run_log`` row whose summary lists the tables and their state.
    """
    started = _utc_now()
    counts: dict[str, int] = {}
    con.execute("BEGIN")
    try:
        for table in vocabulary_tables():
            con.execute(f"DELETE FROM {CDM_SCHEMA}.{table.name}")
            path = vocab.cache_dir / f"{table.name}.parquet"
            if path.exists():
                columns = ", ".join(table.column_names)
                con.execute(
                    f"INSERT INTO {CDM_SCHEMA}.{table.name} ({columns}) "
                    f"SELECT {columns} FROM read_parquet(?)",
                    [str(path)],
                )
            counts[table.name] = con.execute(f"SELECT count(*) FROM {CDM_SCHEMA}.{table.name}").fetchone()[0]
        updated = con.execute(
            f"UPDATE {CDM_SCHEMA}.cdm_source SET vocabulary_version = ?", [vocab.version]
        ).fetchone()[0]
        summary = {
            "source": str(vocab.source),
            "cache": "built" if vocab.built else "reused",
            "tables": {
                name: {**info, "rows_in_warehouse": counts[name]} for name, info in vocab.tables.items()
            },
            "cdm_source_rows_updated": updated,
        }
        run_id = con.execute(f"SELECT coalesce(max(run_id), 0) + 1 FROM {SIDE_SCHEMA}.run_log").fetchone()[0]
        con.execute(
            f"""INSERT INTO {SIDE_SCHEMA}.run_log
                  (run_id, command, started_at, finished_at, status, vocabulary_version, summary)
                VALUES (?, ?, ?, ?, 'succeeded', ?, ?)""",
            [run_id, command, started, _utc_now(), vocab.version, json.dumps(summary)],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return counts


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
