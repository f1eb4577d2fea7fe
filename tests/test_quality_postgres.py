"""The same DQD checks, transpiled by sqlglot, give the same numbers on a real PostgreSQL as on DuckDB."""

from __future__ import annotations

from pathlib import Path

import pytest
from _quality_cdm import insert_statements

from pipelines.cdm import cdm_schema
from pipelines.cdm.ddl import statements
from pipelines.quality import run_dqd
from pipelines.warehouse.duckdb_file import connect, initialize

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

# every check type that runs SQL (cdmTable/cdmField come from the catalogue of each database)
SUBSET = [
    "cdmTable", "cdmField", "measureValueCompleteness", "measurePersonCompleteness",
    "measureConditionEraCompleteness", "measureObservationPeriodOverlap", "isRequired", "cdmDatatype",
    "isPrimaryKey", "isForeignKey", "fkDomain", "fkClass", "isStandardValidConcept",
    "standardConceptRecordCompleteness", "sourceConceptRecordCompleteness", "sourceValueCompleteness",
    "plausibleValueLow", "plausibleValueHigh", "plausibleTemporalAfter", "plausibleDuringLife",
    "withinVisitDates", "plausibleAfterBirth", "plausibleBeforeDeath", "plausibleStartBeforeEnd",
    "plausibleGender", "plausibleGenderUseDescendants", "plausibleUnitConceptIds",
]  # fmt: skip
TABLES = {"person", "observation_period", "visit_occurrence", "condition_occurrence", "measurement",
          "condition_era", "death", "cdm_source", "concept", "concept_ancestor"}  # fmt: skip


def _numbers(results) -> dict[str, tuple]:
    return {r.check_id: (r.num_violated_rows, r.num_denominator_rows, r.status) for r in results.results}


def test_postgres_gives_the_duckdb_numbers(postgres_url: str, tmp_path: Path) -> None:
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(postgres_url) as con, con.cursor() as cursor:
        cursor.execute("DROP SCHEMA IF EXISTS dq CASCADE")
        cursor.execute("CREATE SCHEMA dq")
        for sql in statements(cdm_schema(), "postgresql", db_schema="dq", parts=("tables",)):
            cursor.execute(sql)
        for sql in insert_statements("dq"):
            cursor.execute(sql)
        con.commit()
    others = [t for t in cdm_schema().table_names if t not in TABLES]
    on_postgres = run_dqd(postgres_url, cdm_schema="dq", check_names=SUBSET, excluded_tables=others)

    path = tmp_path / "omop.duckdb"
    initialize(path)
    with connect(path) as duck:
        for sql in insert_statements():
            duck.execute(sql)
        on_duckdb = run_dqd(duck, check_names=SUBSET, excluded_tables=others)

    assert not [r.error for r in on_postgres.results if r.error]
    ours, theirs = _numbers(on_postgres), _numbers(on_duckdb)
    assert len(ours) > 500
    assert ours == theirs
    by_id = {r.check_id: r for r in on_postgres.results}
    unit = by_id["concept_plausibleunitconceptids_measurement_measurement_concept_id_3004410"]
    assert (unit.num_violated_rows, unit.num_denominator_rows, unit.status) == (1, 2, "FAIL")
    assert "/*violatedRowsBegin*/" in unit.query_text


def test_dq_command_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    import adbc_driver_postgresql.dbapi as pg
    from click.testing import CliRunner

    from pipelines.cli import main

    with pg.connect(postgres_url) as con, con.cursor() as cursor:
        cursor.execute("DROP SCHEMA IF EXISTS dq_cli CASCADE")
        cursor.execute("CREATE SCHEMA dq_cli")
        for sql in statements(cdm_schema(), "postgresql", db_schema="dq_cli", parts=("tables",)):
            cursor.execute(sql)
        for sql in insert_statements("dq_cli"):
            cursor.execute(sql)
        con.commit()
    arguments = ["dq", "--postgres", postgres_url, "--schema", "dq_cli", "--out", str(tmp_path),
                 "--check", "cdmTable", "--check", "cdmField", "--check", "measureValueCompleteness",
                 "--check", "plausibleUnitConceptIds"]  # fmt: skip
    outcome = CliRunner().invoke(main, arguments)
    assert outcome.exit_code == 0, outcome.output
    assert "1 failed, 0 errors" in outcome.output  # the HbA1c in kilograms
    assert list(tmp_path.glob("qtest-*.json"))
