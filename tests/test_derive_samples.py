"""derive on a CDM built from the shared Synthea sample bundles (three patients, one deceased), with
the starter vocabulary's concepts and drug -> ingredient ancestors.

The expected periods come from a plain-Python reading of the OHDSI rule over the same bundles, so
the set-based SQL is checked against an independent, obviously-correct implementation.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest
from _derive_cdm import expected_periods, insert, records, rows

from pipelines.derive import derive_all
from pipelines.project_files import data_dir
from pipelines.warehouse.duckdb_file import connect, initialize

EXTRACTION = dt.date(2021, 4, 1)
SYSTEMS = {"http://snomed.info/sct": "SNOMED", "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm"}


def _date(text: str | None) -> dt.date | None:
    return dt.date.fromisoformat(text[:10]) if text else None


def _bundle_events(bundle: dict, person_id: int) -> dict[str, list[dict]]:
    """The CDM rows of one Synthea bundle: just what the derived tables read."""
    found: dict[str, list[dict]] = {"visit_occurrence": [], "condition_occurrence": [], "drug_exposure": []}
    found |= {"measurement": [], "procedure_occurrence": [], "death": []}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        kind = resource["resourceType"]
        coding = (resource.get("code") or resource.get("medicationCodeableConcept") or {}).get(
            "coding", [{}]
        )[0]
        code = (SYSTEMS.get(coding.get("system")), coding.get("code"))
        if kind == "Patient" and resource.get("deceasedDateTime"):
            found["death"].append({"person_id": person_id, "death_date": _date(resource["deceasedDateTime"])})
        elif kind == "Encounter":
            period = resource["period"]
            found["visit_occurrence"].append(
                {"person_id": person_id, "visit_start_date": _date(period["start"]),
                 "visit_end_date": _date(period.get("end") or period["start"])}
            )  # fmt: skip
        elif kind == "Condition":
            found["condition_occurrence"].append(
                {
                    "person_id": person_id,
                    "code": code,
                    "condition_start_date": _date(resource["onsetDateTime"]),
                    "condition_end_date": _date(resource.get("abatementDateTime")),
                }
            )
        elif kind == "MedicationRequest":
            found["drug_exposure"].append(
                {
                    "person_id": person_id,
                    "code": code,
                    "drug_exposure_start_date": _date(resource["authoredOn"]),
                    "drug_exposure_end_date": None,
                }
            )
        elif kind == "Observation":
            found["measurement"].append(
                {"person_id": person_id, "measurement_date": _date(resource["effectiveDateTime"])}
            )
        elif kind == "Procedure":
            performed = resource.get("performedPeriod", {}).get("start") or resource.get("performedDateTime")
            found["procedure_occurrence"].append({"person_id": person_id, "procedure_date": _date(performed)})
    return found


@pytest.fixture(scope="module")
def sample_events(shared: Path) -> dict[str, list[dict]]:
    bundles = sorted((shared / "samples" / "fhir" / "synthea_r4_bundles").glob("*.json"))
    events: dict[str, list[dict]] = {}
    for person_id, path in enumerate(bundles, start=1):
        for table, found in _bundle_events(json.loads(path.read_text()), person_id).items():
            events.setdefault(table, []).extend(found)
    return events


@pytest.fixture
def cdm(warehouse_path: Path, sample_events) -> duckdb.DuckDBPyConnection:
    initialize(warehouse_path)
    con = connect(warehouse_path)
    # a MedicationRequest says when it was written, not how long it lasts: end date left empty
    con.execute("ALTER TABLE drug_exposure ALTER COLUMN drug_exposure_end_date DROP NOT NULL")
    starter = data_dir("vocab") / "starter"
    for table in ("concept", "concept_ancestor", "vocabulary"):
        con.execute(
            f"INSERT INTO {table} BY NAME SELECT * FROM read_csv(?, delim = '\t', quote = '', header = true,"
            " dateformat = '%Y%m%d', all_varchar = false)",
            [str(starter / f"{table.upper()}.csv")],
        )
    concept_of = dict(
        ((vocabulary, code), concept_id)
        for concept_id, vocabulary, code in rows(
            con, "SELECT concept_id, vocabulary_id, concept_code FROM concept"
        )
    )
    for table, found in sample_events.items():
        concept_column = {"condition_occurrence": "condition_concept_id", "drug_exposure": "drug_concept_id"}
        prepared = []
        for row in found:
            row = dict(row)
            if "code" in row:
                row[concept_column[table]] = concept_of.get(row.pop("code"), 0)
            prepared.append(row)
        insert(con, table, prepared)
    insert(con, "person", records("person_id year_of_birth", [(1, 1964), (2, 1975), (3, 1968)]))
    yield con
    con.close()


def _expected_periods(sample_events: dict[str, list[dict]]) -> list[tuple]:
    events = []
    for table, found in sample_events.items():
        if table == "death":
            continue
        for row in found:
            start = next(v for k, v in row.items() if k.endswith("_date") and "end" not in k)
            end = next((v for k, v in row.items() if k.endswith("end_date")), None)
            events.append((row["person_id"], start, end))
    deaths = {row["person_id"]: row["death_date"] for row in sample_events["death"]}
    return expected_periods(events, deaths, EXTRACTION)


def test_sample_cdm_periods_match_the_rule_and_stop_at_death(cdm, sample_events):
    counts = derive_all(cdm, extraction_date=EXTRACTION)

    derived = rows(
        cdm,
        "SELECT person_id, observation_period_start_date, observation_period_end_date"
        " FROM observation_period ORDER BY person_id, observation_period_start_date",
    )
    assert derived == _expected_periods(sample_events)
    assert {person_id for person_id, *_ in derived} == {1, 2, 3}
    assert counts["observation_period"] == len(derived)
    # the one deceased patient (Barney Abbott, died 1989-02-15; Synthea records visits until
    # 1989-02-22): death + 60 days comes before last event + 60 days
    assert rows(cdm, "SELECT person_id, death_date FROM death") == [(1, dt.date(1989, 2, 15))]
    last_ends = "SELECT max(observation_period_end_date) FROM observation_period WHERE person_id = ?"
    assert cdm.execute(last_ends, [1]).fetchall() == [(dt.date(1989, 4, 16),)]
    # Elisha Bradtke's last event is on 2021-03-24: the extraction date stops the 60-day extension
    assert cdm.execute(last_ends, [3]).fetchall() == [(EXTRACTION,)]


def test_sample_cdm_drug_eras_roll_up_to_starter_ingredients(cdm):
    derive_all(cdm, extraction_date=EXTRACTION)

    # each MedicationRequest has neither end date nor days supply: a one-day exposure (start + 1)
    one_day = [
        (1, 1702364, "1980-03-30"),  # clavulanate   } amoxicillin 250 MG / clavulanate 125 MG
        (1, 1713332, "1980-03-30"),  # amoxicillin   }
        (1, 1125315, "1981-06-20"),  # acetaminophen (acetaminophen 325 MG Oral Tablet)
        (1, 1361711, "1983-07-13"),  # nitroglycerin
        (1, 914335, "1989-02-15"),  # atropine
        (1, 1309944, "1989-02-15"),  # amiodarone
        (1, 1343916, "1989-02-15"),  # epinephrine
        (2, 1129625, "1978-11-15"),  # diphenhydramine
        (2, 1125315, "2020-04-13"),  # acetaminophen
        (3, 1115008, "2016-02-23"),  # naproxen (naproxen sodium 220 MG Oral Tablet)
    ]
    assert rows(
        cdm,
        "SELECT person_id, drug_concept_id, drug_era_start_date, drug_era_end_date, drug_exposure_count,"
        " gap_days FROM drug_era ORDER BY person_id, drug_era_start_date, drug_concept_id",
    ) == sorted(
        [
            (p, c, d, d + dt.timedelta(days=1), 1, 0)
            for p, c, d in ((p, c, dt.date.fromisoformat(s)) for p, c, s in one_day)
        ],
        key=lambda r: (r[0], r[2], r[1]),
    )


def test_sample_cdm_source_records_the_starter_vocabulary(cdm):
    derive_all(cdm, extraction_date=EXTRACTION)

    assert rows(cdm, "SELECT vocabulary_version, cdm_version_concept_id FROM cdm_source") == [
        ("starter v1 2026-11", 756265)
    ]
