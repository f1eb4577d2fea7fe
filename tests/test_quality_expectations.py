"""GX suites on the CDM and on a staging frame: the planted problems are found, Data Docs are written.

One test only: importing great_expectations is slow.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from _quality_cdm import insert_statements

from pipelines.errors import PasserelleError
from pipelines.quality.expectations import load_suites, run_expectations
from pipelines.warehouse.duckdb_file import connect, initialize


def test_suites_declare_what_they_validate(tmp_path: Path) -> None:
    assert set(load_suites()) == {"measurement_values", "no_future_dates", "source_codes", "staging_codes"}
    (tmp_path / "bad.json").write_text('{"name": "bad", "meta": {}, "expectations": []}')
    with pytest.raises(PasserelleError, match=r"bad\.json: meta\.passerelle needs exactly one"):
        load_suites(tmp_path)


@pytest.mark.slow
def test_expectations_find_the_planted_problems(tmp_path: Path) -> None:
    path = tmp_path / "omop.duckdb"
    initialize(path)
    with connect(path) as con:
        for statement in insert_statements():
            con.execute(statement)
        # HbA1c of 45 %, a numeric value without unit, a condition in 2999, an ICD10CM code with a prefix
        con.execute(
            "INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date, "
            "measurement_type_concept_id, value_as_number, unit_concept_id) VALUES "
            "(1003, 1, 3004410, DATE '2018-04-01', 32817, 45, 8554), "
            "(1004, 1, 3025315, DATE '2018-04-01', 32817, 81, NULL)"
        )
        con.execute(
            "INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, "
            "condition_start_date, condition_type_concept_id, condition_source_value, "
            "condition_source_concept_id) "
            "VALUES (104, 1, 201826, DATE '2999-01-01', 32817, 'ICD10:E11', 1567956)"
        )
        staging = pl.DataFrame(
            {
                "system": ["http://loinc.org", "http://loinc.org", "http://snomed.info/sct"],
                "code": ["4548-4", "4548 4", "44054006"],
                "date": ["2023-02-01T10:00:00+01:00", "2023-02-30", "2023-03"],
            }
        )
        report = run_expectations(con, tmp_path / "gx", frames={"codes": staging})

    failed = {
        (o.suite, o.expectation, o.column, o.condition): o.unexpected_count
        for o in report.outcomes
        if not o.success
    }
    assert failed == {
        ("measurement_values", "expect_column_values_to_not_be_null", "unit_concept_id", None): 1,
        (
            "measurement_values",
            "expect_column_values_to_be_between",
            "value_as_number",
            "measurement_concept_id == 3004410 and unit_concept_id == 8554",
        ): 1,
        ("no_future_dates", "expect_column_values_to_be_between", "days_after_today", None): 1,
        ("source_codes", "expect_column_values_to_match_regex", "code", "vocabulary_id == 'ICD10CM'"): 1,
        ("staging_codes", "expect_column_values_to_match_regex", "code", "system == 'http://loinc.org'"): 1,
        ("staging_codes", "expect_column_values_to_be_dateutil_parseable", "date", None): 1,
    }
    assert report.suites == {
        "measurement_values": False,
        "no_future_dates": False,
        "source_codes": False,
        "staging_codes": False,
    }
    assert report.docs_index.is_file()
    assert any((tmp_path / "gx" / "validations").rglob("*.html"))
