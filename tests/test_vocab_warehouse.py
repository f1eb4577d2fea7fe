"""`passerelle vocab load`: vocabulary tables in the DuckDB warehouse, the release recorded."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.mapping.concepts import batch_coverage, coverage_summary
from pipelines.project_files import data_dir
from pipelines.vocab import load_vocabulary, write_vocabulary
from pipelines.warehouse.duckdb_file import connect, initialize


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PASSERELLE_CACHE_DIR", str(tmp_path / "cache"))


def test_vocab_load_command_loads_the_shard_and_logs_the_release(shared, warehouse_path):
    folder = shared / "reference/vocab/synthea27nj_shard"
    result = CliRunner().invoke(main, ["vocab", "load", str(folder), "--warehouse", str(warehouse_path)])
    assert result.exit_code == 0, result.output
    assert "cache built" in result.output
    assert "concept_synonym: no file - skipped" in result.output
    assert "concept_ancestor: header only, no rows - skipped" in result.output
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM main.concept").fetchone()[0] == 2294
        assert con.execute("SELECT count(*) FROM main.concept_relationship").fetchone()[0] == 266588
        assert con.execute("SELECT concept_name FROM main.concept WHERE concept_id = 201826").fetchone()[
            0
        ] == ("Type 2 diabetes mellitus")
        command, version, summary = con.execute(
            "SELECT command, vocabulary_version, summary FROM passerelle.run_log"
        ).fetchone()
    assert (command, version) == ("vocab load", "v5.0 09-APR-22*")
    assert json.loads(summary)["tables"]["drug_strength"]["status"] == "missing"

    again = CliRunner().invoke(main, ["vocab", "load", str(folder), "--warehouse", str(warehouse_path)])
    assert "cache reused" in again.output
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM main.concept").fetchone()[0] == 2294  # replaced, not doubled
        assert con.execute("SELECT count(*) FROM passerelle.run_log").fetchone()[0] == 2


def test_release_goes_to_an_existing_cdm_source_row(warehouse_path):
    initialize(warehouse_path)
    with connect(warehouse_path) as con:
        con.execute(
            "INSERT INTO main.cdm_source (cdm_source_name, cdm_source_abbreviation, cdm_holder, "
            "source_release_date, cdm_release_date, cdm_version_concept_id, vocabulary_version) "
            "VALUES ('test', 't', 'us', DATE '2026-01-01', DATE '2026-01-01', 756265, 'old')"
        )
        counts = write_vocabulary(con, load_vocabulary())
        version = con.execute("SELECT vocabulary_version FROM main.cdm_source").fetchone()[0]
        ancestors = con.execute(
            "SELECT count(*) FROM main.concept_ancestor WHERE ancestor_concept_id = 1112807"
        ).fetchone()[0]
    assert version.startswith("starter v1")
    assert counts["concept"] == 468 and counts["concept_ancestor"] == 469
    assert ancestors == 2  # aspirin itself and aspirin 81 MG Oral Tablet


def test_missing_folder_is_one_line_error(tmp_path, warehouse_path):
    result = CliRunner().invoke(
        main, ["vocab", "load", str(tmp_path / "none"), "--warehouse", str(warehouse_path)]
    )
    assert result.exit_code == 2
    assert "no such vocabulary folder" in result.output


def test_batch_coverage_counts_main_concepts_per_table():
    vocab = load_vocabulary(local_maps=data_dir("mappings") / "local")
    tables = {
        "condition_occurrence": pl.DataFrame(
            {
                "condition_concept_id": [201826, 0, 0],
                "condition_source_value": ["44054006", "X1", "X1"],
                "condition_source_concept_id": [201826, 0, 0],
            }
        ),
        "measurement": pl.DataFrame(
            {
                "measurement_concept_id": [3027018],
                "measurement_source_value": ["8867-4"],
                "measurement_source_concept_id": [3027018],
                "unit_concept_id": [0],
                "unit_source_value": ["furlong"],
            }
        ),
    }
    summary = coverage_summary(batch_coverage(tables, vocab)).sort("target_table", "source_vocabulary_id")
    assert summary.select("source_vocabulary_id", "target_table", "rows", "mapped_rows").rows() == [
        ("(unknown)", "condition_occurrence", 2, 0),
        ("SNOMED", "condition_occurrence", 1, 1),
        ("LOINC", "measurement", 1, 1),
    ]
