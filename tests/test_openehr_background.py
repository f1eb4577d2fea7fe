"""openEHR mapped in a second process while FHIR maps in the run's own: the same batch as inline."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.job import pipeline
from pipelines.job.pipeline import RunOptions, map_openehr_in_background
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


def test_background_mapping_gives_the_inline_batch(sources, monkeypatch):
    monkeypatch.setattr(pipeline, "_BACKGROUND_OPENEHR_BYTES", 0)  # these sources are small
    options = RunOptions(fhir=[sources / "fhir"], openehr=[sources / "openehr"])
    future = map_openehr_in_background(options)
    assert future is not None
    background = future.result(timeout=300)
    inline = map_openehr([sources / "openehr"], load_vocabulary())

    manifest = json.loads((sources / "manifest.json").read_text())
    assert background.tables["person"].height == manifest["openehr_aql"]["ehrs"] == 3
    assert background.inputs == inline.inputs
    assert background.tables.keys() == inline.tables.keys()
    for name, frame in inline.tables.items():
        assert _sorted(background.tables[name]).equals(_sorted(frame)), name
    assert _sorted(background.quarantine).equals(_sorted(inline.quarantine))
    assert background.quarantine["reason_code"].to_list() == ["unknown_rm_type"]


def test_small_or_single_source_runs_map_inline(sources):
    assert (
        map_openehr_in_background(RunOptions(fhir=[sources / "fhir"], openehr=[sources / "openehr"])) is None
    )
    assert map_openehr_in_background(RunOptions(openehr=[sources / "openehr"])) is None
