"""map_openehr end to end: concepts through the shared resolution, domain routing, persons, visits,
exact accounting, and the batch loading into a real DuckDB warehouse."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

import polars as pl
import pytest
from _openehr_compositions import (
    blood_pressure,
    case_identification,
    coded,
    composition,
    element,
    evaluation,
)

from pipelines.mapping.batch import MappedBatch
from pipelines.sources.openehr import map_openehr
from pipelines.vocab import load_vocabulary
from pipelines.warehouse import load_batch, open_targets
from pipelines.warehouse.duckdb_file import connect

EHR = "5d2f8a51-7d0a-4a7e-9a36-2f1b4c1e8e01"
UNBORN = "a9c3e1f0-3b2d-4c5e-8f7a-1b2c3d4e5f60"


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def _write(folder: Path, name: str, document: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(document), encoding="utf-8")


def _person_data(birth: str) -> dict:
    return {
        "_type": "ADMIN_ENTRY",
        "archetype_node_id": "openEHR-EHR-ADMIN_ENTRY.person_data.v0",
        "name": {"value": "person"},
        "data": {
            "_type": "ITEM_TREE",
            "archetype_node_id": "at0001",
            "name": {"value": "tree"},
            "items": [
                {
                    "_type": "CLUSTER",
                    "archetype_node_id": "openEHR-EHR-CLUSTER.person_birth_data_iso.v0",
                    "name": {"value": "birth"},
                    "items": [element("at0001", {"_type": "DV_DATE", "value": birth})],
                }
            ],
        },
    }


def _gender(code: str) -> dict:
    return evaluation(
        "openEHR-EHR-EVALUATION.gender.v1",
        [element("at0019", coded("female", code, "http://hl7.org/fhir/administrative-gender"))],
        data="at0002",
    )


def _diagnosis(code: str, terminology: str) -> dict:
    return evaluation(
        "openEHR-EHR-EVALUATION.problem_diagnosis.v1",
        [element("at0002", coded("diagnosis", code, terminology))],
    )


def _hospitalisation(start: str, end: str) -> dict:
    return {
        "_type": "ADMIN_ENTRY",
        "archetype_node_id": "openEHR-EHR-ADMIN_ENTRY.hospitalization.v0",
        "name": {"value": "stay"},
        "data": {
            "_type": "ITEM_TREE",
            "archetype_node_id": "at0001",
            "name": {"value": "tree"},
            "items": [
                element("at0004", {"_type": "DV_DATE_TIME", "value": start}),
                element("at0005", {"_type": "DV_DATE_TIME", "value": end}),
            ],
        },
    }


@pytest.fixture
def export(tmp_path) -> Path:
    """Two EHRs: one with person data, vitals, diagnoses and a hospital case; one without birth year."""
    ehr = tmp_path / "ehrs" / EHR
    _write(
        ehr,
        "ehr_status.json",
        {"_type": "EHR_STATUS", "archetype_node_id": "openEHR-EHR-EHR_STATUS.generic.v1"},
    )
    _write(ehr, "person.json", composition([_person_data("1961-07-14"), _gender("female")], uid="p1::cdr::1"))
    _write(
        ehr,
        "bp.json",
        composition(
            [
                blood_pressure(
                    ("2024-03-05T08:00:00+01:00", 141.0, 90.0), ("2024-03-05T12:00:00+01:00", 128.0, 82.0)
                )
            ],
            uid="bp1::cdr::1",
            setting="228",
        ),
    )
    case = [case_identification("F-0042")]
    _write(
        ehr,
        "stay.json",
        composition(
            [_hospitalisation("2024-04-01T10:00:00Z", "2024-04-09T16:00:00Z")],
            uid="st1::cdr::1",
            setting="232",
            start="2024-04-01T10:00:00Z",
            other_context=case,
        ),
    )
    _write(
        ehr,
        "diagnoses.json",
        composition(
            [
                _diagnosis("49601007", "SNOMED-CT"),
                _diagnosis("160903007", "http://snomed.info/sct (20230731)"),
            ],
            uid="dx1::cdr::1",
            start="2024-04-02T09:00:00Z",
            other_context=case,
        ),
    )
    _write(
        ehr,
        "unmapped.json",
        composition([evaluation("openEHR-EHR-EVALUATION.clinical_synopsis.v1", [])], uid="n1::cdr::1"),
    )
    other = tmp_path / "ehrs" / UNBORN
    _write(
        other,
        "er.json",
        composition(
            [blood_pressure(("2024-05-06T23:30:00Z", 160.0, 95.0))],
            uid="er1::cdr::1",
            setting="227",
            start="2024-05-06T23:30:00Z",
        ),
    )
    (other / "garbage.json").write_text("not json at all", encoding="utf-8")
    return tmp_path / "ehrs"


def test_vital_signs_become_measurements_with_standard_concepts_units_and_event_dates(export, vocab):
    batch = map_openehr([export], vocab, time_zone="Europe/Berlin")
    bp = (
        batch.tables["measurement"]
        .filter(pl.col("_record_id") == "bp1")
        .sort("measurement_datetime", "measurement_concept_id")
    )
    assert bp.select(
        "measurement_concept_id",
        "value_as_number",
        "unit_concept_id",
        "unit_source_value",
        "measurement_date",
        "measurement_datetime",
        "measurement_type_concept_id",
    ).rows() == [
        (3004249, 141.0, 8876, "mm[Hg]", date(2024, 3, 5), datetime(2024, 3, 5, 8, 0), 32817),
        (3012888, 90.0, 8876, "mm[Hg]", date(2024, 3, 5), datetime(2024, 3, 5, 8, 0), 32817),
        (3004249, 128.0, 8876, "mm[Hg]", date(2024, 3, 5), datetime(2024, 3, 5, 12, 0), 32817),
        (3012888, 82.0, 8876, "mm[Hg]", date(2024, 3, 5), datetime(2024, 3, 5, 12, 0), 32817),
    ]
    assert bp["_ref__person_id"].unique().to_list() == [f"openehr|ehr/{EHR}"]
    assert bp["_record_key"].unique().to_list() == ["openehr|bp1"]
    assert bp["_key"].n_unique() == 4
    assert (
        bp["_key"]
        .str.starts_with(
            "openehr|bp1|/content[openEHR-EHR-OBSERVATION.blood_pressure.v2]#0/data[at0001]/events[at0006]#"
        )
        .all()
    )
    # 23:30 UTC is already the next day in Berlin: the date is the local calendar day
    er = batch.tables["measurement"].filter(pl.col("_record_id") == "er1")
    assert er["measurement_date"].unique().to_list() == [date(2024, 5, 7)]


def test_codes_go_through_the_shared_resolution_and_the_domain_picks_the_table(export, vocab):
    batch = map_openehr([export], vocab)
    conditions = batch.tables["condition_occurrence"]
    assert conditions.select(
        "condition_concept_id", "condition_source_value", "condition_source_concept_id"
    ).rows() == [(134057, "49601007", 134057)]
    # 160903007 "Full-time employment" is a SNOMED code of the Observation domain: the problem/diagnosis
    # file says ConditionOccurrence, the standard concept's domain sends it to observation
    employment = batch.tables["observation"].filter(pl.col("_record_id") == "dx1")
    assert employment.select("observation_concept_id", "observation_source_value").rows() == [
        (4053118, "160903007")
    ]


def test_visits_come_from_cases_hospital_stays_or_the_composition_setting(export, vocab):
    batch = map_openehr([export], vocab)
    visits = batch.tables["visit_occurrence"].sort("visit_start_datetime")
    assert visits.select(
        "_key", "visit_concept_id", "visit_start_datetime", "visit_end_datetime", "visit_source_value"
    ).rows() == [
        # a derived visit spans its composition: the context start and every event time
        (
            "openehr|visit/bp1",
            9202,
            datetime(2024, 3, 5, 7, 0),
            datetime(2024, 3, 5, 11, 0),
            "derived:setting/228",
        ),
        (
            f"openehr|visit/{EHR}/case/F-0042",
            9201,
            datetime(2024, 4, 1, 10, 0),
            datetime(2024, 4, 9, 16, 0),
            "F-0042",
        ),
        (
            "openehr|visit/er1",
            9203,
            datetime(2024, 5, 6, 23, 30),
            datetime(2024, 5, 6, 23, 30),
            "derived:setting/227",
        ),
    ]
    diagnoses = pl.concat(
        [batch.tables["condition_occurrence"], batch.tables["observation"]], how="diagonal_relaxed"
    ).filter(pl.col("_record_id") == "dx1")
    assert diagnoses["_ref__visit_occurrence_id"].unique().to_list() == [f"openehr|visit/{EHR}/case/F-0042"]


def test_a_person_needs_a_birth_year_and_the_accounting_is_exact(export, vocab):
    batch = map_openehr([export], vocab)
    assert batch.tables["person"].select(
        "_key", "year_of_birth", "month_of_birth", "day_of_birth", "gender_concept_id", "gender_source_value"
    ).rows() == [(f"openehr|ehr/{EHR}", 1961, 7, 14, 8532, "female")]
    quarantine = batch.quarantine.sort("record_type")
    assert quarantine.select("record_type", "record_id", "reason_code").rows() == [
        ("EHR", UNBORN, "no_birth_year"),
        ("FILE", None, "malformed_json"),
    ]
    assert batch.inputs == {"EHR_STATUS": 1, "COMPOSITION": 6, "FILE": 1, "EHR": 2}
    assert batch.mapped == {"COMPOSITION": 5, "EHR": 1, "EHR_STATUS": 1}
    _assert_accounting(batch)


def _assert_accounting(batch: MappedBatch) -> None:
    composition_filtered = sum(v for k, v in batch.filtered.items() if k.startswith("COMPOSITION:"))
    quarantined = batch.quarantine.filter(pl.col("record_type") == "COMPOSITION").height
    assert batch.inputs["COMPOSITION"] == batch.mapped["COMPOSITION"] + composition_filtered + quarantined
    ehr_quarantined = batch.quarantine.filter(pl.col("record_type") == "EHR").height
    assert batch.inputs["EHR"] == batch.mapped["EHR"] + ehr_quarantined


def test_the_batch_loads_into_a_real_warehouse(export, vocab, warehouse_path):
    batch = map_openehr([export], vocab)
    report = load_batch(batch, open_targets(warehouse_path, None, None), vocab=vocab)
    with connect(warehouse_path, read_only=True) as con:
        measurements = con.execute(
            "SELECT count(*), count(DISTINCT visit_occurrence_id) FROM main.measurement m "
            "JOIN main.person p USING (person_id)"
        ).fetchone()
        visits = con.execute("SELECT count(*) FROM main.visit_occurrence").fetchone()[0]
    # the person without a birth year is not in person: its rows wait in quarantine as dangling references
    assert measurements == (4, 1)
    assert visits == 2
    assert report.inserted["person"] == 1
    assert report.quarantined["no_birth_year"] == 1


def test_the_shared_samples_map_with_the_reference_files_and_load(shared, tmp_path, vocab, warehouse_path):
    manifest = json.loads((shared / "samples" / "openehr" / "manifest.json").read_text("utf-8"))
    for entry in manifest["files"]:
        if entry["kind"] == "composition_canonical_json":
            folder = tmp_path / entry["synthetic_ehr_id"]
            folder.mkdir(exist_ok=True)
            (folder / entry["file"].replace("/", "__")).symlink_to(
                shared / "samples" / "openehr" / entry["file"]
            )
    batch = map_openehr(
        [tmp_path], vocab, mapping_dirs=[shared / "reference" / "omocl"], time_zone="Europe/Berlin"
    )
    assert batch.inputs["COMPOSITION"] == 76
    assert batch.mapped["COMPOSITION"] == 66
    # 173 candidate measurement rows; the 35 whose constant concept is of the Observation domain in the
    # starter vocabulary (pulse, gravida, hair scores, ...) go to observation, as domain routing says
    assert batch.tables["measurement"].height == 138
    assert batch.tables["observation"].height == 91
    assert batch.tables["person"]["year_of_birth"].to_list() == [1953]
    _assert_accounting(batch)
    # every frame passes the loader's contract (specimen and death carry no visit reference); the
    # samples' EHRs have no birth year except one, so their rows wait as dangling references
    report = load_batch(batch, open_targets(warehouse_path, None, None), vocab=vocab)
    assert report.inserted == {"person": 1}
    assert report.quarantined == {"dangling_reference": 330, "no_birth_year": 75}


def test_an_ehr_with_only_its_status_is_counted_and_quarantined_without_a_person(tmp_path, vocab):
    _write(tmp_path / EHR, "ehr_status.json", {"_type": "EHR_STATUS"})
    batch = map_openehr([tmp_path], vocab)
    assert batch.tables == {}
    assert batch.inputs == {"EHR_STATUS": 1, "EHR": 1}
    assert batch.quarantine.select("record_type", "record_id", "reason_code").rows() == [
        ("EHR", EHR, "no_birth_year")
    ]


def test_keys_are_the_same_on_every_run_and_do_not_depend_on_where_the_files_are(export, tmp_path, vocab):
    first = map_openehr([export], vocab)
    moved = tmp_path / "elsewhere"
    export.rename(moved)
    second = map_openehr([moved], vocab)
    for table in ("measurement", "condition_occurrence", "observation", "visit_occurrence", "person"):
        assert sorted(first.tables[table]["_key"].to_list()) == sorted(second.tables[table]["_key"].to_list())
    assert first.tables["measurement"]["_source_file"].str.contains("/ehrs/").all()
    assert second.tables["measurement"]["_source_file"].str.contains("/elsewhere/").all()
