"""FHIR -> OMOP through mappings/fhir/*.yaml with the starter vocabulary: real samples, real values."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import polars as pl
import pytest

from pipelines.cdm.spec import cdm_schema
from pipelines.mapping.batch import MappedBatch
from pipelines.mapping.fhir.distinct import distinct_rows
from pipelines.sources.fhir import map_fhir
from pipelines.vocab import Vocabulary, load_vocabulary

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "fhir"
SAMPLE_FILES = sorted(p for p in SAMPLES.rglob("*") if p.is_file() and p.suffix in (".json", ".ndjson"))


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return load_vocabulary()


def _balanced(batch: MappedBatch) -> bool:
    return sum(batch.inputs.values()) == (
        sum(batch.mapped.values()) + sum(batch.filtered.values()) + batch.quarantine.height
    )


def _write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_sample_file_loads_and_every_record_is_accounted_for(
    shared: Path, vocab: Vocabulary, path: Path
) -> None:
    batch = map_fhir([path], vocab)
    assert sum(batch.inputs.values()) >= 1
    assert _balanced(batch), (batch.inputs, batch.mapped, batch.filtered, batch.quarantine)


def test_blood_pressure_gives_two_measurements_in_mm_hg(shared: Path, vocab: Vocabulary) -> None:
    batch = map_fhir([shared / "samples/fhir/hl7_r4_examples/Observation-blood-pressure.json"], vocab)
    rows = batch.tables["measurement"].sort("_key")
    assert rows.height == 2 and set(batch.tables) == {"measurement"}
    assert rows["measurement_source_value"].to_list() == ["8480-6", "8462-4"]  # systolic, diastolic
    assert rows["measurement_concept_id"].to_list() == [3004249, 3012888]
    assert rows["value_as_number"].to_list() == [107.0, 60.0]
    assert rows["unit_source_value"].to_list() == ["mm[Hg]", "mm[Hg]"]
    assert rows["unit_concept_id"].to_list() == [8876, 8876]
    assert rows["measurement_type_concept_id"].to_list() == [32817, 32817]
    assert rows["_key"].to_list() == [
        "fhir|Observation/blood-pressure|component/0",
        "fhir|Observation/blood-pressure|component/1",
    ]
    assert rows["_ref__person_id"].unique().to_list() == ["fhir|Patient/example"]
    assert rows["measurement_date"].unique().to_list() == [date(2012, 9, 17)]


def test_synthea_bundle_counts_match_the_json(shared: Path, vocab: Vocabulary) -> None:
    path = next((shared / "samples/fhir/synthea_r4_bundles").glob("Blair_Conroy_*.json"))
    kinds = [e["resource"]["resourceType"] for e in json.loads(path.read_text())["entry"]]
    batch = map_fhir([path], vocab)
    assert batch.tables["person"].height == kinds.count("Patient") == 1
    assert batch.tables["visit_occurrence"].height == kinds.count("Encounter")
    condition_rows = pl.concat(
        [t.filter(pl.col("_record_type") == "Condition").select("_record_key") for t in batch.tables.values()]
    )
    assert condition_rows["_record_key"].n_unique() == kinds.count("Condition") == batch.mapped["Condition"]
    assert batch.filtered["Claim: no mapping"] == kinds.count("Claim")
    assert batch.quarantine.height == 0
    assert _balanced(batch)


def test_output_frames_carry_cdm_columns_and_types(shared: Path, vocab: Vocabulary) -> None:
    batch = map_fhir([shared / "samples/fhir/synthea_r4_bundles"], vocab)
    types = {"integer": pl.Int32, "bigint": pl.Int64, "float": pl.Float64, "date": pl.Date}
    for name, frame in batch.tables.items():
        table = cdm_schema().table(name)
        expected = [c.name for c in table.columns if not c.primary_key]
        assert frame.columns[: len(expected)] == expected
        for column in table.columns:
            if column.type in types and not column.primary_key:
                assert frame.schema[column.name] == types[column.type], (name, column.name)
        assert frame["_key"].is_unique().all(), name


def test_patient_race_ethnicity_birth_and_death(shared: Path, vocab: Vocabulary) -> None:
    path = next((shared / "samples/fhir/synthea_r4_bundles").glob("Barney_Abbott_*.json"))
    batch = map_fhir([path], vocab)
    person = batch.tables["person"].row(0, named=True)
    assert (person["gender_concept_id"], person["race_concept_id"], person["ethnicity_concept_id"]) == (
        8507,
        8527,
        38003564,
    )
    assert (person["year_of_birth"], person["month_of_birth"], person["day_of_birth"]) == (1964, 3, 18)
    assert person["_ref__location_id"] == person["_record_key"] + "|address"
    death = batch.tables["death"].row(0, named=True)
    assert str(death["death_date"]) == "1989-02-15" and death["death_type_concept_id"] == 32817


def test_partial_birth_date_keeps_its_precision(tmp_path: Path, vocab: Vocabulary) -> None:
    path = _write(tmp_path / "p.json", {"resourceType": "Patient", "id": "y", "birthDate": "1974"})
    person = map_fhir([path], vocab).tables["person"].row(0, named=True)
    assert (person["year_of_birth"], person["month_of_birth"], person["day_of_birth"]) == (1974, None, None)


def _condition(code: dict, **extra) -> dict:
    return {
        "resourceType": "Condition",
        "id": extra.pop("id", "c1"),
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2020-05-04",
        "code": code,
        **extra,
    }


def test_domain_routing_sends_a_condition_coded_as_a_measurement_to_measurement(
    tmp_path: Path, vocab: Vocabulary
) -> None:
    code = {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}
    batch = map_fhir([_write(tmp_path / "c.json", _condition(code))], vocab)
    assert set(batch.tables) == {"measurement"}
    assert batch.tables["measurement"]["measurement_concept_id"].to_list() == [3004249]


def test_coding_priority_standard_first_and_source_value_keeps_the_chosen_code(
    tmp_path: Path, vocab: Vocabulary
) -> None:
    code = {
        "coding": [
            {"system": "http://example.org/local", "code": "DM2", "userSelected": True},
            {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11"},
            {"system": "http://snomed.info/sct", "code": "44054006"},
        ]
    }
    rows = map_fhir([_write(tmp_path / "c.json", _condition(code))], vocab).tables["condition_occurrence"]
    assert rows.select("condition_concept_id", "condition_source_value", "condition_source_concept_id").row(
        0
    ) == (
        201826,
        "44054006",
        201826,
    )


def test_one_code_mapping_to_two_standard_concepts_gives_two_rows(tmp_path: Path, vocab: Vocabulary) -> None:
    code = {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I48"}]}
    rows = map_fhir([_write(tmp_path / "c.json", _condition(code))], vocab).tables["condition_occurrence"]
    assert sorted(rows["condition_concept_id"].to_list()) == [313217, 314665]
    assert sorted(rows["_key"].to_list()) == ["fhir|Condition/c1|313217", "fhir|Condition/c1|314665"]
    assert rows["condition_source_concept_id"].unique().to_list() == [1569170]


def test_unmapped_code_keeps_concept_0_and_its_source_value(tmp_path: Path, vocab: Vocabulary) -> None:
    code = {"coding": [{"system": "http://example.org/local", "code": "XYZ-1"}]}
    rows = map_fhir([_write(tmp_path / "c.json", _condition(code))], vocab).tables["condition_occurrence"]
    assert rows.select("condition_concept_id", "condition_source_value").row(0) == (0, "XYZ-1")


def test_verification_status_rules(tmp_path: Path, vocab: Vocabulary) -> None:
    def status(value: str) -> dict:
        return {"coding": [{"code": value}]}

    code = {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}
    for i, value in enumerate(["refuted", "entered-in-error", "provisional", "confirmed"]):
        _write(tmp_path / f"c{i}.json", _condition(code, id=f"c{i}", verificationStatus=status(value)))
    batch = map_fhir([tmp_path], vocab)
    assert batch.filtered == {"Condition: verificationStatus refuted or entered-in-error": 2}
    assert batch.tables["observation"]["_record_id"].to_list() == ["c2"]  # provisional -> observation
    assert batch.tables["condition_occurrence"]["_record_id"].to_list() == ["c3"]


def test_contained_medication_gives_the_drug_code(shared: Path, vocab: Vocabulary) -> None:
    batch = map_fhir([shared / "samples/fhir/hl7_r4_examples/MedicationRequest-medrx0302.json"], vocab)
    row = batch.tables["drug_exposure"].row(0, named=True)
    assert row["drug_source_value"] == "324252006"  # the contained Medication's SNOMED code
    assert row["drug_type_concept_id"] == 32838
    assert str(row["drug_exposure_start_date"]) == "2015-01-15"


def test_intent_policy_filters_proposals_and_keeps_orders(tmp_path: Path, vocab: Vocabulary) -> None:
    for intent in ("order", "proposal", "plan"):
        _write(
            tmp_path / f"{intent}.json",
            {
                "resourceType": "MedicationRequest",
                "id": intent,
                "status": "active",
                "intent": intent,
                "subject": {"reference": "Patient/p1"},
                "authoredOn": "2021-01-02",
                "medicationCodeableConcept": {"text": "aspirin"},
            },
        )
    batch = map_fhir([tmp_path], vocab)
    assert batch.tables["drug_exposure"]["_record_id"].to_list() == ["order"]
    assert batch.tables["drug_exposure"]["drug_source_value"].to_list() == ["aspirin"]
    assert batch.filtered == {
        "MedicationRequest: intent is not an order (proposal, plan, directive or option)": 2
    }


def test_bulk_export_maps_and_deletes_nothing(shared: Path, vocab: Vocabulary) -> None:
    folder = shared / "samples/fhir/ndjson_bulk_export"
    patients = len((folder / "Patient.000.ndjson").read_text().splitlines())
    batch = map_fhir([folder], vocab)
    assert batch.tables["person"].height == patients == 3
    visits = batch.tables["visit_occurrence"]
    assert visits["_ref__provider_id"].str.starts_with("fhir|Practitioner/").all()
    assert not visits["_ref__provider_id"].str.contains("?", literal=True).any()
    assert batch.deletions.height == 0
    assert _balanced(batch)


def test_immunization_not_done_is_filtered(shared: Path, vocab: Vocabulary) -> None:
    batch = map_fhir([shared / "samples/fhir/hl7_r4_examples/Immunization-notGiven.json"], vocab)
    assert batch.tables == {}
    assert batch.filtered == {"Immunization: status not-done or entered-in-error (no vaccine was given)": 1}


def test_rows_pointing_at_a_sub_encounter_point_at_its_visit_and_visit_detail(
    tmp_path: Path, vocab: Vocabulary
) -> None:
    period = {"start": "2020-05-04T08:00:00Z", "end": "2020-05-06T08:00:00Z"}
    stay = {"resourceType": "Encounter", "id": "stay", "status": "finished", "class": {"code": "IMP"}}
    ward = {**stay, "id": "ward", "partOf": {"reference": "Encounter/stay"}}
    for encounter in (stay, ward):
        encounter.update(subject={"reference": "Patient/p1"}, period=period)
    code = {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]}
    for resource in (stay, ward, _condition(code, encounter={"reference": "Encounter/ward"})):
        _write(tmp_path / f"{resource['id']}.json", resource)
    batch = map_fhir([tmp_path], vocab)
    assert batch.tables["visit_occurrence"]["visit_concept_id"].to_list() == [9201]
    detail = batch.tables["visit_detail"].row(0, named=True)
    assert detail["_ref__visit_occurrence_id"] == "fhir|Encounter/stay"
    condition = batch.tables["condition_occurrence"].row(0, named=True)
    assert condition["_ref__visit_occurrence_id"] == "fhir|Encounter/stay"
    assert condition["_ref__visit_detail_id"] == "fhir|Encounter/ward"


def test_allergy_uses_the_value_as_concept_pattern(shared: Path, vocab: Vocabulary) -> None:
    folder = shared / "samples/fhir/hl7_r4_examples"
    drug = map_fhir([folder / "AllergyIntolerance-medication.json"], vocab).tables["observation"]
    assert drug["observation_concept_id"].to_list() == [439224]  # category medication: Allergy to drug
    batch = map_fhir([folder / "AllergyIntolerance-example.json"], vocab)
    row = batch.tables["observation"].row(0, named=True)
    assert row["observation_concept_id"] == 4188027  # category food: Allergy to food
    assert row["observation_source_value"] == row["value_source_value"] == "227493005"  # cashew nuts
    assert str(row["observation_date"]) == "2004-01-01"  # onsetDateTime "2004" -> first day of the year


def test_absent_coded_elements_stay_null_not_0(shared: Path, vocab: Vocabulary) -> None:
    path = next((shared / "samples/fhir/synthea_r4_bundles").glob("Barney_Abbott_*.json"))
    visits = map_fhir([path], vocab).tables["visit_occurrence"]
    assert visits["admitted_from_concept_id"].null_count() == visits.height  # no hospitalization element
    assert set(visits["visit_concept_id"].to_list()) <= {9201, 9202, 9203}


def test_history_bundle_keeps_the_newest_version_and_argonaut_race(tmp_path: Path, vocab: Vocabulary) -> None:
    def version(number: str, gender: str) -> dict:
        race = {
            "url": "http://fhir.org/guides/argonaut/StructureDefinition/argo-race",
            "extension": [{"url": "ombCategory", "valueCoding": {"code": "2054-5"}}],
        }
        patient = {"resourceType": "Patient", "id": "h1", "meta": {"versionId": number}, "gender": gender}
        return {"resource": {**patient, "birthDate": "1980-02-29", "extension": [race]}}

    history = {
        "resourceType": "Bundle",
        "type": "history",
        "entry": [version("2", "female"), version("1", "male")],
    }
    batch = map_fhir([_write(tmp_path / "h.json", history)], vocab)
    person = batch.tables["person"].row(0, named=True)
    assert (person["gender_concept_id"], person["_record_version"], person["race_concept_id"]) == (
        8532,
        "2",
        8516,
    )
    assert person["day_of_birth"] == 29


def test_dispense_quantity_days_supply_route_and_end_date(shared: Path, vocab: Vocabulary) -> None:
    batch = map_fhir([shared / "samples/fhir/hl7_r4_examples/MedicationDispense-meddisp0301.json"], vocab)
    row = batch.tables["drug_exposure"].row(0, named=True)
    assert (row["quantity"], row["days_supply"], row["drug_source_value"]) == (12.0, 3, "0069-2587-10")
    assert str(row["drug_exposure_start_date"]) == "2015-01-15"
    assert str(row["drug_exposure_end_date"]) == "2015-01-17"  # start + 3 days supply - 1
    assert (row["route_source_value"], row["sig"]) == ("255560000", "500mg IV q6h x 3 days")
    assert row["_ref__provider_id"] == "fhir|Practitioner/f006"


def test_organization_practitioner_role_location_and_coverage(tmp_path: Path, vocab: Vocabulary) -> None:
    npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999"}
    resources = [
        {"resourceType": "Organization", "id": "org", "name": "Clinic", "address": [{"city": "Lyon"}]},
        {"resourceType": "Practitioner", "id": "doc", "identifier": [npi], "gender": "female"},
        {
            "resourceType": "PractitionerRole",
            "id": "role",
            "practitioner": {"identifier": npi},
            "organization": {"reference": "Organization/org"},
            "specialty": [
                {"coding": [{"system": "http://nucc.org/provider-taxonomy", "code": "208D00000X"}]}
            ],
        },
        {"resourceType": "Location", "id": "loc", "address": {"line": ["1 rue"], "postalCode": "69001"}},
        {
            "resourceType": "Coverage",
            "id": "cov",
            "status": "active",
            "beneficiary": {"reference": "Patient/p1"},
            "period": {"start": "2020-01-01", "end": "2020-12-31"},
        },
    ]
    for resource in resources:
        _write(tmp_path / f"{resource['id']}.json", resource)
    batch = map_fhir([tmp_path], vocab)
    care_site = batch.tables["care_site"].row(0, named=True)
    assert (care_site["care_site_name"], care_site["_ref__location_id"]) == (
        "Clinic",
        "fhir|Organization/org|address",
    )
    providers = {r["_record_id"]: r for r in batch.tables["provider"].iter_rows(named=True)}
    assert (providers["doc"]["npi"], providers["doc"]["gender_concept_id"]) == ("9999", 8532)
    assert (providers["role"]["specialty_source_value"], providers["role"]["_ref__care_site_id"]) == (
        "208D00000X",
        "fhir|Organization/org",
    )
    locations = {r["_key"]: r for r in batch.tables["location"].iter_rows(named=True)}
    assert locations["fhir|Location/loc"]["zip"] == "69001"
    assert locations["fhir|Organization/org|address"]["city"] == "Lyon"
    plan = batch.tables["payer_plan_period"].row(0, named=True)
    assert (str(plan["payer_plan_period_start_date"]), str(plan["payer_plan_period_end_date"])) == (
        "2020-01-01",
        "2020-12-31",
    )
    assert plan["_ref__person_id"] == "fhir|Patient/p1"


def test_comparator_reference_range_and_coded_value(tmp_path: Path, vocab: Vocabulary) -> None:
    base = {
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2022-01-02",
    }
    bp = {
        **base,
        "id": "sbp",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "valueQuantity": {"value": 90, "comparator": "<", "unit": "mmHg"},
        "referenceRange": [{"low": {"value": 90}, "high": {"value": 140}}],
    }
    coded = {
        **base,
        "id": "coded",
        "code": {"coding": [{"system": "http://loinc.org", "code": "69453-9"}]},
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "410429000"}]},
    }
    _write(tmp_path / "sbp.json", bp)
    _write(tmp_path / "coded.json", coded)
    batch = map_fhir([tmp_path], vocab)
    rows = {r["_record_id"]: r for t in batch.tables.values() for r in t.iter_rows(named=True)}
    sbp = rows["sbp"]
    assert (sbp["operator_concept_id"], sbp["range_low"], sbp["range_high"]) == (4171756, 90.0, 140.0)
    assert (sbp["unit_concept_id"], sbp["unit_source_value"]) == (8876, "mmHg")  # UCUM synonym
    assert (rows["coded"]["value_as_concept_id"], rows["coded"]["value_source_value"]) == (
        321042,
        "410429000",
    )


def test_type_concept_follows_the_category(tmp_path: Path, vocab: Vocabulary) -> None:
    lab = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
        ]
    }
    for name, category in (("lab", [lab]), ("plain", None)):
        resource = {
            "resourceType": "Observation",
            "id": name,
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2022-01-02",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org"},
        }
        if category:
            resource["category"] = category
        _write(tmp_path / f"{name}.json", resource)
    rows = map_fhir([tmp_path], vocab).tables["measurement"].sort("_record_id")
    assert rows.select("_record_id", "measurement_type_concept_id").rows() == [
        ("lab", 32856),
        ("plain", 32817),
    ]


def test_distinct_rows_tell_a_missing_struct_from_a_struct_of_nulls() -> None:
    reference = pl.Struct({"reference": pl.Utf8, "type": pl.Utf8})
    frame = pl.DataFrame(
        {
            "scope": [1, 1, None, 1, None, 2],
            "ref": [
                {"reference": "Patient/1"},
                None,
                {"reference": None},
                {"reference": "Patient/1"},
                None,
                None,
            ],
        },
        schema={"scope": pl.Int64, "ref": reference},
    )
    found = distinct_rows(frame)
    assert found is not None
    assert found.firsts.to_list() == [0, 1, 2, 4, 5]
    assert found.slots.to_list() == [0, 1, 2, 0, 3, 4]
    assert found.spread(frame.gather(found.firsts)).equals(frame)


def test_distinct_rows_of_codings_and_of_columns_null_on_every_row() -> None:
    coding = pl.Struct({"system": pl.Utf8, "code": pl.Utf8})
    concept = pl.Struct({"coding": pl.List(coding), "text": pl.Utf8})
    values = [
        {"coding": [{"system": "s", "code": "1"}, {"system": "s", "code": "2"}]},
        {"coding": [{"system": "s", "code": "2"}, {"system": "s", "code": "1"}]},  # order counts
        {"coding": [None]},
        {"coding": []},
        {"coding": None},
        {"coding": [{"system": "s", "code": "1"}, {"system": "s", "code": "2"}]},
        {"coding": [None]},
    ]
    frame = pl.DataFrame({"code": values, "never": [None] * 7}, schema={"code": concept, "never": pl.Utf8})
    found = distinct_rows(frame)
    assert found is not None
    assert found.slots.to_list() == [0, 1, 2, 3, 4, 0, 2]
    nothing = distinct_rows(pl.DataFrame({"never": [None] * 3}, schema={"never": concept}))
    assert nothing is not None and nothing.slots.to_list() == [0, 0, 0]


def test_a_code_that_maps_to_two_standard_concepts_gives_a_row_each_beside_single_ones(
    tmp_path: Path, vocab: Vocabulary
) -> None:
    # ICD10CM I48 (atrial fibrillation and flutter) maps to two SNOMED conditions in the starter vocabulary
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": _condition(
                    {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]}, id=i
                )
            }
            for i, code in (("c1", "E11"), ("c2", "I48"), ("c3", "E11"))
        ],
    }
    rows = map_fhir([_write(tmp_path / "b.json", bundle)], vocab).tables["condition_occurrence"].sort("_key")
    assert rows["_key"].to_list() == [
        "fhir|Condition/c1",
        "fhir|Condition/c2|313217",
        "fhir|Condition/c2|314665",
        "fhir|Condition/c3",
    ]
    assert rows["condition_concept_id"].to_list() == [201826, 313217, 314665, 201826]
    assert rows["condition_source_value"].to_list() == ["E11", "I48", "I48", "E11"]


def test_every_row_evaluated_alone_gives_the_same_batch(
    shared: Path, vocab: Vocabulary, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When the two hashes of distinct_rows disagree, each step evaluates every row instead: same result.
    from pipelines.mapping.fhir import dates, engine, reference_index

    files = [shared / "samples/fhir/synthea_r4_bundles", shared / "samples/fhir/hl7_r4_examples"]
    by_value = map_fhir(files, vocab)
    for module in (engine, dates, reference_index):
        monkeypatch.setattr(module, "distinct_rows", lambda frame: None)
    by_row = map_fhir(files, vocab)
    assert by_value.tables.keys() == by_row.tables.keys() and len(by_value.tables) >= 5
    for name, rows in by_value.tables.items():
        assert rows.sort(pl.all()).equals(by_row.tables[name].sort(pl.all())), name
    assert by_value.quarantine.sort(pl.all()).equals(by_row.quarantine.sort(pl.all()))
    assert (by_value.mapped, by_value.filtered) == (by_row.mapped, by_row.filtered)
