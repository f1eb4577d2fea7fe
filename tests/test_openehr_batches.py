"""iter_openehr_batches: batches of whole EHRs whose rows and accounting add up to map_openehr's."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipelines.errors import PasserelleError
from pipelines.mapping.batch import MappedBatch
from pipelines.sources.openehr import iter_openehr_batches, map_openehr
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


def test_a_batch_size_below_one_is_refused(sources, vocab):
    with pytest.raises(PasserelleError, match="max_compositions"):
        next(iter_openehr_batches([sources], vocab, max_compositions=0))
