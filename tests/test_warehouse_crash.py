"""The warehouse file between processes: a load killed midway (SIGKILL) leaves the previous state, a
second writer is refused, and the DuckDB 1.x clients of OHDSI's R tools read what the loads wrote."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipelines.errors import WarehouseError
from pipelines.warehouse import load_batch, open_targets
from tests.test_warehouse_conformance import first_batch

REPO = Path(__file__).resolve().parents[1]

# The child loads 2,000 persons and 300,000 heart-rate measurements in one batch, logging each table
# as it goes; the parent kills it once the persons are in (inside the transaction).
_CHILD = """
import datetime as dt, logging, sys
from pathlib import Path
import polars as pl
from pipelines.mapping.batch import MappedBatch
from pipelines.errors import WarehouseError
from pipelines.warehouse import load_batch, open_targets

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
n_persons, n_measurements = 2_000, 300_000
lineage = lambda n, kind: {
    "_source_format": ["fhir"] * n, "_source_file": ["big.ndjson"] * n,
    "_position": list(range(n)), "_record_type": [kind] * n,
}
persons = pl.DataFrame({
    "_key": [f"fhir|Patient/big-{i}" for i in range(n_persons)],
    "gender_concept_id": [8507, 8532] * (n_persons // 2), "year_of_birth": [1960] * n_persons,
    "race_concept_id": [0] * n_persons, "ethnicity_concept_id": [0] * n_persons,
    **lineage(n_persons, "Patient"),
}).with_columns(pl.col("_key").alias("_record_key"))
measurements = pl.DataFrame({
    "_key": [f"fhir|Observation/big-{i}" for i in range(n_measurements)],
    "_ref__person_id": [f"fhir|Patient/big-{i % n_persons}" for i in range(n_measurements)],
    "measurement_concept_id": [3027018] * n_measurements,
    "measurement_date": [dt.date(2024, 1, 1)] * n_measurements,
    "measurement_type_concept_id": [32817] * n_measurements,
    "value_as_number": [float(60 + i % 40) for i in range(n_measurements)],
    **lineage(n_measurements, "Observation"),
}).with_columns(pl.col("_key").alias("_record_key"))
batch = MappedBatch(tables={"person": persons, "measurement": measurements})
load_batch(batch, open_targets(Path(sys.argv[1]), None, None), run_id=2)
print("finished", flush=True)
"""

# A run of four batches (the persons last, so the measurements wait for them in a held-back table);
# the parent kills it once the second batch is in, inside the run's one transaction.
_CHILD_RUN = (
    _CHILD.replace("load_batch(batch,", "load_batches(batches(),")
    .replace("import load_batch,", "import load_batches,")
    .replace(
        "batch = MappedBatch(",
        """def batches():
    for part in range(3):
        yield MappedBatch(tables={"measurement": measurements.slice(part * 100_000, 100_000)})
    yield MappedBatch(tables={"person": persons})
batch = MappedBatch(""",
    )
)

_SIDE_TABLES = ("id_map", "lineage", "quarantine", "run_log")


def _snapshot(path: Path) -> dict[str, pl.DataFrame]:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = {t: con.sql(f"SELECT * FROM main.{t} ORDER BY ALL").pl() for t in ("person", "measurement")}
        for t in _SIDE_TABLES:
            tables[t] = con.sql(f"SELECT * FROM passerelle.{t} ORDER BY ALL").pl()
    return tables


@pytest.mark.slow
def test_a_load_killed_midway_leaves_the_previous_state(warehouse_path: Path) -> None:
    load_batch(first_batch(), open_targets(warehouse_path, None, None), run_id=1)
    before = _snapshot(warehouse_path)

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(warehouse_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in child.stderr:
        seen.append(line)
        if line.startswith("person:"):
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    rest = child.stdout.read() + child.stderr.read()
    assert child.returncode == -signal.SIGKILL, "".join(seen) + rest
    assert seen[-1].startswith("person: 2000 rows inserted")
    assert "committed" not in rest and "finished" not in rest

    after = _snapshot(warehouse_path)
    for name, frame in before.items():
        assert after[name].equals(frame), name
    assert after["person"].height == 2 and after["measurement"].height == 3

    # The warehouse is still writable and the next load carries on from the previous ids.
    report = load_batch(first_batch(), open_targets(warehouse_path, None, None), run_id=3)
    assert report.new_ids == {"person": 0, "visit_occurrence": 0, "measurement": 0}


@pytest.mark.slow
def test_a_run_of_several_batches_killed_midway_leaves_the_state_before_the_run(warehouse_path: Path) -> None:
    load_batch(first_batch(), open_targets(warehouse_path, None, None), run_id=1)
    before = _snapshot(warehouse_path)

    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_RUN, str(warehouse_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    for line in child.stderr:
        seen.append(line)
        if line.startswith("batch 2 loaded"):
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    rest = child.stdout.read() + child.stderr.read()
    assert child.returncode == -signal.SIGKILL, "".join(seen) + rest
    assert "measurement: 0 rows inserted, 0 quarantined, 100000 held back\n" in seen
    assert "committed" not in rest and "finished" not in rest

    after = _snapshot(warehouse_path)
    for name, frame in before.items():
        assert after[name].equals(frame), name

    # the batches went in through Arrow: the killed run left nothing beside the warehouse file
    assert {p.name for p in warehouse_path.parent.iterdir()} <= {
        warehouse_path.name,
        warehouse_path.name + ".wal",
    }

    report = load_batch(first_batch(), open_targets(warehouse_path, None, None), run_id=3)
    assert report.new_ids == {"person": 0, "visit_occurrence": 0, "measurement": 0}


def test_a_second_writing_process_is_refused_with_a_clear_message(warehouse_path: Path) -> None:
    load_batch(first_batch(), open_targets(warehouse_path, None, None), run_id=1)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
            "print('holding', flush=True); sys.stdin.read()",
            str(warehouse_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(WarehouseError, match=f"{warehouse_path}: in use by another process"):
            load_batch(first_batch(), open_targets(warehouse_path, None, None), run_id=2)
    finally:
        holder.stdin.close()
        holder.wait()
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        assert con.execute("SELECT run_id FROM passerelle.run_log").fetchall() == [(1,)]


@pytest.mark.slow
def test_duckdb_1x_clients_read_the_warehouse_after_incremental_loads(
    warehouse_path: Path, tmp_path: Path
) -> None:
    """Deletes, replacements and the side tables keep the file in the storage format R's DuckDB reads."""
    from tests.test_warehouse_init import _duckdb1_python

    load_batch(first_batch(), open_targets(warehouse_path, None, None), run_id=1)
    load_batch(first_batch(), open_targets(warehouse_path, None, None), run_id=2)
    python = _duckdb1_python(tmp_path)
    script = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True);"
        "q = lambda sql: con.execute(sql).fetchone();"
        "print(duckdb.__version__, q('SELECT count(*), sum(value_as_number) FROM measurement'),"
        " q('SELECT count(*) FROM passerelle.lineage')[0])"
    )
    result = subprocess.run([python, "-c", script, str(warehouse_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.1.3 (3, 264.0) 7"
