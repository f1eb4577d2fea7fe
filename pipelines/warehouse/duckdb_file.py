"""The DuckDB warehouse file: CDM tables in schema ``main``, Passerelle's side tables in ``passerelle``.

The file is written in DuckDB's v1.0.0 storage format so that the DuckDB 1.x clients OHDSI users run
from R (duckdb R package, DatabaseConnector) can open it; tests/test_warehouse_init.py proves it with a real
DuckDB 1.x in a separate virtual environment.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from pipelines.cdm.ddl import statements
from pipelines.cdm.spec import cdm_schema, side_schema
from pipelines.errors import WarehouseError

if TYPE_CHECKING:  # targets.py imports this module
    from pipelines.warehouse.targets import ExportManifest

CDM_SCHEMA = "main"
SIDE_SCHEMA = "passerelle"
# Oldest storage format that still holds every type we write; readable by DuckDB >= 1.0.
STORAGE_VERSION = "v1.0.0"


def connect(path: Path | str, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open a warehouse file (created if missing, in the compatible storage format)."""
    path = Path(path)
    if read_only and not path.exists():
        raise WarehouseError(
            f"{path}: no such warehouse; create it with `passerelle init --warehouse {path}`"
        )
    try:
        if not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        config = {} if read_only else {"storage_compatibility_version": STORAGE_VERSION}
        return duckdb.connect(str(path), read_only=read_only, config=config)
    except duckdb.Error as error:
        raise WarehouseError(f"{path}: {_explain(error)}") from error


def initialize(path: Path | str) -> bool:
    """Create the CDM and side tables if the file does not have them yet; True when created.

    All in one transaction: a failure leaves no half-built schema behind.
    """
    with connect(path) as con:
        if is_initialized(con):
            return False
        con.execute("BEGIN")
        create_schema(con)
        con.execute("COMMIT")
    return True


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create every CDM table (no foreign keys: see pipelines/cdm/ddl.py) and the side tables."""
    for sql in _ddl():
        con.execute(sql)


@cache
def _ddl() -> tuple[str, ...]:
    """Rendered once per process: every load of a new warehouse file needs it."""
    return (
        *statements(cdm_schema(), "duckdb", parts=("tables",)),
        f"CREATE SCHEMA IF NOT EXISTS {SIDE_SCHEMA}",
        *statements(side_schema(), "duckdb", db_schema=SIDE_SCHEMA, parts=("tables", "primary_keys")),
    )


def is_initialized(con: duckdb.DuckDBPyConnection) -> bool:
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'run_log'",
        [SIDE_SCHEMA],
    ).fetchone()[0]
    return found > 0


def _explain(error: Exception) -> str:
    """DuckDB's message turned into what the user should do about it."""
    message = str(error).strip().splitlines()[0]
    if "not a valid DuckDB database file" in message:
        return "not a DuckDB warehouse; give the path of a new file or of an existing warehouse"
    if "Could not set lock" in message or "Conflicting lock" in message:
        return "in use by another process (DuckDB allows one writer at a time); wait for it or stop it"
    if "newer version of DuckDB" in message:
        return "written by a newer DuckDB than this Passerelle can read; upgrade Passerelle"
    return f"cannot open the warehouse ({message})"


class DuckDbFile:
    """The DuckDB file target: the system of record, holding the CDM and the side tables."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name, self.location = "warehouse", str(self.path)
        self.description = f"DuckDB {self.path}"

    def open(self) -> duckdb.DuckDBPyConnection:
        """A writable connection to the warehouse, created and initialised if needed."""
        initialize(self.path)
        return connect(self.path)

    def store(self, warehouse: duckdb.DuckDBPyConnection, manifest: ExportManifest) -> dict[str, int]:
        """Nothing to copy: the loader wrote here. Rows per CDM table, as the other targets report."""
        return {
            name: warehouse.execute(f"SELECT count(*) FROM {CDM_SCHEMA}.{name}").fetchall()[0][0]
            for name in cdm_schema().table_names
        }
