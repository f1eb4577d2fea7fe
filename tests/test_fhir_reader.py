"""The FHIR reader: every input shape, references, deletions, duplicates (no vocabulary needed)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.errors import PasserelleError
from pipelines.sources.fhir import read_fhir
from pipelines.sources.fhir.references import reference_keys


def _write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _keys(staged, kind: str, element: str, target: str | None = None) -> list[str | None]:
    frame = staged.resources[kind]
    return reference_keys(
        frame,
        pl.col(element),
        full_urls=staged.full_urls,
        identifiers=staged.identifiers,
        target_type=target,
    ).to_list()


def test_synthea_transaction_bundle_resolves_urn_uuid_references(shared: Path) -> None:
    path = next((shared / "samples/fhir/synthea_r4_bundles").glob("Barney_Abbott_*.json"))
    bundle = json.loads(path.read_text())
    patient_id = next(
        e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    staged = read_fhir([path])
    encounters = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter"]
    assert staged.resources["Encounter"].height == len(encounters) == 11
    assert set(_keys(staged, "Encounter", "subject", "Patient")) == {f"fhir|Patient/{patient_id}"}
    assert staged.resources["Encounter"]["_position"].to_list() == [
        i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "Encounter"
    ]


def test_bulk_ndjson_conditional_references_resolve_to_the_resource_with_that_identifier(
    shared: Path,
) -> None:
    folder = shared / "samples/fhir/ndjson_bulk_export"
    staged = read_fhir([folder])
    first = json.loads((folder / "Encounter.000.ndjson").read_text().splitlines()[0])
    conditional = first["participant"][0]["individual"]["reference"]
    assert conditional.startswith("Practitioner?identifier=")
    npi = conditional.split("|", 1)[1]
    practitioner = next(
        json.loads(line)
        for line in (folder / "Practitioner.000.ndjson").read_text().splitlines()
        if npi in line
    )
    resolved = reference_keys(
        staged.resources["Encounter"].head(1),
        pl.col("participant").list.first().struct.field("individual"),
        full_urls=staged.full_urls,
        identifiers=staged.identifiers,
    ).to_list()
    assert resolved == [f"fhir|Practitioner/{practitioner['id']}"]
    # NDJSON positions are 1-based line numbers.
    assert staged.resources["Encounter"]["_position"][0] == 1
    # The export log is bookkeeping of the export, counted as filtered, not quarantined.
    assert staged.inputs["ExportLogEvent"] == 4
    assert staged.quarantine.height == 0


def test_reference_forms_relative_absolute_contained_and_logical(tmp_path: Path) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "http://server/fhir/Patient/p1", "resource": {"resourceType": "Patient", "id": "p1"}},
            {
                "fullUrl": "http://server/fhir/Practitioner/d1",
                "resource": {
                    "resourceType": "Practitioner",
                    "id": "d1",
                    "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "123"}],
                },
            },
        ]
        + [
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": f"m{i}",
                    "subject": subject,
                    "requester": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "123"}},
                    "medicationReference": {"reference": "#med1"},
                }
            }
            for i, subject in enumerate(
                [
                    {"reference": "Patient/p1"},
                    {"reference": "http://server/fhir/Patient/p1"},
                    {"reference": "https://elsewhere/fhir/Patient/p9/_history/3"},
                    {"reference": "urn:uuid:0b5ad8b5-unknown"},
                ]
            )
        ],
    }
    staged = read_fhir([_write(tmp_path / "b.json", bundle)])
    assert _keys(staged, "MedicationRequest", "subject", "Patient") == [
        "fhir|Patient/p1",
        "fhir|Patient/p1",
        "fhir|Patient/p9",
        "fhir|urn:uuid:0b5ad8b5-unknown",  # names nothing here: the loader reports it as dangling
    ]
    assert set(_keys(staged, "MedicationRequest", "requester", "Practitioner")) == {"fhir|Practitioner/d1"}
    assert _keys(staged, "MedicationRequest", "medicationReference")[0] == "fhir|MedicationRequest/m0#med1"


def test_transaction_bundle_delete_entries_become_deletions(shared: Path) -> None:
    path = shared / "samples/fhir/hl7_r4_examples/Bundle-bundle-transaction.json"
    staged = read_fhir([path])
    assert staged.deletions["_record_key"].to_list() == [
        "fhir|Patient/234",
        "fhir|Patient?identifier=123456",  # conditional: no resource of this load has that identifier
    ]
    # POST and PUT entries are read (a PUT's id comes from the resource); GET entries are queries.
    assert staged.inputs == {"Patient": 5, "Parameters": 1}
    assert sorted(staged.resources["Patient"]["_record_id"].to_list())[:2] == ["123", "123a"]


def test_transaction_response_bundle_is_not_source_data(shared: Path) -> None:
    staged = read_fhir([shared / "samples/fhir/hl7_r4_examples/Bundle-bundle-response.json"])
    assert staged.resources == {}
    assert sum(staged.filtered.values()) == sum(staged.inputs.values()) == 3


def test_gzip_ndjson_and_bulk_deleted_file(tmp_path: Path) -> None:
    lines = [{"resourceType": "Patient", "id": f"p{i}", "birthDate": "1970-01-01"} for i in range(3)]
    (tmp_path / "Patient.000.ndjson.gz").write_bytes(
        gzip.compress("\n".join(map(json.dumps, lines)).encode())
    )
    deleted = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Patient/p7"}}],
    }
    (tmp_path / "deleted").mkdir()
    (tmp_path / "deleted" / "del.ndjson").write_text(json.dumps(deleted) + "\n")
    staged = read_fhir([tmp_path])
    assert staged.resources["Patient"]["_record_id"].to_list() == ["p0", "p1", "p2"]
    assert staged.deletions["_record_key"].to_list() == ["fhir|Patient/p7"]


def test_a_resource_read_twice_keeps_the_last_copy(tmp_path: Path) -> None:
    _write(tmp_path / "a.json", {"resourceType": "Patient", "id": "x", "gender": "male"})
    _write(tmp_path / "b.json", {"resourceType": "Patient", "id": "x", "gender": "female"})
    staged = read_fhir([tmp_path])
    assert staged.resources["Patient"]["gender"].to_list() == ["female"]
    assert staged.filtered == {"Patient: an earlier copy of a resource read again later in this load": 1}


def test_missing_path_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(PasserelleError, match="no such file"):
        read_fhir([tmp_path / "nope"])
