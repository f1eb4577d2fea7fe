"""The FHIR reader builds frames chunk by chunk (bounded memory): the chunks add up to one read."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipelines.sources.fhir import reader
from pipelines.synthetic import generate


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
