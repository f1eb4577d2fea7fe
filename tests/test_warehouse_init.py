"""`passerelle init`: an empty CDM v5.4 warehouse that OHDSI's DuckDB 1.x clients can open."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cdm import cdm_schema
from pipelines.warehouse.duckdb_file import SIDE_SCHEMA, connect, initialize


def test_init_creates_every_cdm_table_with_exact_columns(warehouse_path):
    assert initialize(warehouse_path) is True
    with connect(warehouse_path, read_only=True) as con:
        for table in cdm_schema().tables:
            columns = [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main'"
                    " AND table_name = ? ORDER BY ordinal_position",
                    [table.name],
                ).fetchall()
            ]
            assert columns == table.column_names, table.name
        side = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ?", [SIDE_SCHEMA]
            ).fetchall()
        }
    assert side == {"id_map", "lineage", "quarantine", "run_log"}


def test_init_twice_keeps_the_data(warehouse_path):
    initialize(warehouse_path)
    with connect(warehouse_path) as con:
        con.execute(
            "INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id,"
            " ethnicity_concept_id) VALUES (7, 8532, 1980, 0, 0)"
        )
    assert initialize(warehouse_path) is False
    with connect(warehouse_path, read_only=True) as con:
        assert con.execute("SELECT person_id, year_of_birth FROM person").fetchall() == [(7, 1980)]


def _duckdb1_python(tmp_path: Path) -> Path:
    """A virtual environment with a DuckDB 1.x client, the version OHDSI's R tooling embeds today."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed; it is in the dev dependencies (make test installs it)")
    venv = tmp_path / "duckdb1"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    made = subprocess.run([uv, "venv", "-q", str(venv)], capture_output=True, text=True)
    installed = (
        made.returncode == 0
        and subprocess.run(
            [uv, "pip", "install", "-q", "duckdb==1.1.3"], env=env, capture_output=True, text=True
        ).returncode
        == 0
    )
    if not installed:
        pytest.skip("could not install duckdb 1.1.3 from the package registry")
    return venv / "bin" / "python"


@pytest.mark.slow
def test_duckdb_1x_clients_can_read_the_warehouse(warehouse_path, tmp_path):
    initialize(warehouse_path)
    with connect(warehouse_path) as con:
        con.execute(
            "INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date,"
            " measurement_type_concept_id, value_as_number)"
            " VALUES (1, 1, 3004249, '2024-05-01', 32817, 121.5)"
        )
    python = _duckdb1_python(tmp_path)
    script = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True);"
        "print(duckdb.__version__, con.execute('SELECT value_as_number FROM measurement').fetchone()[0])"
    )
    result = subprocess.run([python, "-c", script, str(warehouse_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1.1.3", "121.5"]
