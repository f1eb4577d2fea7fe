"""Compositions of a structure already seen (shapes.py): mapped as the general walk maps them, and
their bad values quarantined with the same reason and path."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from _openehr_compositions import (
    BLOOD_PRESSURE,
    blood_pressure,
    case_identification,
    coded,
    composition,
    element,
    evaluation,
)
from polars.testing import assert_frame_equal

from pipelines.mapping.batch import MappedBatch
from pipelines.sources.openehr import collect, map_openehr, mapper
from pipelines.synthetic import generate
from pipelines.vocab import load_vocabulary

EHR = "5d2f8a51-7d0a-4a7e-9a36-2f1b4c1e8e01"
EVENT = f"/content[{BLOOD_PRESSURE}]#0/data[at0001]/events[at0006]"


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def _write(folder: Path, name: str, document: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(document), encoding="utf-8")


def _general_walk_only(monkeypatch) -> None:
    """Every composition walked the general way (flatten.walk_composition), none by its shape."""
    monkeypatch.setattr(collect, "read_shape", lambda composition, zone: None)


def _assert_same(ours: MappedBatch, general: MappedBatch) -> None:
    assert ours.tables.keys() == general.tables.keys()
    for name in general.tables:
        assert_frame_equal(ours.tables[name].sort("_key"), general.tables[name].sort("_key"))
    assert_frame_equal(ours.quarantine.sort(pl.all()), general.quarantine.sort(pl.all()))
    assert (ours.inputs, ours.mapped, ours.filtered) == (general.inputs, general.mapped, general.filtered)


def _learned(monkeypatch) -> list[int]:
    """How many compositions each Collector read by a template of its structure (appended when done)."""
    counts: list[int] = []
    made = mapper._collector

    def counting(mapping_dirs):
        collector = made(mapping_dirs)
        walk = collector.walk
        counted = [0]

        def walk_counting(composition, **where):
            shape = collect.read_shape(composition, where["zone"])
            counted[0] += shape is not None and collector.templates.get(shape.key) is not None
            return walk(composition, **where)

        collector.walk = walk_counting
        counts.append(counted)
        return collector

    monkeypatch.setattr(mapper, "_collector", counting)
    return counts


def test_generated_compositions_map_by_their_structure_as_the_general_walk_maps_them(
    tmp_path, vocab, monkeypatch
):
    generate(tmp_path, 40, seed=11)
    sources = [tmp_path / "openehr"]
    counts = _learned(monkeypatch)
    ours = map_openehr(sources, vocab)
    assert counts[0][0] > 80  # most of the ~110 compositions: their structure was seen before
    assert ours.tables["measurement"].height > 100 and ours.tables["visit_occurrence"].height > 20
    _general_walk_only(monkeypatch)
    _assert_same(ours, map_openehr(sources, vocab))


def test_compositions_of_one_structure_keep_their_own_values_times_and_cases(tmp_path, vocab, monkeypatch):
    """Same structure, other values; a structure of its own where an element has no value, or where
    the event count, the value type or a case identifier differs."""
    folder = tmp_path / EHR
    for number in range(4):
        bp = blood_pressure((f"2024-03-0{number + 1}T08:00:00Z", 120.0 + number, 80.0 - number))
        _write(
            folder,
            f"bp{number}.json",
            composition([bp], uid=f"bp{number}::cdr::1", start=f"2024-03-0{number + 1}T07:00:00Z"),
        )
    two_events = blood_pressure(("2024-04-01T08:00:00Z", 130.0, 85.0), ("2024-04-01T09:00:00Z", 125.0, 82.0))
    _write(folder, "two.json", composition([two_events], uid="two::cdr::1", start="2024-04-01T07:00:00Z"))
    flavoured = blood_pressure(("2024-04-02T08:00:00Z", 131.0, 86.0))
    flavoured["data"]["events"][0]["data"]["items"][1] = element("at0005", None, null_flavour="253")
    _write(folder, "flavour.json", composition([flavoured], uid="fl::cdr::1", start="2024-04-02T07:00:00Z"))
    for number in range(3):
        diagnosis = evaluation(
            "openEHR-EHR-EVALUATION.problem_diagnosis.v1",
            [element("at0002", coded("dx", ("49601007", "38341003", "44054006")[number], "SNOMED-CT"))],
        )
        case = [case_identification(f"case-{number % 2}")]
        document = composition(
            [diagnosis],
            uid=f"dx{number}::cdr::1",
            start=f"2024-05-0{number + 1}T09:00:00Z",
            other_context=case,
        )
        _write(folder, f"dx{number}.json", document)
    counts = _learned(monkeypatch)
    ours = map_openehr([tmp_path], vocab)
    assert counts[0][0] == 3 + 2  # the 2nd to 4th blood pressure, the 2nd and 3rd diagnosis

    measurements = ours.tables["measurement"].sort("measurement_datetime", "value_as_number")
    assert measurements.height == 4 * 2 + 2 * 2 + 1
    assert measurements["value_as_number"].to_list()[:4] == [80.0, 120.0, 79.0, 121.0]
    assert str(measurements["measurement_datetime"][0]) == "2024-03-01 08:00:00"
    visits = ours.tables["visit_occurrence"]
    assert sorted(visits["visit_source_value"].drop_nulls().to_list())[:2] == ["case-0", "case-1"]
    _general_walk_only(monkeypatch)
    _assert_same(ours, map_openehr([tmp_path], vocab))


def test_a_bad_value_in_a_composition_of_a_known_structure_is_quarantined_with_its_path(tmp_path, vocab):
    folder = tmp_path / EHR
    for number in range(2):
        bp = blood_pressure((f"2024-03-0{number + 1}T08:00:00Z", 120.0, 80.0))
        _write(folder, f"a{number}.json", composition([bp], uid=f"good{number}::cdr::1"))
    bad_time = composition([blood_pressure(("2024-03-05T08:00:00Z", 120.0, 80.0))], uid="time::cdr::1")
    bad_time["content"][0]["data"]["events"][0]["time"]["value"] = "the fifth of March"
    _write(folder, "b-time.json", bad_time)
    bad_number = composition([blood_pressure(("2024-03-06T08:00:00Z", 120.0, 80.0))], uid="number::cdr::1")
    bad_number["content"][0]["data"]["events"][0]["data"]["items"][1]["value"]["magnitude"] = "eighty"
    _write(folder, "c-number.json", bad_number)
    unknown = composition([blood_pressure(("2024-03-07T08:00:00Z", 120.0, 80.0))], uid="type::cdr::1")
    unknown["content"][0]["data"]["events"][0]["data"]["_type"] = "ITEM_SOMETHING"
    _write(folder, "d-type.json", unknown)

    batch = map_openehr([tmp_path], vocab)

    quarantine = batch.quarantine.filter(pl.col("record_type") == "COMPOSITION")
    reasons = dict(quarantine.select("record_id", "reason").iter_rows())
    assert reasons == {
        "time": f"a required time is not an ISO 8601 date-time at {EVENT}#0/time",
        "number": f"a number was expected at {EVENT}#0/data[at0003]/items[at0005]#1",
        "type": f"unknown RM type 'ITEM_SOMETHING' at {EVENT}#0/data[at0003]",
    }
    assert quarantine["reason_code"].sort().to_list() == ["bad_time", "malformed", "unknown_rm_type"]
    assert batch.tables["measurement"].height == 2 * 2
    assert batch.inputs["COMPOSITION"] == 5


def test_a_name_or_width_not_an_object_in_a_known_structure_is_quarantined_as_the_general_walk_does(
    tmp_path, vocab
):
    """shapes.py does not read names and widths; it must still leave such a composition to the
    general walk, which quarantines it, rather than map it as if the attribute were fine."""
    folder = tmp_path / EHR
    readings = [blood_pressure(("2024-03-01T08:00:00Z", 120.0, 80.0))]
    _write(folder, "a-good.json", composition(readings, uid="good::cdr::1"))
    bad_name = composition(readings, uid="name::cdr::1")
    bad_name["content"][0]["data"]["events"][0]["data"]["items"][0]["name"] = "Systolic"
    _write(folder, "b-name.json", bad_name)
    bad_width = composition(readings, uid="width::cdr::1")
    bad_width["content"][0]["data"]["events"][0]["width"] = "PT1M"
    _write(folder, "c-width.json", bad_width)

    batch = map_openehr([tmp_path], vocab)

    quarantine = batch.quarantine.filter(pl.col("record_type") == "COMPOSITION")
    assert dict(quarantine.select("record_id", "reason").iter_rows()) == {
        "name": f"expected an object at {EVENT}#0/data[at0003]/items[at0004]#0/name",
        "width": f"expected an object at {EVENT}#0/width",
    }
    assert batch.tables["measurement"].height == 2  # the good composition's two readings
