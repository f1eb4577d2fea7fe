"""The Parquet folder target: one folder per CDM table, exactly its CDM columns and types.

``<table>/part-0.parquet`` under the folder, plus ``manifest.json`` (CDM and vocabulary versions, run,
row counts). DuckDB, Spark and R arrow read a table as ``read_parquet('DIR/person/*.parquet')`` /
``spark.read.parquet('DIR/person')`` / ``arrow::open_dataset('DIR/person')``.

The export is written into a fresh folder beside the target and swapped in by renames, so a reader
(or a crash) never sees half an export. Between the two renames the old folder sits at
``.<name>.old-<pid>``; the next export puts it back if a crash left it there.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import duckdb

from pipelines.cdm.spec import cdm_schema
from pipelines.errors import WarehouseError
from pipelines.warehouse.cdm_tables import duckdb_type, quoted, vocabulary_table_names
from pipelines.warehouse.targets import ExportManifest

MANIFEST = "manifest.json"
PART = "part-0.parquet"


class ParquetFolder:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.name, self.location = "parquet", str(self.folder)
        self.description = f"Parquet {self.folder}"

    def store(self, warehouse: duckdb.DuckDBPyConnection, manifest: ExportManifest) -> dict[str, int]:
        self._recover()
        if self.folder.exists() and not (self.folder / MANIFEST).exists() and any(self.folder.iterdir()):
            raise WarehouseError(
                f"{self.folder}: not a Passerelle Parquet export (no {MANIFEST}); "
                "choose an empty or new folder, the export replaces the folder's content"
            )
        fresh = self.folder.with_name(f".{self.folder.name}.new-{os.getpid()}")
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        try:
            rows = {}
            reusable = self._unchanged_vocabulary(warehouse, manifest)
            for table in cdm_schema().tables:
                if table.name in reusable:
                    rows[table.name] = reusable[table.name]
                    _link_folder(self.folder / table.name, fresh / table.name)
                    continue
                (fresh / table.name).mkdir()
                columns = ", ".join(
                    f"CAST({quoted(c.name)} AS {duckdb_type(c)}) AS {quoted(c.name)}" for c in table.columns
                )
                target = _sql_string(str(fresh / table.name / PART))
                rows[table.name] = warehouse.execute(
                    f"COPY (SELECT {columns} FROM main.{table.name}) TO {target} "
                    "(FORMAT parquet, COMPRESSION zstd)"
                ).fetchall()[0][0]
            document = {**asdict(manifest), "format": "parquet", "tables": rows}
            (fresh / MANIFEST).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            self._swap_in(fresh)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        return rows

    def _unchanged_vocabulary(
        self, warehouse: duckdb.DuckDBPyConnection, manifest: ExportManifest
    ) -> dict[str, int]:
        """Vocabulary tables the previous export already holds (same release, same row counts).

        A full Athena vocabulary is hundreds of millions of rows; it changes a few times a year, the
        clinical tables every night. Those tables' files are hard-linked into the new export.
        """
        previous = self.folder / MANIFEST
        if manifest.vocabulary_version is None or not previous.exists():
            return {}
        before = json.loads(previous.read_text(encoding="utf-8"))
        if before.get("vocabulary_version") != manifest.vocabulary_version:
            return {}
        same = {}
        for name in vocabulary_table_names():
            count = warehouse.execute(f"SELECT count(*) FROM main.{name}").fetchall()[0][0]
            if before.get("tables", {}).get(name) == count and (self.folder / name).is_dir():
                same[name] = count
        return same

    def _swap_in(self, fresh: Path) -> None:
        old = self.folder.with_name(f".{self.folder.name}.old-{os.getpid()}")
        if self.folder.exists():
            self.folder.rename(old)
        fresh.rename(self.folder)
        shutil.rmtree(old, ignore_errors=True)

    def _recover(self) -> None:
        """A crash between the two renames of a previous export left the folder aside: put it back."""
        if self.folder.exists():
            return
        for old in sorted(self.folder.parent.glob(f".{self.folder.name}.old-*")):
            old.rename(self.folder)
            return


def _link_folder(source: Path, target: Path) -> None:
    """Hard links: the new export shares the files, the old one stays whole until the swap."""
    target.mkdir()
    for path in source.iterdir():
        os.link(path, target / path.name)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
