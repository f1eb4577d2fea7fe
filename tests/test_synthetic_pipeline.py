"""Generated sources through the real mappers: all records accounted for, the planted ones quarantined."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.sources.fhir import map_fhir
from pipelines.sources.openehr import map_openehr
from pipelines.synthetic import generate
from pipelines.vocab import load_vocabulary


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pipeline")
    report = generate(out, 24, seed=21, bundle_size=5)
    return out, report.manifest


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def _planted(manifest: dict, out: Path, source: str) -> set[tuple[str, int, str]]:
    return {
        (str(out / r["file"]), r.get("entry", r.get("line", r.get("row"))), r["kind"])
        for r in manifest["broken_records"]
        if r["file"].startswith(source)
    }


def test_fhir_mapper_quarantines_exactly_the_planted_records(sources, vocab) -> None:
    out, manifest = sources
    batch = map_fhir([out / "fhir"], vocab)
    quarantined = {
        (row["source_file"], row["position"], row["reason_code"])
        for row in batch.quarantine.iter_rows(named=True)
    }
    assert quarantined == _planted(manifest, out, "fhir/")
    resources = {
        kind: manifest["fhir_bundles"]["resources"].get(kind, 0)
        + manifest["fhir_bulk"]["resources"].get(kind, 0)
        for kind in {*manifest["fhir_bundles"]["resources"], *manifest["fhir_bulk"]["resources"]}
    }
    broken = sum(1 for r in manifest["broken_records"] if r["file"].startswith("fhir/"))
    assert sum(batch.inputs.values()) == sum(resources.values()) + broken
    assert batch.mapped == resources
    patients = manifest["fhir_bundles"]["patients"] + manifest["fhir_bulk"]["patients"]
    assert batch.tables["person"].height == patients
    assert batch.tables["visit_occurrence"].height == resources["Encounter"]
    assert batch.tables.get("death") is None or batch.tables["death"].height == manifest["deaths"]
    assert batch.deletions.height == sum(manifest["fhir_bulk"]["deleted"].values())


@pytest.mark.parametrize("mappings", ["project", "community"])
def test_openehr_compositions_map_and_only_the_planted_one_is_quarantined(
    sources, vocab, mappings: str, request
) -> None:
    """With the project's OMOCL files (mappings/openehr) and with the openEHR community's own ones."""
    out, manifest = sources
    aql = manifest["openehr_aql"]
    mapping_dirs = None
    if mappings == "community":
        mapping_dirs = [request.getfixturevalue("shared") / "reference/omocl"]
    batch = map_openehr([out / "openehr"], vocab, mapping_dirs=mapping_dirs)
    quarantined = {
        (row["source_file"], row["position"], row["reason_code"])
        for row in batch.quarantine.iter_rows(named=True)
    }
    assert quarantined == _planted(manifest, out, "openehr/")
    assert batch.tables["person"].height == aql["ehrs"]
    assert batch.tables["visit_occurrence"].height == aql["compositions"]["encounter"]
    assert (
        batch.tables["condition_occurrence"].height
        == aql["entries"]["openEHR-EHR-EVALUATION.problem_diagnosis.v1"]
    )
    vitals = sum(
        aql["entries"][archetype]
        for archetype in (
            "openEHR-EHR-OBSERVATION.pulse.v2",
            "openEHR-EHR-OBSERVATION.body_temperature.v2",
            "openEHR-EHR-OBSERVATION.body_weight.v2",
            "openEHR-EHR-OBSERVATION.height.v2",
        )
    )
    blood_pressures = aql["entries"]["openEHR-EHR-OBSERVATION.blood_pressure.v2"]
    # the community pulse file names concept 4224504 (SNOMED 8499008 "Pulse"), of the Observation domain:
    # domain routing writes those rows to observation (the project's file uses LOINC 8867-4, a Measurement)
    pulses_observed = aql["entries"]["openEHR-EHR-OBSERVATION.pulse.v2"] if mappings == "community" else 0
    observation = batch.tables.get("observation")
    observed = 0 if observation is None else (observation["observation_concept_id"] == 4224504).sum()
    assert observed == pulses_observed
    # systolic and diastolic rows
    assert batch.tables["measurement"].height == vitals - pulses_observed + 2 * blood_pressures
    assert set(batch.tables["person"]["gender_concept_id"]) <= {8507, 8532}


def test_manifest_is_the_file_the_benchmark_reads(sources) -> None:
    out, manifest = sources
    assert json.loads((out / "manifest.json").read_text()) == manifest
