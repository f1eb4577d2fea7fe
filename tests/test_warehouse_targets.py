"""Choosing targets, and what the Parquet and PostgreSQL exports promise: self-describing, all or
nothing, exactly the CDM, never a password in a message."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from click.testing import CliRunner

from pipelines.cdm.spec import cdm_schema
from pipelines.errors import PasserelleError, WarehouseError
from pipelines.warehouse import ExportManifest, export_cdm, load_batch, open_targets
from pipelines.warehouse.commands import export
from pipelines.warehouse.duckdb_file import DuckDbFile, create_schema
from pipelines.warehouse.parquet_folder import ParquetFolder
from pipelines.warehouse.postgres_database import PostgresDatabase
from tests.test_warehouse_conformance import HEART_RATE, first_batch


def test_open_targets_puts_the_duckdb_system_of_record_first(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(PasserelleError, match="choose at least one target"):
        open_targets(None, None, None)
    both = open_targets(tmp_path / "w.duckdb", tmp_path / "cdm", "postgresql://omop@db.example.org/ehr")
    assert [t.name for t in both] == ["warehouse", "parquet", "postgres"]
    assert [t.location for t in both] == [
        str(tmp_path / "w.duckdb"),
        str(tmp_path / "cdm"),
        "db.example.org:5432/ehr schema cdm",
    ]
    parquet_only = open_targets(None, tmp_path / "cdm", None)
    assert parquet_only[0].path == tmp_path / "cdm.duckdb"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    postgres_only = open_targets(None, None, "postgresql://omop@db.example.org/ehr")
    assert postgres_only[0].path.parent == tmp_path / "state" / "passerelle"
    assert postgres_only[0].path.name.startswith("postgres-")


def test_postgres_urls_are_checked_and_passwords_never_shown() -> None:
    target = PostgresDatabase(
        "postgresql://omop:s3cret@db.example.org:5433/ehr?schema=omop_cdm&sslmode=require"
    )
    assert target.schema == "omop_cdm"
    assert target.url == "postgresql://omop:s3cret@db.example.org:5433/ehr?sslmode=require"
    assert "s3cret" not in target.description and "omop:" not in target.description
    with pytest.raises(WarehouseError, match="takes a URL like postgresql://"):
        PostgresDatabase("mysql://db.example.org/ehr")
    with pytest.raises(WarehouseError, match="use lowercase letters, digits and _ only"):
        PostgresDatabase("postgresql://db.example.org/ehr?schema=CDM;drop")


def test_the_parquet_export_describes_itself_and_keeps_cdm_types(tmp_path: Path) -> None:
    from pipelines.vocab import load_vocabulary

    vocab = load_vocabulary()
    folder = tmp_path / "cdm"
    report = load_batch(
        first_batch(), open_targets(tmp_path / "w.duckdb", folder, None), vocab=vocab, run_id=5
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["cdm_version"] == "5.4"
    assert manifest["vocabulary_version"] == vocab.version
    assert manifest["run_id"] == 5
    assert manifest["tables"]["measurement"] == 3 and manifest["tables"]["observation_period"] == 0
    assert manifest["tables"]["concept"] == vocab.concept.select(pl.len()).collect().item()
    assert sorted(p.name for p in folder.iterdir()) == sorted([*cdm_schema().table_names, "manifest.json"])
    assert report.exported[f"Parquet {folder}"] == manifest["tables"]
    assert report.exported[f"DuckDB {tmp_path / 'w.duckdb'}"] == manifest["tables"]

    measurement = ds.dataset(folder / "measurement", format="parquet").to_table()
    assert measurement.schema.field("measurement_id").type == pa.int64()
    assert measurement.schema.field("measurement_concept_id").type == pa.int32()
    assert measurement.schema.field("measurement_date").type == pa.date32()
    assert measurement.schema.field("measurement_datetime").type == pa.timestamp("us")
    assert measurement.schema.field("value_as_number").type == pa.float64()
    empty = ds.dataset(folder / "observation_period", format="parquet").to_table()
    assert empty.num_rows == 0 and empty.schema.names == cdm_schema().table("observation_period").column_names
    with duckdb.connect() as con:
        found = con.execute(
            f"SELECT count(*) FROM read_parquet('{folder}/measurement/*.parquet') "
            f"WHERE measurement_concept_id = {HEART_RATE}"
        ).fetchall()
    assert found == [(2,)]


def _empty_cdm_without(table: str) -> duckdb.DuckDBPyConnection:
    """An in-memory CDM with one table missing: an export from it fails partway."""
    con = duckdb.connect()
    create_schema(con)
    con.execute(f"DROP TABLE main.{table}")
    return con


def test_a_failed_parquet_export_leaves_the_previous_one(tmp_path: Path) -> None:
    folder = tmp_path / "cdm"
    load_batch(first_batch(), open_targets(tmp_path / "w.duckdb", folder, None), run_id=1)
    before = (folder / "manifest.json").read_text()
    manifest = ExportManifest.now(vocabulary_version=None, run_id=2)
    with _empty_cdm_without("note") as broken, pytest.raises(duckdb.CatalogException):
        ParquetFolder(folder).store(broken, manifest)
    assert (folder / "manifest.json").read_text() == before
    assert pl.read_parquet(folder / "measurement" / "*.parquet").height == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cdm", "w.duckdb"]


def test_an_export_interrupted_between_its_renames_is_put_back(tmp_path: Path) -> None:
    folder = tmp_path / "cdm"
    load_batch(first_batch(), open_targets(tmp_path / "w.duckdb", folder, None), run_id=1)
    folder.rename(tmp_path / ".cdm.old-4242")  # the state a crash after the first rename leaves
    rows = export_cdm(tmp_path / "w.duckdb", parquet=folder)
    assert rows["measurement"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cdm", "w.duckdb"]


def test_a_folder_that_is_not_an_export_is_not_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.docx").write_text("mine")
    with pytest.raises(WarehouseError, match="not a Passerelle Parquet export"):
        load_batch(first_batch(), open_targets(tmp_path / "w.duckdb", folder, None), run_id=1)
    assert (folder / "thesis.docx").read_text() == "mine"


def test_export_command_refreshes_parquet_after_the_warehouse_changed(tmp_path: Path) -> None:
    warehouse = tmp_path / "w.duckdb"
    load_batch(first_batch(), [DuckDbFile(warehouse)], run_id=1)
    with duckdb.connect(str(warehouse)) as con:  # as `passerelle derive` would
        con.execute(
            "INSERT INTO observation_period VALUES (1, 1, DATE '2024-05-02', DATE '2024-07-01', 32817)"
        )
    result = CliRunner().invoke(export, ["--warehouse", str(warehouse), "--parquet", str(tmp_path / "cdm")])
    assert result.exit_code == 0, result.output
    assert "exported 8 rows (4 non-empty of 39 CDM tables)" in result.output
    assert pl.read_parquet(tmp_path / "cdm" / "observation_period" / "*.parquet").height == 1
    nothing = CliRunner().invoke(export, ["--warehouse", str(warehouse)])
    assert isinstance(nothing.exception, PasserelleError)


@pytest.mark.postgres
def test_postgres_export_is_a_full_refresh_in_one_transaction(tmp_path: Path, postgres_url: str) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    url = f"{postgres_url}?schema=refresh"
    warehouse = tmp_path / "w.duckdb"
    load_batch(first_batch(), open_targets(warehouse, None, url), run_id=1)
    load_batch(first_batch(), open_targets(warehouse, None, url), run_id=2)

    def count(table: str) -> int:
        with adbc.connect(postgres_url) as con, con.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM refresh.{table}")
            return cur.fetchone()[0]

    assert count("measurement") == 3 and count("person") == 2
    manifest = ExportManifest.now(vocabulary_version=None, run_id=3)
    with _empty_cdm_without("note") as broken, pytest.raises(duckdb.CatalogException):
        PostgresDatabase(url).store(broken, manifest)
    assert count("measurement") == 3 and count("person") == 2


@pytest.mark.postgres
def test_postgres_refuses_a_table_that_is_not_the_cdm_one(tmp_path: Path, postgres_url: str) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(postgres_url) as con, con.cursor() as cur:
        cur.execute("CREATE SCHEMA legacy")
        cur.execute("CREATE TABLE legacy.person (person_id bigint, name text)")
        con.commit()
    with pytest.raises(WarehouseError, match=r"table person does not have exactly the CDM v5\.4 columns"):
        load_batch(first_batch(), open_targets(tmp_path / "w.duckdb", None, f"{postgres_url}?schema=legacy"))
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as con:
        assert con.execute("SELECT status FROM passerelle.run_log").fetchall() == [("export_failed",)]


def _vocabulary_release(warehouse: Path, release: str) -> None:
    with duckdb.connect(str(warehouse)) as con:
        con.execute("UPDATE vocabulary SET vocabulary_version = ? WHERE vocabulary_id = 'None'", [release])


def test_parquet_export_reuses_an_unchanged_vocabulary_and_rewrites_a_new_one(tmp_path: Path) -> None:
    from pipelines.vocab import load_vocabulary

    vocab = load_vocabulary()
    folder, warehouse = tmp_path / "cdm", tmp_path / "w.duckdb"
    load_batch(first_batch(), open_targets(warehouse, folder, None), vocab=vocab, run_id=1)
    concept_file = folder / "concept" / "part-0.parquet"
    first = concept_file.stat().st_ino
    measurement_first = (folder / "measurement" / "part-0.parquet").stat().st_ino
    load_batch(first_batch(), open_targets(warehouse, folder, None), vocab=vocab, run_id=2)
    assert concept_file.stat().st_ino == first
    assert (folder / "measurement" / "part-0.parquet").stat().st_ino != measurement_first
    _vocabulary_release(warehouse, "v5.0 01-JAN-27")
    rows = export_cdm(warehouse, parquet=folder)
    assert concept_file.stat().st_ino != first
    assert (
        rows["concept"]
        == pl.read_parquet(concept_file).height
        == vocab.concept.select(pl.len()).collect().item()
    )
    assert json.loads((folder / "manifest.json").read_text())["vocabulary_version"] == "v5.0 01-JAN-27"


@pytest.mark.postgres
def test_postgres_export_keeps_an_unchanged_vocabulary_in_place(tmp_path: Path, postgres_url: str) -> None:
    import adbc_driver_postgresql.dbapi as adbc

    from pipelines.vocab import load_vocabulary

    vocab = load_vocabulary()
    url, warehouse = f"{postgres_url}?schema=vocab_reuse", tmp_path / "w.duckdb"

    def written_by() -> tuple[str, str]:
        """The transactions that wrote the concept and person rows (PostgreSQL's xmin)."""
        with adbc.connect(postgres_url) as con, con.cursor() as cur:
            cur.execute(
                "SELECT (SELECT max(xmin::text) FROM vocab_reuse.concept), "
                "(SELECT max(xmin::text) FROM vocab_reuse.person)"
            )
            return cur.fetchall()[0]

    load_batch(first_batch(), open_targets(warehouse, None, url), vocab=vocab, run_id=1)
    concept_first, person_first = written_by()
    load_batch(first_batch(), open_targets(warehouse, None, url), vocab=vocab, run_id=2)
    concept_second, person_second = written_by()
    assert concept_second == concept_first and person_second != person_first
    _vocabulary_release(warehouse, "v5.0 01-JAN-27")
    rows = export_cdm(warehouse, postgres=url)
    assert written_by()[0] != concept_first
    assert rows["concept"] == vocab.concept.select(pl.len()).collect().item()
