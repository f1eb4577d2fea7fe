"""DQD checks run natively on a hand-made DuckDB CDM: exact numbers, DQD statuses, results JSON, report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from _quality_cdm import insert_statements
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.errors import PasserelleError
from pipelines.quality import DqdResults, run_dqd
from pipelines.quality.results_json import results_document
from pipelines.warehouse.duckdb_file import connect, initialize


@pytest.fixture(scope="module")
def cdm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dq") / "omop.duckdb"
    initialize(path)
    with connect(path) as con:
        for statement in insert_statements():
            con.execute(statement)
    return path


@pytest.fixture(scope="module")
def results(cdm: Path) -> DqdResults:
    with connect(cdm, read_only=True) as con:
        return run_dqd(con)


def _by_id(results: DqdResults) -> dict:
    return {r.check_id: r for r in results.results}


@pytest.mark.parametrize(
    ("check_id", "violated", "denominator", "status"),
    [
        # person 3 has no observation period; threshold 0
        ("table_measurepersoncompleteness_observation_period", 1, 3, "FAIL"),
        # person 2's periods are back to back
        ("table_measureobservationperiodoverlap_observation_period", 1, 2, "FAIL"),
        # 3 persons, none has a drug_exposure: 100% > 95%
        ("table_measurepersoncompleteness_drug_exposure", 3, 3, "FAIL"),
        ("field_isrequired_person_gender_concept_id", 0, 3, "PASS"),
        ("field_isprimarykey_condition_occurrence_condition_occurrence_id", 0, 4, "PASS"),
        ("field_isforeignkey_measurement_visit_occurrence_id", 1, 3, "FAIL"),
        ("field_fkdomain_condition_occurrence_condition_concept_id", 0, 4, "PASS"),
        # the ICD10CM concept 1567956 is not standard
        ("field_isstandardvalidconcept_condition_occurrence_condition_concept_id", 1, 4, "FAIL"),
        ("field_standardconceptrecordcompleteness_condition_occurrence_condition_concept_id", 1, 4, "FAIL"),
        # distinct source values {E11, NULL, XYZ}; XYZ maps to 0: 33% > 10%
        ("field_sourcevaluecompleteness_condition_occurrence_condition_source_value", 1, 3, "FAIL"),
        # 2019-05-20 is 15 days after visit 11 ended
        ("field_withinvisitdates_condition_occurrence_condition_start_date", 1, 3, "FAIL"),
        # 1960-01-01 is before 1970 (year_of_birth, month and day default to 1)
        ("field_plausibleafterbirth_condition_occurrence_condition_start_date", 1, 4, "FAIL"),
        ("field_plausiblestartbeforeend_observation_period_observation_period_start_date", 0, 3, "PASS"),
        ("field_plausiblevaluehigh_measurement_measurement_date", 0, 3, "PASS"),
        # 26662 Testicular hypofunction recorded for a woman
        ("concept_plausiblegender_condition_occurrence_condition_concept_id_26662", 1, 1, "FAIL"),
        # HbA1c in kilograms
        ("concept_plausibleunitconceptids_measurement_measurement_concept_id_3004410", 1, 2, "FAIL"),
    ],
)
def test_check_numbers_and_status(
    results: DqdResults, check_id: str, violated: int, denominator: int, status: str
):
    r = _by_id(results)[check_id]
    assert (r.num_violated_rows, r.num_denominator_rows, r.status) == (violated, denominator, status)
    assert r.pct_violated_rows == pytest.approx(violated / denominator)


def test_not_applicable_follows_dqd_rules(results: DqdResults) -> None:
    by_id = _by_id(results)
    reasons = {
        "field_isrequired_death_person_id": "Table DEATH is empty.",
        "field_isforeignkey_visit_occurrence_provider_id": (
            "Field VISIT_OCCURRENCE.PROVIDER_ID is not populated."
        ),
        "concept_plausiblegender_condition_occurrence_condition_concept_id_26935": (
            "CONDITION_CONCEPT_ID=26935 is missing from the CONDITION_OCCURRENCE table."
        ),
    }
    for check_id, reason in reasons.items():
        r = by_id[check_id]
        assert (r.not_applicable, r.failed, r.passed, r.not_applicable_reason) == (1, 0, 0, reason)
    # an empty table is what measurePersonCompleteness measures: failed, not "not applicable"
    death = by_id["table_measurepersoncompleteness_death"]
    assert (death.num_violated_rows, death.not_applicable) == (3, 0)
    # measureValueCompleteness is never NA on a populated table, even for an all-NULL field
    assert by_id["field_measurevaluecompleteness_visit_occurrence_provider_id"].status == "PASS"


def test_fatal_failures_and_per_table_results(results: DqdResults) -> None:
    fatal = {r.check_id for r in results.fatal_failures()}
    assert fatal == {
        "table_measureobservationperiodoverlap_observation_period",
        "field_isforeignkey_measurement_visit_occurrence_id",
        # cdm_source.cdm_version_concept_id 756265 is not in our small concept table
        "field_isforeignkey_cdm_source_cdm_version_concept_id",
    }
    assert len(results.by_table()["measurement"]) > 50
    metadata = results.table_metadata("MEASUREMENT")
    assert metadata["field_isforeignkey_measurement_visit_occurrence_id"] == (
        "1 of 3 rows (33.33%), threshold 0%"
    )
    assert metadata["fatal"] == 1 and metadata["FAIL"] == 2  # the dangling visit, the kilogram HbA1c
    assert len(results.results) == 2374


def test_missing_table_and_field_fail_their_existence_checks(tmp_path: Path) -> None:
    path = tmp_path / "broken.duckdb"
    initialize(path)
    with connect(path) as con:
        for statement in insert_statements():
            con.execute(statement)
        con.execute("DROP TABLE main.specimen")
        con.execute("ALTER TABLE main.note DROP COLUMN note_title")
        results = run_dqd(con, check_names=["cdmTable", "cdmField", "measureValueCompleteness", "isRequired"])
    by_id = _by_id(results)
    assert by_id["table_cdmtable_specimen"].status == "FAIL"
    assert by_id["field_cdmfield_note_note_title"].status == "FAIL"
    assert (
        by_id["field_isrequired_specimen_person_id"].not_applicable_reason == "Table SPECIMEN does not exist."
    )
    assert by_id["field_cdmfield_person_person_id"].status == "PASS"


def test_a_broken_check_is_an_error_and_the_rest_of_its_scan_still_counts(tmp_path: Path) -> None:
    path = tmp_path / "odd.duckdb"
    initialize(path)
    with connect(path) as con:
        for statement in insert_statements():
            con.execute(statement)
        con.execute("DROP TABLE main.death")  # plausibleBeforeDeath looks up death for every clinical table
        names = ["cdmTable", "cdmField", "measureValueCompleteness", "plausibleBeforeDeath", "isRequired"]
        results = run_dqd(con, check_names=names)
    by_id = _by_id(results)
    broken = by_id["field_plausiblebeforedeath_condition_occurrence_condition_start_date"]
    assert broken.status == "ERROR" and "death" in broken.error.lower()
    assert by_id["field_isrequired_condition_occurrence_person_id"].num_denominator_rows == 4


def test_results_json_has_dqd_shape(results: DqdResults, tmp_path: Path) -> None:
    document = results_document(results)
    assert list(document) == [
        "startTimestamp", "endTimestamp", "executionTime", "executionTimeSeconds",
        "CheckResults", "Metadata", "Overview",
    ]  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", document["startTimestamp"][0])
    assert document["Metadata"][0]["cdmSourceAbbreviation"] == "QTEST"
    assert document["Metadata"][0]["dqdVersion"] == "2.8.4"
    overview = document["Overview"]
    assert len(overview) == 16 and all(len(v) == 1 for v in overview.values())
    assert overview["countTotal"] == [2374]
    assert overview["countPassed"][0] + overview["countOverallFailed"][0] == 2374
    rows = {r["checkId"]: r for r in document["CheckResults"]}
    unit = rows["concept_plausibleunitconceptids_measurement_measurement_concept_id_3004410"]
    assert unit["pctViolatedRows"] == 0.5 and unit["thresholdValue"] == 5 and unit["conceptId"] == "3004410"
    assert "/*violatedRowsBegin*/" in unit["queryText"]
    table_check = rows["table_cdmtable_person"]
    assert "cdmFieldName" not in table_check and "thresholdValue" not in table_check  # NA cells are left out
    assert "subcategory" not in rows["field_measurevaluecompleteness_person_person_id"]


def test_dq_command_writes_json_and_self_contained_report(cdm: Path, tmp_path: Path) -> None:
    out = tmp_path / "dq"
    checks = ["cdmTable", "cdmField", "measureValueCompleteness", "plausibleGender"]
    arguments = ["dq", "--warehouse", str(cdm), "--out", str(out), *(f"--check={c}" for c in checks)]
    outcome = CliRunner().invoke(main, arguments)
    assert outcome.exit_code == 0, outcome.output
    assert "1 failed, 0 errors, 0 fatal" in outcome.output  # plausibleGender of concept 26662
    [json_file] = out.glob("qtest-*.json")
    document = json.loads(json_file.read_text())
    assert {r["checkName"] for r in document["CheckResults"]} == set(checks)
    html = (out / "dq_report.html").read_text()
    assert not re.search(r"(src|href)=['\"]?https?:", html)  # no external assets
    failed_at = html.index("Failed checks")
    assert failed_at < html.index("Passed and not applicable")
    assert "concept_plausiblegender_condition_occurrence_condition_concept_id_26662" in html[failed_at:]


def test_dq_needs_a_cdm_source_row(tmp_path: Path) -> None:
    path = tmp_path / "no_source.duckdb"
    initialize(path)
    with connect(path) as con, pytest.raises(PasserelleError, match="cdm_source is empty"):
        run_dqd(con)
    outcome = CliRunner().invoke(main, ["dq", "--warehouse", str(path), "--out", str(tmp_path / "o")])
    assert outcome.exit_code == 2 and "cdm_source is empty" in outcome.output


VOCABULARY_TABLES = [
    "concept", "vocabulary", "domain", "concept_class", "concept_relationship", "relationship",
    "concept_synonym", "concept_ancestor", "source_to_concept_map", "drug_strength",
]  # fmt: skip


def test_vocabulary_in_its_own_schema(tmp_path: Path) -> None:
    path = tmp_path / "split.duckdb"
    initialize(path)
    with connect(path) as con:
        for statement in insert_statements():
            con.execute(statement)
        con.execute("CREATE SCHEMA vocab")
        for table in VOCABULARY_TABLES:
            con.execute(f"CREATE TABLE vocab.{table} AS SELECT * FROM main.{table}")
            con.execute(f"DROP TABLE main.{table}")
        names = ["cdmTable", "cdmField", "measureValueCompleteness", "isStandardValidConcept", "isForeignKey"]
        results = run_dqd(con, vocab_schema="vocab", check_names=names)
    by_id = _by_id(results)
    standard = by_id["field_isstandardvalidconcept_condition_occurrence_condition_concept_id"]
    assert (standard.num_violated_rows, standard.num_denominator_rows) == (1, 4)
    assert by_id["field_isforeignkey_condition_occurrence_condition_concept_id"].status == "PASS"
    assert not [r for r in results.results if r.is_error]


def test_dq_needs_exactly_one_database(cdm: Path, tmp_path: Path) -> None:
    neither = CliRunner().invoke(main, ["dq", "--out", str(tmp_path)])
    both = CliRunner().invoke(
        main, ["dq", "--warehouse", str(cdm), "--postgres", "postgresql://x", "--out", "o"]
    )
    for outcome in (neither, both):
        assert outcome.exit_code == 2 and "either --warehouse FILE or --postgres URL" in outcome.output


# Rows where the batched scan forms could part from the checks' own queries: a birth_datetime, a record
# dated in its person's birth year before mid-year (plausibleTemporalAfter counts it, plausibleAfterBirth
# does not), a record more than 60 days after its person's death; a table without its primary key, and
# two of its rows sharing an id (isPrimaryKey looks for duplicates only where no key forbids them).
EDGE_ROWS = [
    "CREATE TABLE main.unkeyed AS SELECT * FROM main.visit_occurrence",
    "DROP TABLE main.visit_occurrence",
    "ALTER TABLE main.unkeyed RENAME TO visit_occurrence",
    "INSERT INTO main.visit_occurrence SELECT * FROM main.visit_occurrence WHERE visit_occurrence_id = 10",
    "INSERT INTO main.person (person_id, gender_concept_id, year_of_birth, birth_datetime, race_concept_id,"
    " ethnicity_concept_id) VALUES (4, 8507, 1950, TIMESTAMP '1950-07-15 10:00:00', 8527, 38003564)",
    "INSERT INTO main.person (person_id, gender_concept_id, year_of_birth, race_concept_id,"
    " ethnicity_concept_id) VALUES (5, 8532, 2000, 8527, 38003564)",
    "INSERT INTO main.measurement (measurement_id, person_id, measurement_concept_id, measurement_date,"
    " measurement_type_concept_id) VALUES (1003, 5, 3025315, DATE '2000-03-01', 32817)",
    "INSERT INTO main.measurement (measurement_id, person_id, measurement_concept_id, measurement_date,"
    " measurement_type_concept_id) VALUES (1004, 4, 3025315, DATE '1950-07-01', 32817)",
    "INSERT INTO main.death (person_id, death_date, death_type_concept_id)"
    " VALUES (2, DATE '2019-01-01', 32817)",
]


def test_every_batched_count_is_what_the_checks_own_query_counts(tmp_path: Path) -> None:
    """What the batches count (shared scans, CASE counts, faster scan forms, declared primary keys,
    concepts absent from their scan) is what each check's queryText counts."""
    path = tmp_path / "edges.duckdb"
    initialize(path)
    with connect(path) as con:
        for statement in insert_statements() + EDGE_ROWS:
            con.execute(statement)
        results = run_dqd(con)
        ran = [r for r in results.results if r.check.type.sql.get("exists") is None and not r.is_error]
        assert len(ran) > 1900 and sum(r.num_violated_rows > 0 for r in ran) > 20
        by_id = _by_id(results)
        temporal = by_id["field_plausibletemporalafter_measurement_measurement_date"]
        assert (temporal.num_violated_rows, temporal.num_denominator_rows) == (2, 5)  # 1003 and 1004
        after_birth = by_id["field_plausibleafterbirth_measurement_measurement_date"]
        assert (after_birth.num_violated_rows, after_birth.num_denominator_rows) == (1, 5)  # 1004
        duplicated = by_id["field_isprimarykey_visit_occurrence_visit_occurrence_id"]
        assert (duplicated.num_violated_rows, duplicated.num_denominator_rows) == (2, 3)
        keyed = by_id["field_isprimarykey_measurement_measurement_id"]
        assert (keyed.num_violated_rows, keyed.num_denominator_rows) == (0, 5)
        for r in ran:
            violated, _, denominator = con.execute(r.query_text).fetchone()
            assert (r.num_violated_rows, r.num_denominator_rows) == (violated, denominator), r.check_id
