"""Bad FHIR input: each bad record is quarantined with file, position and reason; the rest loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.sources.fhir import map_fhir
from pipelines.vocab import Vocabulary, load_vocabulary


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return load_vocabulary()


def _observation(i: int, **extra) -> dict:
    return {
        "resourceType": "Observation",
        "id": f"o{i}",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2022-03-04T10:11:12+01:00",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "valueQuantity": {"value": 120 + i % 10, "unit": "mmHg", "system": "http://unitsofmeasure.org"},
        **extra,
    }


def _quarantined(batch) -> list[tuple]:
    return batch.quarantine.select(
        "source_file", "position", "record_type", "record_id", "reason_code"
    ).rows()


def _balanced(batch) -> bool:
    return sum(batch.inputs.values()) == (
        sum(batch.mapped.values()) + sum(batch.filtered.values()) + batch.quarantine.height
    )


def test_malformed_json_file_is_quarantined_and_the_other_files_load(
    tmp_path: Path, vocab: Vocabulary
) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"resourceType": "Observation", "id": "x", "status": ')
    (tmp_path / "good.json").write_text(json.dumps(_observation(1)))
    batch = map_fhir([tmp_path], vocab)
    assert _quarantined(batch) == [(str(bad), 0, None, None, "malformed_json")]
    assert "Not valid JSON" in batch.quarantine["reason"][0]
    assert batch.tables["measurement"]["value_as_number"].to_list() == [121.0]
    assert _balanced(batch)


def test_truncated_line_in_the_middle_of_a_big_ndjson_file(tmp_path: Path, vocab: Vocabulary) -> None:
    lines = [json.dumps(_observation(i)) for i in range(5000)]
    lines[2500] = lines[2500][:57]  # cut mid-record, as an interrupted export would
    path = tmp_path / "Observation.000.ndjson"
    path.write_text("\n".join(lines) + "\n")
    batch = map_fhir([path], vocab)
    assert _quarantined(batch) == [(str(path), 2501, None, None, "malformed_json")]
    assert batch.tables["measurement"].height == 4999
    assert batch.mapped == {"Observation": 4999}
    assert _balanced(batch)


def test_unknown_resource_type_and_missing_resource_type(tmp_path: Path, vocab: Vocabulary) -> None:
    path = tmp_path / "mixed.ndjson"
    records = [{"resourceType": "Observaton", "id": "typo"}, {"id": "no-type"}, _observation(3)]
    path.write_text("\n".join(map(json.dumps, records)))
    batch = map_fhir([path], vocab)
    assert _quarantined(batch) == [
        (str(path), 1, "Observaton", "typo", "unknown_resource_type"),
        (str(path), 2, None, "no-type", "missing_resource_type"),
    ]
    assert "'Observaton' is not a FHIR R4 resource type" in batch.quarantine["reason"][0]
    assert batch.tables["measurement"].height == 1


def test_missing_subject_is_quarantined(tmp_path: Path, vocab: Vocabulary) -> None:
    record = _observation(1)
    del record["subject"]
    path = tmp_path / "Observation.ndjson"
    path.write_text(json.dumps(record) + "\n" + json.dumps(_observation(2)) + "\n")
    batch = map_fhir([path], vocab)
    assert _quarantined(batch) == [(str(path), 1, "Observation", "o1", "missing_subject")]
    assert batch.tables["measurement"]["_record_id"].to_list() == ["o2"]
    assert _balanced(batch)


def test_wrong_json_types_name_the_element(tmp_path: Path, vocab: Vocabulary) -> None:
    record = _observation(1, valueQuantity={"value": "one hundred", "unit": "mmHg"})
    path = tmp_path / "Observation.ndjson"
    path.write_text(json.dumps(record) + "\n" + json.dumps(_observation(2)) + "\n")
    batch = map_fhir([path], vocab)
    assert _quarantined(batch) == [(str(path), 1, "Observation", "o1", "invalid_element")]
    reason = batch.quarantine["reason"][0]
    assert "$.valueQuantity.value" in reason and "one hundred" not in reason  # never the clinical value
    assert batch.tables["measurement"].height == 1


def test_impossible_dates_are_quarantined_not_guessed(tmp_path: Path, vocab: Vocabulary) -> None:
    path = tmp_path / "Observation.ndjson"
    records = [
        _observation(1, effectiveDateTime="2021-02-30"),
        _observation(2, effectiveDateTime="2021-04-05T25:61:00Z"),
        _observation(3, effectiveDateTime="2021-04-05T23:30:00-02:00"),
    ]
    path.write_text("\n".join(map(json.dumps, records)))
    batch = map_fhir([path], vocab)
    assert [r[1:] for r in _quarantined(batch)] == [
        (1, "Observation", "o1", "impossible_date"),
        (2, "Observation", "o2", "impossible_date"),
    ]
    row = batch.tables["measurement"].row(0, named=True)
    # The offset is applied: 23:30 at -02:00 is 01:30 UTC the next day.
    assert str(row["measurement_datetime"]) == "2021-04-06 01:30:00"
    assert str(row["measurement_date"]) == "2021-04-06"


def test_bundle_with_one_bad_entry_keeps_the_others(tmp_path: Path, vocab: Vocabulary) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": _observation(1)},
            {"resource": _observation(2, status=7)},
            {"resource": _observation(3)},
        ],
    }
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(bundle))
    batch = map_fhir([path], vocab)
    assert _quarantined(batch) == [(str(path), 1, "Observation", "o2", "invalid_element")]
    assert sorted(batch.tables["measurement"]["_record_id"].to_list()) == ["o1", "o3"]
    assert _balanced(batch)


def test_json_that_is_not_an_object_and_a_byte_order_mark(tmp_path: Path, vocab: Vocabulary) -> None:
    (tmp_path / "array.json").write_text("[1, 2, 3]")
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(_observation(1)).encode())
    batch = map_fhir([tmp_path], vocab)
    assert _quarantined(batch) == [(str(tmp_path / "array.json"), 0, None, None, "not_a_resource")]
    assert batch.tables["measurement"]["_record_id"].to_list() == ["o1"]


def test_truncated_gzip_keeps_what_was_read_and_quarantines_the_rest(
    tmp_path: Path, vocab: Vocabulary
) -> None:
    import gzip

    lines = "\n".join(json.dumps(_observation(i)) for i in range(2000)).encode()
    packed = gzip.compress(lines)
    path = tmp_path / "Observation.000.ndjson.gz"
    path.write_bytes(packed[: len(packed) // 2])
    batch = map_fhir([path], vocab)
    (row,) = _quarantined(batch)
    assert row[0] == str(path) and row[4] == "unreadable_file"
    loaded = batch.tables["measurement"].height
    assert 0 < loaded < 2000
    assert row[1] == loaded + 1  # the first line that could not be read
    assert _balanced(batch)


def test_subject_that_is_not_a_patient(shared: Path, tmp_path: Path, vocab: Vocabulary) -> None:
    path = tmp_path / "Observation.ndjson"
    path.write_text(json.dumps(_observation(1, subject={"reference": "Group/g1"})) + "\n")
    apgar = shared / "samples/fhir/hl7_r4_examples/Observation-1minute-apgar-score.json"  # subject '#newborn'
    batch = map_fhir([path, apgar], vocab)
    assert _quarantined(batch) == [
        (str(path), 1, "Observation", "o1", "subject_not_a_patient"),
        (str(apgar), 0, "Observation", "1minute-apgar-score", "contained_subject"),
    ]


def test_integer_out_of_fhir_range_is_quarantined(tmp_path: Path, vocab: Vocabulary) -> None:
    path = tmp_path / "Observation.ndjson"
    big = _observation(1, valueInteger=2**40)
    del big["valueQuantity"]
    path.write_text(json.dumps(big) + "\n" + json.dumps(_observation(2)) + "\n")
    batch = map_fhir([path], vocab)
    assert _quarantined(batch) == [(str(path), 1, "Observation", "o1", "invalid_element")]
    assert str(2**40) not in batch.quarantine["reason"][0]
    assert batch.tables["measurement"]["_record_id"].to_list() == ["o2"]
