"""Our DQD catalogue (quality/dqd) yields the same checks, thresholds and parameters as DQD's own files."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
import pytest

from pipelines.quality.catalogue import load_catalogue

# DQD executeDqChecks() defaults
DQD_EXCLUDED = {"CONCEPT", "VOCABULARY", "CONCEPT_ANCESTOR", "CONCEPT_RELATIONSHIP", "CONCEPT_CLASS",
                "CONCEPT_SYNONYM", "RELATIONSHIP", "DOMAIN"}  # fmt: skip

# DQD column -> our parameter, per check, for the parameters that change what a check computes
PARAMETERS = {
    "isForeignKey": {"fkTableName": "fk_table", "fkFieldName": "fk_field"},
    "fkDomain": {"fkDomain": "domain"},
    "fkClass": {"fkClass": "concept_class"},
    "sourceValueCompleteness": {"standardConceptFieldName": "standard_concept_field"},
    "plausibleValueLow": {"plausibleValueLow": "value"},
    "plausibleValueHigh": {"plausibleValueHigh": "value"},
    "plausibleTemporalAfter": {
        "plausibleTemporalAfterTableName": "after_table",
        "plausibleTemporalAfterFieldName": "after_field",
    },
    "plausibleStartBeforeEnd": {"plausibleStartBeforeEndFieldName": "end_field"},
    "plausibleGender": {"plausibleGender": "gender"},
    "plausibleGenderUseDescendants": {"plausibleGenderUseDescendants": "gender"},
    "plausibleUnitConceptIds": {"plausibleUnitConceptIds": "units"},
}


def _dqd_value(text: str) -> str:
    """DQD's OHDSI-SQL bounds in our notation ('19500101' -> 1950-01-01, GETDATE() forms -> tokens)."""
    text = text.strip()
    if match := re.fullmatch(r"'(\d{4})(\d{2})(\d{2})'", text):
        return "-".join(match.groups())
    return {"DATEADD(dd,1,GETDATE())": "today+1", "YEAR(GETDATE())+1": "current_year+1"}.get(text, text)


def _matches(row: dict, evaluation_filter: str) -> bool:
    """DQD's evaluationFilter (``a=='Yes' & b!=''``) on one control-file row; empty cells never match."""
    for clause in evaluation_filter.split("&"):
        column, operator, value = re.fullmatch(r"\s*(\w+)\s*(==|!=)\s*'([^']*)'\s*", clause).groups()
        cell = row.get(column)
        if cell is None:
            return False
        if (cell == value) != (operator == "=="):
            return False
    return True


def _dqd_checks(folder: Path) -> dict[tuple, tuple]:
    """Every check DQD 2.8.4 runs by default on CDM v5.4: key -> (threshold, parameters)."""
    read = lambda name: pl.read_csv(folder / f"OMOP_CDMv5.4_{name}.csv", infer_schema=False)  # noqa: E731
    controls = {"TABLE": read("Table_Level"), "FIELD": read("Field_Level"), "CONCEPT": read("Concept_Level")}
    expected = {}
    for description in read("Check_Descriptions").iter_rows(named=True):
        name, level = description["checkName"], description["checkLevel"]
        for row in controls[level].iter_rows(named=True):
            if row["cdmTableName"].upper() in DQD_EXCLUDED or (row.get("cdmFieldName") or "") == "offset":
                continue
            if not _matches(row, description["evaluationFilter"]):
                continue
            key = (
                name,
                row["cdmTableName"].upper(),
                (row.get("cdmFieldName") or "").upper() or None,
                row.get("conceptId"),
                row.get("unitConceptId"),
            )
            threshold = row.get(f"{name}Threshold")
            parameters = {
                ours: _dqd_value(row[theirs]).lower() if theirs.endswith("Name") else _dqd_value(row[theirs])
                for theirs, ours in PARAMETERS.get(name, {}).items()
                if row.get(theirs)
            }
            expected[key] = (float(threshold) if threshold else None, parameters)
    return expected


def _our_checks() -> dict[tuple, tuple]:
    ours = {}
    for check in load_catalogue("5.4").select():
        key = (
            check.name,
            check.table.upper(),
            check.field.upper() if check.field else None,
            check.concept_id,
            check.unit_concept_id,
        )
        assert key not in ours, f"duplicate check {key}"
        wanted = PARAMETERS.get(check.name, {}).values()
        ours[key] = (check.threshold, {k: v for k, v in check.parameters.items() if k in wanted and v})
    return ours


def test_catalogue_yields_the_same_checks_and_thresholds_as_dqd(shared: Path) -> None:
    expected = _dqd_checks(shared / "reference" / "ohdsi" / "dqd")
    ours = _our_checks()
    assert set(ours) - set(expected) == set()
    assert set(expected) - set(ours) == set()
    assert len(ours) == 2374  # DQD 2.8.4 defaults on v5.4 (the issue says "about 2,000")
    differing = {key: (ours[key], expected[key]) for key in expected if ours[key] != expected[key]}
    assert differing == {}


def test_catalogue_covers_the_27_check_types_with_deprecations_marked() -> None:
    catalogue = load_catalogue("5.4")
    assert len(catalogue.types) == 27
    assert {n for n, t in catalogue.types.items() if t.deprecated} == {
        "plausibleTemporalAfter",
        "plausibleDuringLife",
        "plausibleGender",
    }
    assert {t.level for t in catalogue.types.values()} == {"TABLE", "FIELD", "CONCEPT"}
    counts = pl.DataFrame({"name": [c.name for c in catalogue.select()]})["name"].value_counts()
    by_name = dict(counts.iter_rows())
    assert by_name["cdmTable"] == 31  # 39 tables less the 8 vocabulary tables DQD skips by default
    assert by_name["isRequired"] > 100


def test_check_id_follows_dqd() -> None:
    checks = {c.check_id: c for c in load_catalogue("5.4").select()}
    assert "field_isrequired_person_person_id" in checks
    assert "table_measurepersoncompleteness_observation_period" in checks
    assert "concept_plausibleunitconceptids_measurement_measurement_concept_id_3004410" in checks


@pytest.mark.parametrize("table", ["concept", "vocabulary"])
def test_vocabulary_tables_are_excluded_by_default_but_can_be_included(table: str) -> None:
    catalogue = load_catalogue("5.4")
    assert not [c for c in catalogue.select() if c.table == table]
    assert [c for c in catalogue.select(excluded_tables=[]) if c.table == table]


def test_a_broken_catalogue_row_is_named(tmp_path: Path) -> None:
    import shutil

    from pipelines.errors import PasserelleError
    from pipelines.project_files import data_dir

    folder = tmp_path / "dqd"
    shutil.copytree(data_dir("quality") / "dqd", folder)
    fields = folder / "cdm_v5.4" / "field_checks.csv"
    lines = fields.read_text().splitlines()
    lines[5] = "plausibleValueHigh,person,year_of_birth,1,value=next year;datatype=integer"
    fields.write_text("\n".join(lines) + "\n")
    where = r"field_checks\.csv, line 6 \(plausibleValueHigh person\): value 'next year'"
    with pytest.raises(PasserelleError, match=where):
        load_catalogue("5.4", folder)
