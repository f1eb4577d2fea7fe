"""openEHR compositions to a MappedBatch: read, OMOCL, shared concept resolution, domain routing.

Steps: the reader walks each composition and the OMOCL engine picks, for each mapped archetype, the
nodes that give each row (collect.py); then, over the whole batch at once, the codes
then go through ``resolve_concepts``/``resolve_units`` exactly as FHIR codes do; the standard
concept's domain chooses the table. Persons come from the EHRs, visits from hospitalisation entries,
case identifiers or, failing those, from each composition's context (docs/openehr.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl
import yaml

from pipelines.cdm.spec import cdm_schema
from pipelines.errors import PasserelleError
from pipelines.mapping.batch import QUARANTINE_SCHEMA, MappedBatch
from pipelines.mapping.omocl.grammar import load_catalogue
from pipelines.project_files import data_dir
from pipelines.sources.openehr.collect import Collector, Found, MappedComposition
from pipelines.sources.openehr.persons import person_rows
from pipelines.sources.openehr.reader import COMPOSITION, EHR_STATUS, read_compositions
from pipelines.sources.openehr.spill import Spill, bucket, bucket_ranges
from pipelines.sources.openehr.tables import clinical_tables
from pipelines.sources.openehr.visits import visit_rows
from pipelines.vocab import Vocabulary

SOURCE = "openehr"


def default_mapping_dir() -> Path:
    """The project's own OMOCL files (mappings/openehr)."""
    return data_dir("mappings") / "openehr"


@cache
def engine_settings() -> dict[str, dict]:
    folder = default_mapping_dir() / "_engine"
    return {p.stem: yaml.safe_load(p.read_text("utf-8")) for p in folder.glob("*.yaml")}


def map_openehr(
    paths: list[Path],
    vocab: Vocabulary,
    *,
    mapping_dirs: list[Path] | None = None,
    time_zone: str | None = None,
) -> MappedBatch:
    """Map openEHR exports (AQL pages, folders per EHR) with the OMOCL files in ``mapping_dirs``
    (default: the project's own, mappings/openehr). ``time_zone`` is the zone of times written
    without an offset (default $PASSERELLE_TIME_ZONE, else UTC)."""
    collector = _collector(mapping_dirs)
    parts: list[Found] = []

    def keep(sequence: int, row: dict, mapped: MappedComposition) -> None:
        collector(sequence, row, mapped)
        if len(collector) >= _FLUSH_COMPOSITIONS:  # frames hold the rows in a fraction of the dicts' memory
            parts.append(collector.found())

    scan = read_compositions(paths, keep, time_zone=time_zone, walk=collector.walk)
    found = Found.concat([*parts, collector.found()])
    found = found.where(pl.col("sequence").is_in(scan.compositions["sequence"].implode()))
    return _map(_Part(found, scan.ehrs, scan.quarantine, scan.inputs, scan.superseded), vocab)


def iter_openehr_batches(
    paths: list[Path],
    vocab: Vocabulary,
    *,
    mapping_dirs: list[Path] | None = None,
    time_zone: str | None = None,
    max_compositions: int = 50_000,
) -> Iterator[MappedBatch]:
    """Map openEHR exports in batches of about max_compositions compositions so memory stays flat.
    Each batch carries its own accounting; summed over the batches it equals map_openehr's.
    Rows may reference persons/visits of another batch: the loader resolves them through the id map
    at the end of the run.

    A batch holds whole EHRs: a person is built from several compositions of its EHR and a case
    visit spans compositions, so an EHR split across batches would give other persons and visits."""
    if max_compositions < 1:
        raise PasserelleError(f"max_compositions must be at least 1, not {max_compositions}")
    collector = _collector(mapping_dirs)
    with tempfile.TemporaryDirectory(prefix="passerelle-openehr-") as folder:
        spill = Spill(Path(folder), held=max_compositions)

        def keep(sequence: int, row: dict, mapped: MappedComposition) -> None:
            collector(sequence, row, mapped)
            if len(collector) >= min(_FLUSH_COMPOSITIONS, max_compositions):
                spill.write(collector.found())

        scan = read_compositions(paths, keep, time_zone=time_zone, walk=collector.walk)
        spill.write(collector.found())
        kept = pl.col("sequence").is_in(scan.compositions["sequence"].implode())
        ehrs = scan.ehrs.with_columns(bucket())
        others = scan.inputs.get(COMPOSITION, 0) - scan.compositions.height  # quarantined, superseded
        ranges = bucket_ranges(spill.compositions_per_bucket(kept), max_compositions)
        for number, (low, high) in enumerate(ranges):
            found = spill.read(low, high).where(kept)
            inputs = {COMPOSITION: found.compositions.height}
            if number == 0:  # what belongs to no EHR goes with the first batch
                inputs = {**scan.inputs, COMPOSITION: found.compositions.height + others}
            part = _Part(
                found=found,
                ehrs=ehrs.filter(pl.col("bucket").is_between(low, high, closed="left")).drop("bucket"),
                quarantine=scan.quarantine if number == 0 else scan.quarantine.clear(),
                inputs={k: v for k, v in inputs.items() if v or k in scan.inputs},
                superseded=scan.superseded if number == 0 else 0,
            )
            yield _map(part, vocab)


# compositions collected as Python dicts before they become frames (or go to the spill)
_FLUSH_COMPOSITIONS = 10_000


def _collector(mapping_dirs: list[Path] | None) -> Collector:
    catalogue = load_catalogue(list(mapping_dirs) if mapping_dirs else [default_mapping_dir()])
    return Collector(catalogue, engine_settings()["demographics"]["case_identification"])


@dataclass
class _Part:
    """Whole EHRs of a read: what the engine found in their compositions, and the reader's counts."""

    found: Found
    ehrs: pl.DataFrame
    quarantine: pl.DataFrame
    inputs: dict[str, int]
    superseded: int


def _map(part: _Part, vocab: Vocabulary) -> MappedBatch:
    """The MappedBatch of whole EHRs."""
    settings = engine_settings()
    found = part.found
    candidates = (
        found.candidates.drop("sequence")
        .join(found.compositions.drop("ehr_id", "sequence"), on="composition_uid", how="left")
        .join(found.contexts.drop("ehr_id", "sequence"), on="composition_uid", how="left")
    )
    clinical = candidates.filter(~pl.col("omocl_type").is_in(["Person", "Visit"]))
    tables = clinical_tables(clinical, vocab, settings)
    visits, visit_of = visit_rows(candidates, tables, settings)
    for name, frame in tables.items():
        if "visit_occurrence_id" in cdm_schema().table(name).column_names:  # not on death, specimen
            frame = frame.join(visit_of, on="composition_uid", how="left")
        tables[name] = frame.drop("composition_uid")
    persons, person_quarantine = person_rows(candidates, part.ehrs, settings)
    if visits.height:
        tables["visit_occurrence"] = visits
    if persons.height:
        tables["person"] = persons
    tables = {name: frame for name, frame in tables.items() if frame.height}
    return _account(part, tables, person_quarantine, _contributing(candidates))


def _contributing(candidates: pl.DataFrame) -> set[str]:
    """Compositions whose rows went into a visit (ADMIN_ENTRY) or a person (demographics)."""
    facts = pl.any_horizontal(
        pl.col(c).is_not_null() for c in ("birth_year", "birth", "gender_const", "gender_code", "start")
    )
    used = candidates.filter(pl.col("omocl_type").is_in(["Person", "Visit"]) & facts)
    return set(used["composition_uid"].to_list())


def _account(
    part: _Part, tables: dict[str, pl.DataFrame], person_quarantine: pl.DataFrame, contributing: set[str]
) -> MappedBatch:
    """Every composition mapped, filtered or quarantined; EHRs persons or quarantined."""
    produced: set[str] = set()
    for frame in tables.values():
        if "_record_key" in frame.columns:
            produced.update(frame["_record_key"].unique().to_list())
    uids = part.found.compositions["composition_uid"].to_list()
    mapped = sum(1 for uid in uids if f"{SOURCE}|{uid}" in produced or uid in contributing)
    filtered: dict[str, int] = {}
    if len(uids) - mapped:
        filtered["COMPOSITION: no OMOCL mapping matched its entries"] = len(uids) - mapped
    if part.superseded:
        filtered["COMPOSITION: older version of a composition in the same batch"] = part.superseded
    for field, count in part.found.incomplete.group_by("missing_field").len().iter_rows():
        filtered[f"row: required field {field} not found"] = count
    for name, count in (
        part.found.custom.group_by("name", maintain_order=True).agg(pl.col("count").sum()).iter_rows()
    ):
        filtered[f"row: CustomMapping {name or '(unnamed)'} is not run"] = count
    inputs = dict(part.inputs)
    inputs["EHR"] = part.ehrs.height
    persons = tables.get("person")
    mapped_counts = {COMPOSITION: mapped, "EHR": persons.height if persons is not None else 0}
    if part.inputs.get(EHR_STATUS):
        mapped_counts[EHR_STATUS] = part.inputs[EHR_STATUS]
    quarantine = pl.concat([part.quarantine, person_quarantine.cast(QUARANTINE_SCHEMA)], how="vertical")
    return MappedBatch(
        tables=tables, quarantine=quarantine, inputs=inputs, mapped=mapped_counts, filtered=filtered
    )
