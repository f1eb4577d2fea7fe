"""The synthetic generator: deterministic, accounted for in its manifest, valid FHIR R4 and openEHR shapes."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.errors import PasserelleError
from pipelines.synthetic import generate
from pipelines.synthetic.catalogue import load_catalogue

N = 20
FHIR_DATE_TIME = "%Y-%m-%dT%H:%M:%S%z"


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    # small bundles and pages so several files of each kind are written and read back
    generate(out, N, seed=7, bundle_size=4, page_size=25)
    return out


@pytest.fixture(scope="module")
def manifest(generated: Path) -> dict:
    return json.loads((generated / "manifest.json").read_text())


def _bundles(folder: Path) -> list[tuple[Path, dict]]:
    return [
        (path, json.loads(path.read_bytes())) for path in sorted((folder / "fhir/bundles").glob("*.json"))
    ]


def _ndjson_lines(path: Path) -> list[bytes]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert raw.endswith(b"\n")
    return raw.split(b"\n")[:-1]


def _pages(folder: Path) -> list[tuple[Path, dict]]:
    return [(path, json.loads(path.read_bytes())) for path in sorted((folder / "openehr/aql").glob("*.json"))]


def _broken_at(manifest: dict) -> dict[tuple[str, int], str]:
    """(file, position) -> kind of every planted broken record."""
    places = {}
    for record in manifest["broken_records"]:
        position = record.get("entry", record.get("line", record.get("row")))
        places[(record["file"], position)] = record["kind"]
    return places


def _references(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return []


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    generate(tmp_path / "a", 12, seed=3)
    generate(tmp_path / "b", 12, seed=3)
    generate(tmp_path / "c", 12, seed=4)
    first, second, other = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert len(first) == 11  # 1 Bundle file, 7 Bulk types + deleted, 1 AQL page, the manifest
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[name] != other[name] for name in first if name != "fhir/bulk/deleted.ndjson")


def test_a_person_does_not_depend_on_how_many_are_generated(tmp_path: Path) -> None:
    generate(tmp_path / "small", 4, seed=5)
    generate(tmp_path / "large", 10, seed=5)
    small = json.loads((tmp_path / "small/fhir/bundles/bundle-00001.json").read_bytes())
    large = json.loads((tmp_path / "large/fhir/bundles/bundle-00001.json").read_bytes())
    assert small["entry"] == large["entry"][: len(small["entry"])]


def test_patients_are_split_over_the_three_sources(manifest: dict) -> None:
    assert manifest["patients"] == N
    assert manifest["fhir_bundles"]["patients"] == 10
    assert manifest["fhir_bulk"]["patients"] == 5
    assert manifest["openehr_aql"]["ehrs"] == 5
    assert manifest["fhir_bundles"]["files"] == 3  # 4 patients per file
    assert manifest["broken"] == {
        "impossible_date": 1,
        "malformed_json": 1,
        "missing_subject": 1,
        "unknown_rm_type": 1,
    }


def test_bundle_manifest_counts_equal_the_files(generated: Path, manifest: dict) -> None:
    broken = _broken_at(manifest)
    counted: Counter[str] = Counter()
    found_broken = []
    bundles = _bundles(generated)
    assert len(bundles) == manifest["fhir_bundles"]["files"]
    for path, bundle in bundles:
        name = str(path.relative_to(generated))
        for position, entry in enumerate(bundle["entry"]):
            if (name, position) in broken:
                found_broken.append(broken[(name, position)])
            else:
                counted[entry["resource"]["resourceType"]] += 1
    assert dict(counted) == manifest["fhir_bundles"]["resources"]
    assert found_broken == ["impossible_date"]
    deaths = sum(
        "deceasedDateTime" in entry["resource"]
        for _, bundle in bundles
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == "Patient"
    )
    assert deaths == manifest["fhir_bundles"]["deaths"]


def test_bundles_are_r4_transactions_whose_references_resolve_inside_the_bundle(generated: Path) -> None:
    seen_ids: set[str] = set()
    for _, bundle in _bundles(generated):
        assert bundle["resourceType"] == "Bundle"
        assert bundle["type"] == "transaction"
        full_urls = {entry["fullUrl"] for entry in bundle["entry"]}
        assert len(full_urls) == len(bundle["entry"])
        for entry in bundle["entry"]:
            resource = entry["resource"]
            assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
            assert entry["request"] == {"method": "POST", "url": resource["resourceType"]}
            assert resource["id"] not in seen_ids
            seen_ids.add(resource["id"])
            for reference in _references(resource):
                assert reference in full_urls, f"{resource['resourceType']} points outside its bundle"


def test_fhir_resources_carry_the_r4_elements_the_mappers_read(generated: Path) -> None:
    resources = [entry["resource"] for _, bundle in _bundles(generated) for entry in bundle["entry"]]
    by_type: dict[str, list[dict]] = {}
    for resource in resources:
        by_type.setdefault(resource["resourceType"], []).append(resource)
    panels = [o for o in by_type["Observation"] if o["code"]["coding"][0]["code"] == "85354-9"]
    assert panels
    for panel in panels:
        systolic, diastolic = (c["valueQuantity"] for c in panel["component"])
        assert [c["code"]["coding"][0]["code"] for c in panel["component"]] == ["8480-6", "8462-4"]
        assert systolic["code"] == diastolic["code"] == "mm[Hg]"
        assert 45 <= diastolic["value"] < systolic["value"] <= 220
    labs = [o for o in by_type["Observation"] if o["category"][0]["coding"][0]["code"] == "laboratory"]
    assert labs
    assert all(lab["referenceRange"][0]["low"]["unit"] == lab["valueQuantity"]["unit"] for lab in labs)
    for encounter in by_type["Encounter"]:
        start = dt.datetime.strptime(encounter["period"]["start"], FHIR_DATE_TIME)
        end = dt.datetime.strptime(encounter["period"]["end"], FHIR_DATE_TIME)
        assert start < end
        assert encounter["class"]["code"] in {"AMB", "EMER", "IMP"}
    assert {r["medicationCodeableConcept"]["coding"][0]["system"] for r in by_type["MedicationRequest"]} == {
        "http://www.nlm.nih.gov/research/umls/rxnorm"
    }
    assert {i["vaccineCode"]["coding"][0]["system"] for i in by_type["Immunization"]} == {
        "http://hl7.org/fhir/sid/cvx"
    }


# FHIR R4 primitive formats (https://hl7.org/fhir/R4/datatypes.html)
FHIR_ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
FHIR_DATE_OR_DATE_TIME = re.compile(
    r"-?[0-9]{4}(-(0[1-9]|1[0-2])(-(0[0-9]|[1-2][0-9]|3[0-1])"
    r"(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?"
)
DATE_KEYS = {
    "birthDate",
    "deceasedDateTime",
    "start",
    "end",
    "onsetDateTime",
    "abatementDateTime",
    "recordedDate",
    "effectiveDateTime",
    "authoredOn",
    "performedDateTime",
    "occurrenceDateTime",
}


def _dates(node) -> list[str]:
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k in DATE_KEYS and isinstance(v, str)]
        return found + [d for value in node.values() for d in _dates(value)]
    if isinstance(node, list):
        return [d for value in node for d in _dates(value)]
    return []


def test_ids_and_dates_follow_the_r4_primitive_formats(generated: Path) -> None:
    resources = [entry["resource"] for _, bundle in _bundles(generated) for entry in bundle["entry"]]
    assert all(FHIR_ID.fullmatch(resource["id"]) for resource in resources)
    dates = [d for resource in resources for d in _dates(resource)]
    assert len(dates) > len(resources)
    assert [d for d in dates if not FHIR_DATE_OR_DATE_TIME.fullmatch(d)] == []


def test_bulk_manifest_counts_equal_the_files(generated: Path, manifest: dict) -> None:
    bulk = manifest["fhir_bulk"]
    broken = _broken_at(manifest)
    counted: Counter[str] = Counter()
    found_broken = []
    for name, line_count in bulk["files"].items():
        lines = _ndjson_lines(generated / "fhir/bulk" / name)
        assert len(lines) == line_count
        for number, line in enumerate(lines, start=1):
            kind = broken.get((f"fhir/bulk/{name}", number))
            if kind == "malformed_json":
                with pytest.raises(json.JSONDecodeError):
                    json.loads(line)
                found_broken.append(kind)
                continue
            resource = json.loads(line)  # one whole resource per line
            if kind == "missing_subject":
                assert "subject" not in resource
                found_broken.append(kind)
                continue
            assert name.startswith(resource["resourceType"] + ".")
            counted[resource["resourceType"]] += 1
    assert dict(counted) == bulk["resources"]
    assert sorted(found_broken) == ["malformed_json", "missing_subject"]
    assert sorted(path.name for path in (generated / "fhir/bulk").iterdir()) == sorted(
        [*bulk["files"], "deleted.ndjson"]
    )
    assert "Immunization.ndjson.gz" in bulk["files"]


def test_bulk_references_are_relative_and_resolve_in_the_export(generated: Path, manifest: dict) -> None:
    broken = _broken_at(manifest)
    ids: set[str] = set()
    references: set[str] = set()
    for name in manifest["fhir_bulk"]["files"]:
        for number, line in enumerate(_ndjson_lines(generated / "fhir/bulk" / name), start=1):
            if (f"fhir/bulk/{name}", number) in broken:
                continue
            resource = json.loads(line)
            ids.add(f"{resource['resourceType']}/{resource['id']}")
            references.update(_references(resource))
    assert references
    assert references <= ids


def test_deleted_file_follows_the_bulk_data_spec(generated: Path, manifest: dict) -> None:
    observations = {
        json.loads(line)["id"]
        for line in _ndjson_lines(generated / "fhir/bulk/Observation.ndjson")
        if line.startswith(b"{") and line.endswith(b"}")
    }
    deleted: Counter[str] = Counter()
    for line in _ndjson_lines(generated / "fhir/bulk/deleted.ndjson"):
        bundle = json.loads(line)
        assert bundle["resourceType"] == "Bundle"
        assert bundle["type"] == "transaction"
        for entry in bundle["entry"]:
            assert entry["request"]["method"] == "DELETE"
            resource_type, resource_id = entry["request"]["url"].split("/")
            assert resource_id not in observations  # deleted since the last export: not exported again
            deleted[resource_type] += 1
    assert dict(deleted) == manifest["fhir_bulk"]["deleted"]
    assert sum(deleted.values()) > 0


def test_patient_ids_do_not_collide_between_sources(generated: Path) -> None:
    bundle_patients = {
        entry["resource"]["id"]
        for _, bundle in _bundles(generated)
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == "Patient"
    }
    bulk_patients = {json.loads(line)["id"] for line in _ndjson_lines(generated / "fhir/bulk/Patient.ndjson")}
    ehrs = {row[0] for _, page in _pages(generated) for row in page["rows"]}
    assert (len(bundle_patients), len(bulk_patients), len(ehrs)) == (10, 5, 5)
    assert not bundle_patients & bulk_patients
    assert not (bundle_patients | bulk_patients) & ehrs


def test_openehr_pages_are_aql_result_sets_of_canonical_compositions(generated: Path, manifest: dict) -> None:
    aql = manifest["openehr_aql"]
    broken = _broken_at(manifest)
    pages = _pages(generated)
    assert len(pages) == aql["pages"] > 1
    kinds: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    uids = set()
    for path, page in pages:
        assert [column["name"] for column in page["columns"]] == ["ehr_id", "c"]
        assert page["meta"]["resultsize"] == len(page["rows"])
        for position, (_ehr_id, composition) in enumerate(page["rows"]):
            assert composition["_type"] == "COMPOSITION"
            assert (
                composition["archetype_node_id"] == composition["archetype_details"]["archetype_id"]["value"]
            )
            uid = composition["uid"]["value"]
            assert uid.endswith("::passerelle.synthetic::1") and uid not in uids
            uids.add(uid)
            if (str(path.relative_to(generated)), position) in broken:
                assert composition["content"][0]["_type"] == "OBSERVATION_SERIES"
                continue
            kinds[composition["archetype_details"]["template_id"]["value"]] += 1
            for entry in composition["content"]:
                assert entry["_type"] in {"OBSERVATION", "EVALUATION", "ADMIN_ENTRY"}
                entries[entry["archetype_node_id"]] += 1
    assert kinds == {
        "Passerelle person data": aql["compositions"]["person_data"],
        "Passerelle encounter": aql["compositions"]["encounter"],
    }
    assert kinds["Passerelle person data"] == 5
    assert dict(entries) == aql["entries"]
    assert {
        "openEHR-EHR-OBSERVATION.blood_pressure.v2",
        "openEHR-EHR-OBSERVATION.pulse.v2",
        "openEHR-EHR-OBSERVATION.body_temperature.v2",
        "openEHR-EHR-OBSERVATION.body_weight.v2",
        "openEHR-EHR-OBSERVATION.height.v2",
        "openEHR-EHR-EVALUATION.problem_diagnosis.v1",
    } <= set(entries)


def test_openehr_blood_pressure_and_diagnoses_have_the_archetype_shape(generated: Path) -> None:
    chronic_and_acute = {c.code for c in (*load_catalogue().chronic, *load_catalogue().acute)}
    blood_pressures = diagnoses = 0
    for _, page in _pages(generated):
        for _, composition in page["rows"]:
            for entry in composition["content"]:
                if entry["archetype_node_id"] == "openEHR-EHR-OBSERVATION.blood_pressure.v2":
                    event = entry["data"]["events"][0]
                    assert event["_type"] == "POINT_EVENT"
                    items = {item["archetype_node_id"]: item["value"] for item in event["data"]["items"]}
                    assert items["at0004"]["_type"] == "DV_QUANTITY"
                    assert items["at0004"]["units"] == items["at0005"]["units"] == "mm[Hg]"
                    assert items["at0005"]["magnitude"] < items["at0004"]["magnitude"]
                    blood_pressures += 1
                if entry["archetype_node_id"] == "openEHR-EHR-EVALUATION.problem_diagnosis.v1":
                    name = entry["data"]["items"][0]
                    assert name["archetype_node_id"] == "at0002"
                    code = name["value"]["defining_code"]
                    assert code["terminology_id"]["value"] == "SNOMED-CT"
                    assert code["code_string"] in chronic_and_acute
                    diagnoses += 1
    assert blood_pressures > 0 and diagnoses > 0


def test_broken_records_are_exactly_where_the_manifest_says(generated: Path, manifest: dict) -> None:
    for record in manifest["broken_records"]:
        path = generated / record["file"]
        if record["kind"] == "impossible_date":
            resource = json.loads(path.read_bytes())["entry"][record["entry"]]["resource"]
            assert resource["resourceType"] == "Condition"
            with pytest.raises(ValueError):
                dt.date.fromisoformat(resource["onsetDateTime"])
        elif record["kind"] == "unknown_rm_type":
            _, composition = json.loads(path.read_bytes())["rows"][record["row"]]
            assert composition["content"][0]["_type"] == "OBSERVATION_SERIES"
        else:
            line = _ndjson_lines(path)[record["line"] - 1]
            assert (record["kind"] == "malformed_json") == (not line.endswith(b"}"))


def test_histories_are_plausible(tmp_path: Path) -> None:
    report = generate(tmp_path, 400, seed=11, bundle_size=200)
    resources = [entry["resource"] for _, bundle in _bundles(tmp_path) for entry in bundle["entry"]]
    patients = {r["id"]: r for r in resources if r["resourceType"] == "Patient"}
    encounters = [r for r in resources if r["resourceType"] == "Encounter"]
    classes = Counter(e["class"]["code"] for e in encounters)
    assert classes["AMB"] / len(encounters) > 0.8
    assert classes["EMER"] > 0 and classes["IMP"] > 0
    for encounter in encounters:
        hours = (
            dt.datetime.strptime(encounter["period"]["end"], FHIR_DATE_TIME)
            - dt.datetime.strptime(encounter["period"]["start"], FHIR_DATE_TIME)
        ).total_seconds() / 3600
        low, high = load_catalogue().visit_classes[encounter["class"]["code"]]["hours"]
        assert low <= hours <= high + 0.1
        patient = patients[encounter["subject"]["reference"].removeprefix("urn:uuid:")]
        assert encounter["period"]["start"][:10] >= patient["birthDate"]
        if "deceasedDateTime" in patient:
            assert encounter["period"]["end"] <= patient["deceasedDateTime"]
    deaths = report.manifest["deaths"]
    living = report.manifest["fhir_bundles"]["patients"] + report.manifest["fhir_bulk"]["patients"]
    assert 0.005 <= deaths / living <= 0.04
    ages = [
        (dt.date(2025, 12, 31) - dt.date.fromisoformat(p["birthDate"])).days / 365.25
        for p in patients.values()
    ]
    assert min(ages) < 5 and max(ages) > 80
    weights = [
        r["valueQuantity"]["value"]
        for r in resources
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "29463-7"
    ]
    assert min(weights) > 2 and max(weights) < 200
    vitals = load_catalogue().vitals
    for resource in resources:
        if resource["resourceType"] == "Observation" and "valueQuantity" in resource:
            code = resource["code"]["coding"][0]["code"]
            bounded = [q for q in vitals.values() if q.loinc == code and q.bounds]
            if bounded:
                low, high = bounded[0].bounds
                assert low <= resource["valueQuantity"]["value"] <= high
    # chronic conditions come with their treatment: metformin follows type 2 diabetes
    diabetic = {
        r["subject"]["reference"]
        for r in resources
        if r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"] == "44054006"
    }
    on_metformin = {
        r["subject"]["reference"]
        for r in resources
        if r["resourceType"] == "MedicationRequest"
        and r["medicationCodeableConcept"]["coding"][0]["code"] == "6809"
    }
    assert diabetic and on_metformin == diabetic


def test_too_few_patients_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(PasserelleError, match="at least 3"):
        generate(tmp_path, 2)


def test_an_output_path_that_is_a_file_is_a_user_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(PasserelleError, match="not-a-folder"):
        generate(blocker, 3)


def test_cli_generate_writes_the_sources_and_prints_a_summary(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["generate", "--patients", "6", "--out", str(tmp_path), "--seed", "9"])
    assert result.exit_code == 0, result.output
    assert "FHIR Bundles" in result.output and "openEHR AQL" in result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["patients"] == 6 and manifest["generator"]["seed"] == 9
    refused = CliRunner().invoke(main, ["generate", "--patients", "1", "--out", str(tmp_path)])
    assert refused.exit_code == 2
