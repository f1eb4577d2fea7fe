"""openEHR mapped in a second process, batch after batch, while FHIR maps in the run's own: the same
rows as inline, and its failures reach the run."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.errors import PasserelleError
from pipelines.job import pipeline
from pipelines.job.pipeline import OpenEhrWorker, RunOptions
from pipelines.mapping.batch import MappedBatch
from pipelines.sources.openehr import map_openehr
from pipelines.synthetic import generate
from pipelines.vocab import load_vocabulary


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sources")
    generate(folder, 12, seed=3)
    return folder


def _sorted(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(frame.columns, nulls_last=True)


def test_background_batches_give_the_inline_batch(sources, monkeypatch):
    monkeypatch.setattr(pipeline, "_BACKGROUND_OPENEHR_BYTES", 0)  # these sources are small
    # 5 FHIR resources a batch: one composition per openEHR batch, so each EHR comes in its own batch
    options = RunOptions(fhir=[sources / "fhir"], openehr=[sources / "openehr"], batch_resources=5)
    worker = OpenEhrWorker.start(options)
    assert worker is not None
    try:
        batches = list(worker.rest())
    finally:
        worker.stop()
    inline = map_openehr([sources / "openehr"], load_vocabulary())

    manifest = json.loads((sources / "manifest.json").read_text())
    assert manifest["openehr_aql"]["ehrs"] == 3
    assert len(batches) >= 3  # at least one per EHR (a batch holds whole EHRs)
    background = MappedBatch()
    for batch in batches:
        background = background.merge(batch)
    assert background.inputs == inline.inputs
    assert background.tables.keys() == inline.tables.keys()
    for name, frame in inline.tables.items():
        assert _sorted(background.tables[name]).equals(_sorted(frame)), name
    assert _sorted(background.quarantine).equals(_sorted(inline.quarantine))
    assert background.quarantine["reason_code"].to_list() == ["unknown_rm_type"]


def test_an_error_in_the_background_reaches_the_run(sources, monkeypatch, tmp_path):
    monkeypatch.setattr(pipeline, "_BACKGROUND_OPENEHR_BYTES", 0)
    (tmp_path / "broken.yaml").write_text("archetype_id: [not, a, mapping\n")
    options = RunOptions(fhir=[sources / "fhir"], openehr=[sources / "openehr"], omocl=[tmp_path])
    worker = OpenEhrWorker.start(options)
    try:
        with pytest.raises(PasserelleError, match=r"broken\.yaml"):
            list(worker.rest())
    finally:
        worker.stop()


def test_small_or_single_source_runs_map_inline(sources):
    assert OpenEhrWorker.start(RunOptions(fhir=[sources / "fhir"], openehr=[sources / "openehr"])) is None
    assert OpenEhrWorker.start(RunOptions(openehr=[sources / "openehr"])) is None
