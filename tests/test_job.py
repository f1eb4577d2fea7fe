"""`passerelle run` and `passerelle demo` end to end, as a user runs them (real processes, real files)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipelines.synthetic import generate

PASSERELLE = str(Path(sys.executable).parent / "passerelle")


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    generate(folder, 24, seed=7)
    return folder


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PASSERELLE, *args], capture_output=True, text=True, timeout=600)


def _ids(warehouse: Path) -> dict[str, list]:
    with duckdb.connect(str(warehouse), read_only=True) as con:
        return {
            "person": con.execute("SELECT person_id, person_source_value FROM person ORDER BY 1").fetchall(),
            "measurement": con.execute(
                "SELECT measurement_id, measurement_concept_id, value_as_number FROM measurement ORDER BY 1"
            ).fetchall(),
        }


@pytest.mark.slow
def test_run_loads_every_source_and_reports(sources, tmp_path):
    warehouse, parquet, dq = tmp_path / "omop.duckdb", tmp_path / "parquet", tmp_path / "dq"
    both = ("--fhir", str(sources / "fhir"), "--openehr", str(sources / "openehr"))
    result = _run(
        "run", *both, "--warehouse", str(warehouse), "--parquet", str(parquet), "--quality-out", str(dq)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((sources / "manifest.json").read_text())
    with duckdb.connect(str(warehouse), read_only=True) as con:
        persons = con.execute("SELECT count(*) FROM person").fetchone()[0]
        quarantined = con.execute("SELECT count(*) FROM passerelle.quarantine").fetchone()[0]
        periods = con.execute("SELECT count(DISTINCT person_id) FROM observation_period").fetchone()[0]
        version = con.execute("SELECT vocabulary_version FROM cdm_source").fetchone()[0]
    assert persons == manifest["patients"] == 24
    assert quarantined == len(manifest["broken_records"]) == 4
    assert periods == persons  # every person with an event has an observation period
    assert version == "starter v1 2026-11"
    assert f"Quarantined: {quarantined}" in result.stdout
    assert "OMOP rows written" in result.stdout and "measurement" in result.stdout
    parquet_persons = duckdb.sql(f"SELECT count(*) FROM '{parquet}/person/*.parquet'").fetchall()[0][0]
    assert parquet_persons == persons
    assert duckdb.sql(f"SELECT count(*) FROM '{parquet}/observation_period/*.parquet'").fetchall()[0][0] > 0
    assert (dq / "dq_report.html").exists()
    # steps in run order; the streamed step's overlapping parts in brackets after it
    said = " ".join(result.stdout.split())
    assert re.search(
        r"Timings: vocabulary [\d.]+s, read, map and load [\d.]+s \([^)]*FHIR read\+map [\d.]+s[^)]*"
        r"waiting for batches [\d.]+s[^)]*\), derived tables [\d.]+s, exports [\d.]+s, quality checks",
        said,
    ), said[-600:]

    before = _ids(warehouse)
    again = _run("run", *both, "--warehouse", str(warehouse))
    assert again.returncode == 0, again.stderr[-3000:]
    assert _ids(warehouse) == before  # idempotent: same tables, same ids


def test_run_without_sources_is_a_one_line_error(tmp_path):
    result = _run("run", "--warehouse", str(tmp_path / "w.duckdb"))
    assert result.returncode == 2
    assert result.stderr == "error: nothing to load: give --fhir PATH and/or --openehr PATH\n"


def test_run_with_a_missing_path_names_it(tmp_path):
    missing = tmp_path / "nope"
    result = _run("run", "--fhir", str(missing), "--warehouse", str(tmp_path / "w.duckdb"))
    assert result.returncode == 2
    assert result.stderr == f"error: {missing}: no such file or folder\n"


@pytest.mark.slow
def test_demo_builds_a_warehouse_and_prints_a_query(tmp_path):
    result = _run("demo", "--dir", str(tmp_path / "demo"), "--patients", "12")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Try a query" in result.stdout
    query_line = next(line for line in result.stdout.splitlines() if "duckdb.connect" in line)
    shown = subprocess.run(
        query_line.strip().replace(".venv/bin/python", sys.executable, 1),
        shell=True,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr
    assert "concept_name" in shown.stdout
    with duckdb.connect(str(tmp_path / "demo" / "omop.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM person").fetchone()[0] == 12


@pytest.mark.slow
def test_a_run_in_small_batches_loads_what_a_run_in_one_batch_loads(sources, tmp_path):
    """Bundles, Bulk NDJSON (Observations before their Patients) and openEHR in batches of 50
    resources: every reference to a record of a later batch is resolved; the accounting adds up."""
    from pipelines.job.pipeline import RunOptions, run_pipeline

    def run(name: str, batch_resources: int):
        warehouse = tmp_path / name / "omop.duckdb"
        options = RunOptions(
            fhir=[sources / "fhir"],
            openehr=[sources / "openehr"],
            warehouse=warehouse,
            batch_resources=batch_resources,
        )
        return warehouse, run_pipeline(options)

    one, whole = run("one", 10**9)
    many, batched = run("many", 50)
    for field in ("inputs", "mapped", "filtered", "rows", "quarantined", "derived", "coverage"):
        assert getattr(batched, field) == getattr(whole, field), field
    assert sum(whole.quarantined.values()) == 4  # the generator's broken records, nothing more
    joined = """SELECT p.person_source_value, m.measurement_source_value, m.value_as_number,
                       v.visit_source_value
                FROM measurement m JOIN person p USING (person_id)
                LEFT JOIN visit_occurrence v USING (visit_occurrence_id) ORDER BY ALL"""
    with duckdb.connect(str(one), read_only=True) as a, duckdb.connect(str(many), read_only=True) as b:
        assert b.execute(joined).fetchall() == a.execute(joined).fetchall()
        runs = "SELECT count(*) FROM passerelle.run_log WHERE command = 'load'"
        assert b.execute(runs).fetchall() == a.execute(runs).fetchall() == [(1,)]


def test_batches_made_ahead_come_in_order_and_errors_and_early_stops_reach_the_maker():
    from pipelines.job.pipeline import Tally, _made_ahead
    from pipelines.mapping.batch import MappedBatch
    from pipelines.vocab import load_vocabulary

    closed = []

    def batches(fail_at: int | None = None):
        try:
            for n in range(4):
                if n == fail_at:
                    raise ValueError("mapper failed on batch 2")
                yield MappedBatch(inputs={"Patient": n})
        finally:
            closed.append(fail_at)

    tally = Tally(load_vocabulary())
    assert [b.inputs["Patient"] for b in _made_ahead(batches(), tally)] == [0, 1, 2, 3]
    assert closed == [None] and tally.timings["waiting for batches"] >= 0
    with pytest.raises(ValueError, match="mapper failed on batch 2"):
        list(_made_ahead(batches(fail_at=2), tally))
    assert closed == [None, 2]
    ahead = _made_ahead(batches(fail_at=-1), tally)
    assert next(ahead).inputs == {"Patient": 0}
    ahead.close()  # the load stopped: the maker thread ends and closes its source
    assert closed == [None, 2, -1]
