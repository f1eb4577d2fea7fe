"""`passerelle derive --warehouse PATH` on a CDM made by another ETL (plain DuckDB SQL, no
Passerelle side tables), through click and as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from pipelines.cdm import cdm_schema, render_ddl
from pipelines.cli import main

EXPECTED_OUTPUT = [
    "death                           1",
    "observation_period              2",
    "condition_era                   1",
    "drug_era                        1",
    "cdm_source                      1",
]


@pytest.fixture
def foreign_cdm(tmp_path: Path) -> Path:
    """A CDM as another site's pipeline would leave it: the v5.4 DDL and rows inserted in SQL."""
    path = tmp_path / "site_cdm.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(render_ddl(cdm_schema(), "duckdb", parts=("tables",)))
        # this site does not populate these event tables and never created them
        con.execute("DROP TABLE visit_detail; DROP TABLE note; DROP TABLE specimen")
        con.execute("""
            INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id,
                                ethnicity_concept_id)
            VALUES (101, 8507, 1948, 0, 0);
            INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date,
                                          visit_end_date, visit_type_concept_id)
            VALUES (1, 101, 9201, DATE '2018-03-01', DATE '2018-03-05', 32817),
                   (2, 101, 9202, DATE '2021-01-10', DATE '2021-01-10', 32817);
            INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id,
                                              condition_start_date, condition_type_concept_id)
            VALUES (1, 101, 201826, DATE '2018-03-02', 32817), (2, 101, 201826, DATE '2018-03-20', 32817);
            INSERT INTO drug_exposure (drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date,
                                       drug_exposure_end_date, drug_type_concept_id, days_supply)
            VALUES (1, 101, 19080128, DATE '2018-03-05', DATE '2018-04-03', 32838, 30);
            INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id,
                                 standard_concept, concept_code, valid_start_date, valid_end_date)
            VALUES (1308216, 'lisinopril', 'Drug', 'RxNorm', 'Ingredient', 'S', '29046',
                    DATE '1970-01-01', DATE '2099-12-31');
            INSERT INTO concept_ancestor VALUES (1308216, 19080128, 0, 1);
            INSERT INTO vocabulary VALUES ('None', 'OMOP Standardized Vocabularies', NULL,
                                           'v5.0 30-AUG-24', 44819096);
            INSERT INTO death (person_id, death_date) VALUES (101, DATE '2021-02-01');
        """)
    return path


def test_derive_rebuilds_a_foreign_cdm_and_prints_rows_per_table(foreign_cdm):
    result = CliRunner().invoke(
        main, ["derive", "--warehouse", str(foreign_cdm), "--extraction-date", "2025-01-01"]
    )

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == EXPECTED_OUTPUT
    with duckdb.connect(str(foreign_cdm), read_only=True) as con:
        assert con.execute(
            "SELECT observation_period_start_date::VARCHAR, observation_period_end_date::VARCHAR"
            " FROM observation_period ORDER BY 1"
        ).fetchall() == [("2018-03-01", "2018-06-02"), ("2021-01-10", "2021-03-11")]
        assert con.execute(
            "SELECT drug_concept_id, drug_era_start_date::VARCHAR, drug_era_end_date::VARCHAR FROM drug_era"
        ).fetchall() == [(1308216, "2018-03-05", "2018-04-03")]
        assert con.execute(
            "SELECT vocabulary_version, source_release_date::VARCHAR FROM cdm_source"
        ).fetchall() == [("v5.0 30-AUG-24", "2025-01-01")]


def test_derive_runs_as_a_process(foreign_cdm):
    command = Path(sys.executable).with_name("passerelle")
    done = subprocess.run(
        [str(command), "derive", "--warehouse", str(foreign_cdm), "--extraction-date", "2025-01-01"],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == EXPECTED_OUTPUT


def test_a_missing_file_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["derive", "--warehouse", str(tmp_path / "nowhere.duckdb")])

    assert result.exit_code == 2
    assert "nowhere.duckdb: no such DuckDB file" in result.output
    assert not (tmp_path / "nowhere.duckdb").exists()


def test_a_database_that_is_no_cdm_names_the_file_and_the_missing_tables(tmp_path):
    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE patients (id INTEGER)")

    result = CliRunner().invoke(main, ["derive", "--warehouse", str(path)])

    assert result.exit_code == 2
    assert f"{path}: the database has no CDM table death, observation_period" in result.output


def test_a_bad_extraction_date_is_refused(foreign_cdm):
    result = CliRunner().invoke(
        main, ["derive", "--warehouse", str(foreign_cdm), "--extraction-date", "01/02/2025"]
    )

    assert result.exit_code == 2
    assert "'01/02/2025' does not match the format '%Y-%m-%d'" in result.output
