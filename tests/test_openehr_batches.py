"""iter_openehr_batches: batches of whole EHRs whose rows and accounting add up to map_openehr's."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from _openehr_compositions import blood_pressure, case_identification, coded, composition, element, evaluation

from pipelines.errors import PasserelleError
from pipelines.mapping.batch import MappedBatch
from pipelines.sources.openehr import iter_openehr_batches, map_openehr, mapper
from pipelines.synthetic import generate
from pipelines.vocab import load_vocabulary


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    generate(folder, 40, seed=11)
    return folder / "openehr"


@pytest.fixture
def folders(tmp_path) -> Path:
    """Folders per EHR: statuses, a case over two compositions, a composition in two versions (the
    newer read first), an EHR with a status only, a file that is not JSON."""
    ehrs = tmp_path / "ehrs"
    for number in range(6):
        ehr = ehrs / f"0000000{number}-7d0a-4a7e-9a36-2f1b4c1e8e01"
        ehr.mkdir(parents=True)
        (ehr / "ehr_status.json").write_text(json.dumps({"_type": "EHR_STATUS"}))
        if number == 5:
            continue
        case = [case_identification(f"case-{number}")]
        diagnosis = evaluation(
            "openEHR-EHR-EVALUATION.problem_diagnosis.v1",
            [element("at0002", coded("dx", "49601007", "SNOMED-CT"))],
        )
        documents = {
            "a-bp.json": composition(
                [blood_pressure(("2024-03-05T08:00:00Z", 120.0 + number, 80.0))],
                uid=f"bp{number}::cdr::1",
                other_context=case,
            ),
            "b-dx.json": composition(
                [diagnosis], uid=f"dx{number}::cdr::1", start="2024-03-07T09:00:00Z", other_context=case
            ),
            "c-new.json": composition(
                [blood_pressure(("2024-03-09T08:00:00Z", 150.0, 95.0))], uid=f"v{number}::cdr::2"
            ),
            "d-old.json": composition(
                [blood_pressure(("2024-03-08T08:00:00Z", 110.0, 70.0))], uid=f"v{number}::cdr::1"
            ),
        }
        for name, document in documents.items():
            (ehr / name).write_text(json.dumps(document))
    (ehrs / "00000000-7d0a-4a7e-9a36-2f1b4c1e8e01" / "e-garbage.json").write_text("not json")
    return ehrs


def test_batches_written_to_disk_in_many_runs_add_up_to_one_batch(folders, vocab, monkeypatch):
    monkeypatch.setattr(mapper, "_FLUSH_COMPOSITIONS", 2)  # older and newer versions in other runs
    whole = map_openehr([folders], vocab)
    batches = list(iter_openehr_batches([folders], vocab, max_compositions=4))
    assert len(batches) >= 3
    summed = _summed(batches)

    assert (
        summed.tables.keys()
        == whole.tables.keys()
        >= {"measurement", "condition_occurrence", "visit_occurrence"}
    )
    for name, frame in whole.tables.items():
        assert _by_key(summed.tables[name]).equals(_by_key(frame)), name
    assert _sorted(summed.quarantine).equals(_sorted(whole.quarantine))
    assert (summed.inputs, summed.mapped, summed.filtered) == (whole.inputs, whole.mapped, whole.filtered)
    assert whole.inputs == {"COMPOSITION": 20, "EHR_STATUS": 6, "FILE": 1, "EHR": 6}
    assert whole.filtered["COMPOSITION: older version of a composition in the same batch"] == 5
    newer = whole.tables["measurement"].filter(pl.col("_record_id").str.starts_with("v"))
    assert sorted(set(newer["value_as_number"].to_list())) == [95.0, 150.0]
    cases = whole.tables["visit_occurrence"].filter(pl.col("visit_source_value").str.starts_with("case-"))
    assert cases.height == 5  # one visit per case, over its two compositions


def _by_key(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort("_key")


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def _summed(batches: list[MappedBatch]) -> MappedBatch:
    total = MappedBatch()
    for batch in batches:
        total = total.merge(batch)
    return total


def test_small_batches_give_the_rows_and_counts_of_one_batch(sources, vocab):
    whole = map_openehr([sources], vocab)
    batches = list(iter_openehr_batches([sources], vocab, max_compositions=20))
    assert len(batches) >= 3
    summed = _summed(batches)

    assert summed.tables.keys() == whole.tables.keys()
    for name, frame in whole.tables.items():
        assert summed.tables[name].columns == frame.columns, name
        assert _by_key(summed.tables[name]).equals(_by_key(frame)), name
    assert _sorted(summed.quarantine).equals(_sorted(whole.quarantine))
    assert summed.inputs == whole.inputs
    assert summed.mapped == whole.mapped
    assert summed.filtered == whole.filtered
    assert whole.quarantine["reason_code"].to_list() == ["unknown_rm_type"]  # the planted bad composition


def test_an_ehr_is_never_split_across_batches(sources, vocab):
    batches = list(iter_openehr_batches([sources], vocab, max_compositions=20))
    ehrs = []  # the EHRs of each batch: its persons and its EHRs quarantined for want of a birth year
    for batch in batches:
        persons = batch.tables["person"]["_key"].to_list() if "person" in batch.tables else []
        unborn = batch.quarantine.filter(pl.col("record_type") == "EHR")["record_id"].to_list()
        ehrs.append(set(persons) | {f"openehr|ehr/{ehr_id}" for ehr_id in unborn})
        references = pl.concat(
            [frame.select("_ref__person_id") for name, frame in batch.tables.items() if name != "person"]
        )
        assert set(references["_ref__person_id"]) <= ehrs[-1]  # rows only of the batch's own EHRs
    assert sum(len(keys) for keys in ehrs) == len(set().union(*ehrs)) == 10
    for batch, own in zip(batches, ehrs, strict=True):  # at most 20 read compositions, or one EHR
        unread = batch.quarantine.filter(pl.col("record_type") == "COMPOSITION").height
        assert batch.inputs["COMPOSITION"] - unread <= 20 or len(own) == 1


def test_one_batch_when_everything_fits(sources, vocab):
    batches = list(iter_openehr_batches([sources], vocab))
    whole = map_openehr([sources], vocab)
    assert len(batches) == 1
    assert batches[0].inputs == whole.inputs
    assert batches[0].mapped == whole.mapped


def test_one_batch_held_in_memory_over_many_flushes_gives_the_rows_of_one_batch(sources, vocab, monkeypatch):
    monkeypatch.setattr(mapper, "_FLUSH_COMPOSITIONS", 7)  # some 16 flushes, none written to disk
    batches = list(iter_openehr_batches([sources], vocab, max_compositions=10_000))
    whole = map_openehr([sources], vocab)
    assert len(batches) == 1
    assert batches[0].tables.keys() == whole.tables.keys()
    for name, frame in whole.tables.items():
        assert _by_key(batches[0].tables[name]).equals(_by_key(frame)), name
    assert (batches[0].inputs, batches[0].mapped, batches[0].filtered) == (
        whole.inputs,
        whole.mapped,
        whole.filtered,
    )


def test_a_batch_size_below_one_is_refused(sources, vocab):
    with pytest.raises(PasserelleError, match="max_compositions"):
        next(iter_openehr_batches([sources], vocab, max_compositions=0))
