"""Where the CDM goes: a DuckDB file, a Parquet folder, a PostgreSQL database; one interface for all.

The DuckDB file is the system of record: it holds the id map, the lineage and the incremental logic.
Parquet and PostgreSQL are exports of its CDM tables, refreshed whole after each committed load, so
they always show one consistent state (the previous one if anything fails).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import duckdb

from pipelines.cdm.spec import cdm_schema
from pipelines.errors import PasserelleError, WarehouseError


@dataclass(frozen=True)
class ExportManifest:
    """What an export says about itself (written as manifest.json beside the Parquet tables)."""

    cdm_version: str
    vocabulary_version: str | None
    run_id: int | None
    exported_at: str

    @classmethod
    def now(cls, *, vocabulary_version: str | None, run_id: int | None) -> ExportManifest:
        stamp = datetime.now(UTC).replace(microsecond=0).isoformat()
        return cls(cdm_schema().version, vocabulary_version, run_id, stamp)


class Target(Protocol):
    """A place that holds the CDM tables of the warehouse."""

    name: str  # "warehouse", "parquet" or "postgres"
    location: str  # path or host/database/schema; never a password
    description: str  # for messages and reports

    def store(self, warehouse: duckdb.DuckDBPyConnection, manifest: ExportManifest) -> dict[str, int]:
        """Make this target hold every CDM table of ``warehouse``; rows per table."""
        ...


def open_targets(warehouse: Path | None, parquet: Path | None, postgres: str | None) -> list[Target]:
    """The targets a run writes, the DuckDB system of record first.

    Without ``warehouse`` the system of record is a DuckDB file beside the Parquet folder
    (``DIR.duckdb``), or, for PostgreSQL alone, one per database in Passerelle's state folder: ids and
    incremental loads need the id map to outlive the run.
    """
    from pipelines.warehouse.duckdb_file import DuckDbFile
    from pipelines.warehouse.parquet_folder import ParquetFolder
    from pipelines.warehouse.postgres_database import PostgresDatabase

    if warehouse is None and parquet is None and postgres is None:
        raise PasserelleError("choose at least one target: --warehouse PATH, --parquet DIR or --postgres URL")
    exports: list[Target] = []
    if parquet is not None:
        exports.append(ParquetFolder(Path(parquet)))
    if postgres is not None:
        exports.append(PostgresDatabase(postgres))
    if warehouse is None:
        if parquet is not None:
            warehouse = Path(parquet).with_name(Path(parquet).name + ".duckdb")
        else:
            warehouse = _state_folder() / f"postgres-{_digest(exports[-1].description)}.duckdb"
    return [DuckDbFile(Path(warehouse)), *exports]


def system_of_record(targets: list[Target]):
    """The one DuckDB file among ``targets`` (the loader writes there and exports from there)."""
    from pipelines.warehouse.duckdb_file import DuckDbFile

    files = [t for t in targets if isinstance(t, DuckDbFile)]
    if len(files) != 1:
        raise WarehouseError(
            f"a load needs exactly one DuckDB warehouse among its targets, got {len(files)}; "
            "build the list with open_targets()"
        )
    return files[0]


def export_cdm(
    warehouse: Path | duckdb.DuckDBPyConnection,
    *,
    parquet: Path | None = None,
    postgres: str | None = None,
    run_id: int | None = None,
    vocabulary_version: str | None = None,
) -> dict[str, int]:
    """Refresh the Parquet and/or PostgreSQL exports from a warehouse; rows per CDM table.

    For after the derived tables are built (a load already exports what it loaded). ``warehouse`` is
    a DuckDB file (opened read-only) or an open connection.
    """
    from pipelines.warehouse.duckdb_file import connect
    from pipelines.warehouse.parquet_folder import ParquetFolder
    from pipelines.warehouse.postgres_database import PostgresDatabase

    targets: list[Target] = []
    if parquet is not None:
        targets.append(ParquetFolder(Path(parquet)))
    if postgres is not None:
        targets.append(PostgresDatabase(postgres))
    if not targets:
        raise PasserelleError("nothing to export to: give --parquet DIR and/or --postgres URL")
    if isinstance(warehouse, duckdb.DuckDBPyConnection):
        stored = store_all(warehouse, targets, run_id=run_id, vocabulary_version=vocabulary_version)
    else:
        with connect(warehouse, read_only=True) as con:
            stored = store_all(con, targets, run_id=run_id, vocabulary_version=vocabulary_version)
    return next(iter(stored.values()))


def store_all(
    warehouse: duckdb.DuckDBPyConnection,
    targets: list[Target],
    *,
    run_id: int | None,
    vocabulary_version: str | None,
) -> dict[str, dict[str, int]]:
    """Have every target store the warehouse's CDM tables; rows per table, by target description."""
    version = vocabulary_version or warehouse_vocabulary_version(warehouse)
    manifest = ExportManifest.now(vocabulary_version=version, run_id=run_id)
    return {t.description: t.store(warehouse, manifest) for t in targets}


def warehouse_vocabulary_version(con: duckdb.DuckDBPyConnection) -> str | None:
    """The vocabulary release in the warehouse (VOCABULARY row 'None'), else the last run's."""
    rows = con.execute(
        "SELECT vocabulary_version FROM main.vocabulary WHERE vocabulary_id = 'None'"
    ).fetchall()
    if rows and rows[0][0]:
        return rows[0][0]
    rows = con.execute(
        "SELECT vocabulary_version FROM passerelle.run_log WHERE vocabulary_version IS NOT NULL "
        "ORDER BY run_id DESC LIMIT 1"
    ).fetchall()
    return rows[0][0] if rows else None


def _state_folder() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "passerelle"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]
