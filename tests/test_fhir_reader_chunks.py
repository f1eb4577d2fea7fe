"""The FHIR reader builds frames chunk by chunk and batch by batch (bounded memory): the chunks and
the batches add up to one read."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from pipelines.mapping.batch import MappedBatch
from pipelines.sources.fhir import columnar, iter_fhir_batches, map_fhir, reader
from pipelines.synthetic import generate
from pipelines.vocab import Vocabulary, load_vocabulary


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    generate(folder, 8, seed=5)
    return folder


def test_chunked_read_equals_a_single_chunk(sources, monkeypatch):
    whole = reader.read_fhir([sources / "fhir"])
    monkeypatch.setattr(reader, "_CHUNK", 7)  # every type of the 8 patients spans several chunks
    chunked = reader.read_fhir([sources / "fhir"])

    manifest = json.loads((sources / "manifest.json").read_text())
    bundles, bulk = manifest["fhir_bundles"]["resources"], manifest["fhir_bulk"]["resources"]
    bulk_lines = manifest["fhir_bulk"]["files"]["Observation.ndjson"]
    assert chunked.resources.keys() == whole.resources.keys()
    for kind, frame in whole.resources.items():
        assert chunked.resources[kind].equals(frame), kind
    assert whole.resources["Patient"].height == bundles["Patient"] + bulk["Patient"] == 6
    # every Observation line but the planted malformed one (the reader quarantines it)
    assert whole.resources["Observation"].height == bundles["Observation"] + bulk_lines - 1 == 739
    assert whole.quarantine["reason_code"].to_list() == ["malformed_json"]
    assert chunked.inputs == whole.inputs
    assert chunked.quarantine.equals(whole.quarantine)
    assert chunked.full_urls.equals(whole.full_urls) and chunked.identifiers.equals(whole.identifiers)
    assert chunked.deletions.equals(whole.deletions)


def test_a_chunk_keeps_nested_elements_and_nulls(sources, monkeypatch):
    monkeypatch.setattr(reader, "_CHUNK", 2)
    observations = reader.read_fhir([sources / "fhir" / "bulk"]).resources["Observation"]
    codes = observations.select(pl.col("code").struct.field("coding").list.first().struct.field("system"))
    assert set(codes.to_series().drop_nulls()) <= {"http://loinc.org", "http://snomed.info/sct"}
    assert observations["_position"].min() == 1 and observations["_record_type"].unique().to_list() == [
        "Observation"
    ]


# --- batches: the same rows and books as one read, in bounded pieces ------------------------------


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return load_vocabulary()


def _rows_by_key(batches: list[MappedBatch]) -> dict[str, pl.DataFrame]:
    tables: dict[str, list[pl.DataFrame]] = {}
    for batch in batches:
        for name, frame in batch.tables.items():
            tables.setdefault(name, []).append(frame)
    return {name: pl.concat(frames, how="diagonal_relaxed").sort("_key") for name, frames in tables.items()}


def _summed(batches: list[MappedBatch], books: str) -> Counter:
    total: Counter = Counter()
    for batch in batches:
        total.update(getattr(batch, books))
    return total


def test_batches_add_up_to_one_map(sources, shared, vocab):
    paths = [sources / "fhir", shared / "samples/fhir/synthea_r4_bundles"]
    whole = map_fhir(paths, vocab)
    batches = list(iter_fhir_batches(paths, vocab, max_resources=60))

    assert len(batches) >= 6
    observation_files = [
        set(
            b.tables["measurement"].filter(pl.col("_source_file").str.ends_with("Observation.ndjson"))[
                "_position"
            ]
        )
        for b in batches
        if "measurement" in b.tables
    ]
    assert sum(1 for positions in observation_files if positions) >= 2, "Observation.ndjson spans batches"
    assert max(len(b.tables.get("measurement", [])) for b in batches) < whole.tables["measurement"].height
    expected = {name: frame.sort("_key") for name, frame in whole.tables.items()}
    got = _rows_by_key(batches)
    assert got.keys() == expected.keys()
    for name, frame in expected.items():
        assert got[name].select(frame.columns).equals(frame), name
    for books in ("inputs", "mapped", "filtered"):
        assert _summed(batches, books) == Counter(getattr(whole, books)), books
    quarantine = pl.concat([b.quarantine for b in batches])
    assert sorted(quarantine.rows()) == sorted(whole.quarantine.rows())
    assert quarantine["reason_code"].to_list().count("malformed_json") == 1
    deletions = pl.concat([b.deletions for b in batches])
    assert sorted(deletions.rows()) == sorted(whole.deletions.rows()) and deletions.height > 0


def test_one_batch_when_the_budget_is_large(sources, vocab):
    (batch,) = iter_fhir_batches([sources / "fhir"], vocab, max_resources=10**9)
    whole = map_fhir([sources / "fhir"], vocab)
    assert batch.inputs == whole.inputs and batch.tables.keys() == whole.tables.keys()
    assert batch.tables["measurement"].equals(whole.tables["measurement"])


def test_conditional_reference_to_a_patient_of_an_earlier_batch_resolves(tmp_path, vocab):
    patients = [
        {
            "resourceType": "Patient",
            "id": f"p{i}",
            "gender": "female",
            "birthDate": "1970-01-01",
            "identifier": [{"system": "urn:mrn", "value": f"M{i}"}],
        }
        for i in range(6)
    ]
    observations = [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "subject": {"reference": f"Patient?identifier=urn:mrn|M{i}"},
            "effectiveDateTime": "2022-03-04T10:11:12+01:00",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org"},
        }
        for i in range(6)
    ]
    (tmp_path / "1-Patient.ndjson").write_text("\n".join(map(json.dumps, patients)) + "\n")
    (tmp_path / "2-Observation.ndjson").write_text("\n".join(map(json.dumps, observations)) + "\n")

    batches = list(iter_fhir_batches([tmp_path], vocab, max_resources=4))

    measured = [b for b in batches if "measurement" in b.tables]
    assert len(batches) == 3 and "person" not in measured[-1].tables  # Patients all in earlier batches
    refs = pl.concat([b.tables["measurement"] for b in measured]).sort("_record_id")["_ref__person_id"]
    assert refs.to_list() == [f"fhir|Patient/p{i}" for i in range(6)]


def test_conditional_reference_to_a_later_bulk_file_resolves(shared, vocab):
    # An export's files in alphabetical order: Encounter.000.ndjson names its participants by
    # Practitioner?identifier=..., and Practitioner.000.ndjson comes later, in another batch.
    folder = shared / "samples/fhir/ndjson_bulk_export"
    whole = map_fhir([folder], vocab)
    batches = list(iter_fhir_batches([folder], vocab, max_resources=20))

    visits = pl.concat([b.tables["visit_occurrence"] for b in batches if "visit_occurrence" in b.tables])
    providers = visits.sort("_key")["_ref__provider_id"]
    assert len(batches) > 3
    assert providers.to_list() == whole.tables["visit_occurrence"].sort("_key")["_ref__provider_id"].to_list()
    assert providers.str.starts_with("fhir|Practitioner/").all()


# --- the fast path (Arrow over the source bytes) gives what the exact path (msgspec) gives --------


def _exact(monkeypatch) -> None:
    def refuse(data, kind, rows, **options):
        raise columnar.Unsound("the exact path, for comparison")

    monkeypatch.setattr(columnar, "parse_block", refuse)


def _assert_same(fast, exact) -> None:
    assert fast.resources.keys() == exact.resources.keys()
    for kind, frame in exact.resources.items():
        assert fast.resources[kind].equals(frame), kind
    assert fast.inputs == exact.inputs and fast.filtered == exact.filtered
    assert fast.quarantine.equals(exact.quarantine)
    assert fast.full_urls.equals(exact.full_urls) and fast.identifiers.equals(exact.identifiers)
    assert fast.deletions.equals(exact.deletions)


def _observation(i: int, **extra) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"o{i}",
        "meta": {"versionId": "" if i % 7 == 0 else str(i % 3), "lastUpdated": "2024-01-02T03:04:05Z"},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}], "text": "x" * (i % 5)},
        "subject": {"reference": f"Patient/p{i % 9}"},
        "valueQuantity": {"value": 120.5 + i, "unit": "mmHg"},
        "component": [{"valueInteger": i}],
        "note": [{"text": "not read"}],
        **extra,
    }


# Lines the exact path refuses (or reads differently) while Arrow alone would accept them or fail the block.
_AWKWARD_LINES = [
    b'{"resourceType":"Observation","id":"nan","note":NaN}',  # NaN in an element the Struct skips
    b'{"resourceType":"Observation","id":"inf","note":[-Inf]}',
    json.dumps(_observation(1, id="bigint", valueInteger=2**40)).encode(),
    json.dumps(_observation(1, id="nullitem", category=[None])).encode(),
    json.dumps(_observation(1, id="numstr", status=5)).encode(),
    json.dumps(_observation(1, id="inf")).replace("121.5", "1e400").encode(),
    b"",  # a blank line
    b'{"resourceType":"Observation","id":"a"} {"resourceType":"Observation","id":"b"}',
    b'{"resourceType":"Patient","id":"in-the-wrong-file"}',
    b'{"resourceType":"Observation"}',  # no id
    b'{"resourceType":"Observation","id":"o1","status":"a","status":"b"}',  # a duplicate key
    b'{"resourceType":"Observation","id":"cut","status":"fin',
    b'{"exportId":"e","eventId":"x"}',
    b"[1, 2]",
]


def test_fast_path_equals_the_exact_path_on_awkward_ndjson(tmp_path, monkeypatch):
    lines = [json.dumps(_observation(i)).encode() for i in range(3000)]
    for n, awkward in enumerate(_AWKWARD_LINES):
        lines.insert(97 + n * 211, awkward)
    (tmp_path / "Observation.ndjson").write_bytes(
        b"\xef\xbb\xbf" + b"\n".join(lines)
    )  # BOM, no final newline
    (tmp_path / "Clean.ndjson").write_bytes(b"\n".join(lines[:50]) + b"\n")
    fast = reader.read_fhir([tmp_path])
    _exact(monkeypatch)
    exact = reader.read_fhir([tmp_path])

    _assert_same(fast, exact)
    # 3,000 good lines (Clean.ndjson repeats 50 of them; a line with a duplicate key repeats o1)
    assert exact.resources["Observation"].height == 3000 and exact.quarantine.height == 10
    assert set(exact.quarantine["reason_code"]) == {
        "malformed_json",
        "invalid_element",
        "missing_id",
        "not_a_resource",
    }


def test_fast_path_screens_non_json_numbers_not_words_that_look_like_them():
    text = b'{"resourceType":"Immunization","id":"i","vaccineCode":{"text":"Influenza NaNa"}}'
    assert columnar.parse_block(text, "Immunization", 1)["vaccineCode"].struct.field("text").to_list() == [
        "Influenza NaNa"
    ]
    for token in (b"NaN", b"-Inf", b" Infinity"):
        with pytest.raises(columnar.Unsound, match="NaN or Inf"):
            columnar.parse_block(
                b'{"resourceType":"Immunization","id":"i","x":[1,' + token + b"]}", "Immunization", 1
            )


def test_fast_path_equals_the_exact_path_on_bundles(sources, shared, tmp_path, monkeypatch):
    entries = [
        {"fullUrl": f"urn:uuid:u{i}", "resource": _observation(i), "request": {"method": "POST"}}
        for i in range(400)
    ]
    entries[5]["resource"].pop("id")  # named by its fullUrl
    entries[6]["request"] = {"method": "GET", "url": "Observation?code=x"}
    entries[7] = {"fullUrl": "urn:uuid:none"}  # no resource
    entries[8]["resource"] = None
    entries[10]["resource"] = {"status": "final", **entries[10]["resource"]}  # resourceType not first
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    (tmp_path / "pretty.json").write_text(json.dumps(bundle, indent=2))
    entries[9]["resource"]["category"] = [None]  # the exact path quarantines this entry
    (tmp_path / "awkward.json").write_text(json.dumps(bundle))
    entries[9]["resource"]["category"] = []
    entries[11] = {"request": {"method": "DELETE", "url": "Observation/o11"}}
    (tmp_path / "delete.json").write_text(json.dumps(bundle))
    paths = [sources / "fhir", shared / "samples/fhir", tmp_path]
    fast = reader.read_fhir(paths)
    _exact(monkeypatch)
    exact = reader.read_fhir(paths)

    _assert_same(fast, exact)
    assert {"fhir|Observation/u5", "fhir|Observation/o10"} <= set(
        exact.resources["Observation"]["_record_key"]
    )
    assert "fhir|Observation/o11" in exact.deletions["_record_key"].to_list()
    assert exact.quarantine.filter(pl.col("record_id") == "o9")["reason_code"].to_list() == [
        "invalid_element"
    ]


def test_a_bad_line_alone_goes_the_exact_way(tmp_path, monkeypatch):
    lines = [json.dumps(_observation(i)).encode() for i in range(2000)]
    lines[1500] = lines[1500][:40]  # cut mid-record
    (tmp_path / "Observation.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    exact_lines = []
    read_record = reader._Staging.read_record

    def counted(self, raw, file, position, *rest):
        exact_lines.append(position)
        return read_record(self, raw, file, position, *rest)

    monkeypatch.setattr(reader._Staging, "read_record", counted)
    staged = reader.read_fhir([tmp_path])

    assert exact_lines == [1501]
    assert staged.quarantine.select("position", "reason_code").rows() == [(1501, "malformed_json")]
    assert staged.resources["Observation"]["_position"].to_list() == [p for p in range(1, 2001) if p != 1501]


def test_batches_read_the_records_others_point_at_first(sources):
    """A Bulk export lists Observation.ndjson before Patient.ndjson; batched, its Patients and
    Encounters come first, so the loader holds back few rows for a later batch."""
    bulk = sources / "fhir" / "bulk"
    names = [p.name for p in reader.discover([bulk])]
    assert names.index("Observation.ndjson") < names.index("Patient.ndjson")
    first = next(reader.iter_staged([bulk], max_records=10))
    assert "Patient" in first.resources and "Observation" not in first.resources
    batches = list(reader.iter_staged([bulk], max_records=10))
    kinds = [kind for staged in batches for kind in staged.resources]
    assert kinds.index("Encounter") < kinds.index("Observation") < kinds.index("Procedure")
    read = sum(frame.height for staged in batches for frame in staged.resources.values())
    assert read == sum(frame.height for frame in reader.read_fhir([bulk]).resources.values())


def test_a_batch_lets_its_staged_frames_go_once_mapped(sources, vocab, monkeypatch):
    """While the loader holds a mapped batch, the staged frames it came from are already freed."""
    import gc
    import weakref

    import pipelines.sources.fhir as fhir

    staged_refs = []

    def watched(*args, **kwargs):
        for staged in reader.iter_staged(*args, **kwargs):
            staged_refs.append(weakref.ref(staged))
            held = [staged]
            del staged
            yield held.pop()

    monkeypatch.setattr(fhir, "iter_staged", watched)
    batches = fhir.iter_fhir_batches([sources / "fhir"], vocab, max_resources=50)
    first = next(batches)
    gc.collect()
    assert first.tables and staged_refs[0]() is None


# --- the lean schema: elements no block has held yet are parsed as nulls, with the same result ------


def test_a_block_parsed_against_what_earlier_blocks_held_equals_the_full_parse():
    presence = columnar.Presence()
    plain = b"\n".join(json.dumps(_observation(i)).encode() for i in range(50))
    columnar.parse_block(plain, "Observation", 50, presence=presence)  # learns: no valueString, no performer
    rare = [_observation(i) for i in range(50, 100)]
    rare[30]["valueString"] = "seen once"
    rare[31]["performer"] = [{"reference": "Practitioner/p1", "identifier": {"value": "x"}}]
    later = b"\n".join(json.dumps(record).encode() for record in rare)

    lean = columnar.parse_block(later, "Observation", 50, presence=presence)
    full = columnar.parse_block(later, "Observation", 50)

    assert lean.equals(full) and lean.schema == full.schema
    assert lean["valueString"].to_list()[29:32] == [None, "seen once", None]
    performer = lean["performer"].list.first().struct.field("identifier").struct.field("value")
    assert performer.to_list()[31] == "x"
    # the next block that lacks them again is parsed lean (their columns typed null) and cast back
    again = columnar.parse_block(plain, "Observation", 50, presence=presence)
    assert again.equals(columnar.parse_block(plain, "Observation", 50))
    assert again.schema == full.schema


def test_a_lean_parse_refuses_a_block_as_the_full_parse_does():
    presence = columnar.Presence()
    lines = [json.dumps(_observation(i)).encode() for i in range(20)]
    columnar.parse_block(b"\n".join(lines), "Observation", 20, presence=presence)
    lines[12] = json.dumps(_observation(12, valueString=7)).encode()  # a number where a string belongs
    with pytest.raises(columnar.Unsound) as lean:
        columnar.parse_block(b"\n".join(lines), "Observation", 20, presence=presence)
    with pytest.raises(columnar.Unsound) as full:
        columnar.parse_block(b"\n".join(lines), "Observation", 20)
    assert lean.value.row == full.value.row == 12 and str(lean.value) == str(full.value)


def test_fast_path_equals_the_exact_path_when_an_element_first_appears_in_a_later_block(
    tmp_path, monkeypatch
):
    records = [_observation(i) for i in range(3000)]
    for i in (1800, 2500):
        records[i]["valueCodeableConcept"] = {"coding": [{"system": "http://snomed.info/sct", "code": "x"}]}
        records[i]["effectivePeriod"] = {"start": "2024-01-01"}
    (tmp_path / "Observation.ndjson").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))
    monkeypatch.setattr(reader, "_BLOCK_BYTES", 64 << 10)  # about 200 lines a block
    fast = reader.read_fhir([tmp_path])
    _exact(monkeypatch)
    exact = reader.read_fhir([tmp_path])

    _assert_same(fast, exact)
    concepts = fast.resources["Observation"]["valueCodeableConcept"].drop_nulls()
    assert concepts.struct.field("coding").list.first().struct.field("code").to_list() == ["x", "x"]


def test_a_bundle_entry_is_grouped_by_its_request_and_checked_against_its_resource(tmp_path, monkeypatch):
    entries = [
        {
            "fullUrl": f"urn:uuid:u{i}",
            "resource": _observation(i),
            "request": {"method": "POST", "url": "Observation"},
        }
        for i in range(300)
    ]
    entries[1]["request"] = {"method": "PUT", "url": "Observation/o1"}
    entries[2]["request"] = {"method": "PUT", "url": "Observation?identifier=x"}  # conditional
    entries[3].pop("request")  # none: the type is read from the resource
    entries[4]["request"] = {"method": "POST", "url": "NotAType"}
    entries[5]["resource"] = {"resourceType": "Patient", "id": "p5"}
    entries[5]["request"] = {"method": "PUT", "url": "Patient/p5"}
    (tmp_path / "grouped.json").write_text(
        json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    )
    entries[6]["request"] = {"method": "POST", "url": "Patient"}  # names another type than its resource
    (tmp_path / "mislabelled.json").write_text(
        json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    )
    exact_files = []
    read_document = reader._Staging.read_document

    def counted(self, data, file):
        exact_files.append(Path(file).name)
        return read_document(self, data, file)

    monkeypatch.setattr(reader._Staging, "read_document", counted)
    fast = reader.read_fhir([tmp_path])
    assert exact_files == ["mislabelled.json"]  # the other file went the fast way
    _exact(monkeypatch)
    exact = reader.read_fhir([tmp_path])

    _assert_same(fast, exact)
    assert fast.resources["Patient"]["_record_key"].to_list() == ["fhir|Patient/p5"]
    assert fast.resources["Observation"].height == 299 and fast.quarantine.height == 0


def test_a_first_large_block_is_learnt_from_its_first_lines_and_still_read_whole():
    records = [_observation(i) for i in range(4000)]
    records[3500]["valueString"] = "after the first lines"
    data = b"\n".join(json.dumps(record).encode() for record in records)
    assert len(data) > 2 * columnar._FIRST_LINES
    presence = columnar.Presence()

    lean = columnar.parse_block(data, "Observation", 4000, presence=presence)

    assert lean.equals(columnar.parse_block(data, "Observation", 4000))
    assert lean["valueString"].drop_nulls().to_list() == ["after the first lines"]
    assert lean["id"].to_list() == [f"o{i}" for i in range(4000)]
