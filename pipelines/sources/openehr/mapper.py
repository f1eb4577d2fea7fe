"""openEHR compositions to a MappedBatch: read, OMOCL, shared concept resolution, domain routing.

Steps, each over the whole batch at once: the reader flattens every composition into one long
frame; the OMOCL engine picks, for each mapped archetype, the nodes that give each row; the codes
then go through ``resolve_concepts``/``resolve_units`` exactly as FHIR codes do; the standard
concept's domain chooses the table. Persons come from the EHRs, visits from hospitalisation entries,
case identifiers or, failing those, from each composition's context (docs/openehr.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path

import polars as pl
import yaml

from pipelines.cdm.spec import cdm_schema
from pipelines.errors import PasserelleError
from pipelines.mapping.batch import QUARANTINE_SCHEMA, MappedBatch
from pipelines.mapping.omocl.engine import apply_catalogue
from pipelines.mapping.omocl.grammar import load_catalogue
from pipelines.project_files import data_dir
from pipelines.sources.openehr.persons import person_rows
from pipelines.sources.openehr.reader import COMPOSITION, EHR_STATUS, OpenEhrExport, read_openehr
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
    catalogue = load_catalogue(list(mapping_dirs) if mapping_dirs else [default_mapping_dir()])
    return _map_export(read_openehr(paths, time_zone=time_zone), catalogue, vocab)


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
    catalogue = load_catalogue(list(mapping_dirs) if mapping_dirs else [default_mapping_dir()])
    export = read_openehr(paths, time_zone=time_zone)
    for part in _split_by_ehr(export, max_compositions):
        yield _map_export(part, catalogue, vocab)


def _split_by_ehr(export: OpenEhrExport, max_compositions: int) -> Iterator[OpenEhrExport]:
    """The export in parts of whole EHRs, about ``max_compositions`` compositions each. The first part
    also carries what belongs to no EHR: the reader's quarantine, files, statuses, superseded versions."""
    per_ehr = export.ehrs.join(
        export.compositions.group_by("ehr_id").len(), on="ehr_id", how="left", maintain_order="left"
    ).with_columns(pl.col("len").fill_null(0))
    groups: list[list[str]] = [[]]
    size = 0
    for ehr_id, count in per_ehr.select("ehr_id", "len").iter_rows():
        if groups[-1] and size + count > max_compositions:
            groups.append([])
            size = 0
        groups[-1].append(ehr_id)
        size += count
    for number, group in enumerate(groups):
        ehr_ids = pl.Series(group, dtype=pl.Utf8).implode()
        compositions = export.compositions.filter(pl.col("ehr_id").is_in(ehr_ids))
        inputs = {COMPOSITION: compositions.height}
        if number == 0:
            others = export.inputs.get(COMPOSITION, 0) - export.compositions.height
            inputs = {**export.inputs, COMPOSITION: compositions.height + others}
        yield OpenEhrExport(
            elements=export.elements.filter(pl.col("ehr_id").is_in(ehr_ids)),
            compositions=compositions,
            ehrs=export.ehrs.filter(pl.col("ehr_id").is_in(ehr_ids)),
            quarantine=export.quarantine if number == 0 else export.quarantine.clear(),
            inputs={k: v for k, v in inputs.items() if v or k in export.inputs},
            superseded=export.superseded if number == 0 else 0,
        )


def _map_export(export: OpenEhrExport, catalogue: dict, vocab: Vocabulary) -> MappedBatch:
    """The MappedBatch of what the reader found (one whole export, or whole EHRs of one)."""
    result = apply_catalogue(export.elements, catalogue)
    settings = engine_settings()
    candidates = result.candidates.join(
        export.compositions.drop("ehr_id"), on="composition_uid", how="left"
    ).join(
        _contexts(export.elements, settings["demographics"]["case_identification"]),
        on="composition_uid",
        how="left",
    )
    clinical = candidates.filter(~pl.col("omocl_type").is_in(["Person", "Visit"]))
    tables = clinical_tables(clinical, vocab, settings)
    visits, visit_of = visit_rows(candidates, tables, settings)
    for name, frame in tables.items():
        if "visit_occurrence_id" in cdm_schema().table(name).column_names:  # not on death, specimen
            frame = frame.join(visit_of, on="composition_uid", how="left")
        tables[name] = frame.drop("composition_uid")
    persons, person_quarantine = person_rows(candidates, export.ehrs, settings)
    if visits.height:
        tables["visit_occurrence"] = visits
    if persons.height:
        tables["person"] = persons
    tables = {name: frame for name, frame in tables.items() if frame.height}
    return _account(export, tables, result, person_quarantine, _contributing(candidates))


def _contexts(elements: pl.DataFrame, case: dict) -> pl.DataFrame:
    """Per composition: setting, context times, and the case identifier when the context has one."""
    contexts = elements.group_by("composition_uid", maintain_order=True).agg(
        pl.col("setting_code").first(),
        pl.col("context_start").first(),
        pl.col("context_end").first(),
        # the span of the record's own times (events, actions), not of dates it reports (onsets, births)
        pl.coalesce("event_time", "entry_time").min().alias("earliest_time"),
        pl.coalesce("event_time", "entry_time").max().alias("latest_time"),
    )
    suffix = f"/items[{case['archetype']}]/items[{case['item']}]"
    cases = (
        elements.filter(pl.col("path").str.starts_with("/context") & pl.col("path").str.ends_with(suffix))
        .group_by("composition_uid")
        .agg(pl.col("value_text").drop_nulls().first().alias("case_id"))
    )
    return contexts.join(cases, on="composition_uid", how="left")


def _contributing(candidates: pl.DataFrame) -> set[str]:
    """Compositions whose rows went into a visit (ADMIN_ENTRY) or a person (demographics)."""
    facts = pl.any_horizontal(
        pl.col(c).is_not_null() for c in ("birth_year", "birth", "gender_const", "gender_code", "start")
    )
    used = candidates.filter(pl.col("omocl_type").is_in(["Person", "Visit"]) & facts)
    return set(used["composition_uid"].to_list())


def _account(
    export: OpenEhrExport, tables: dict[str, pl.DataFrame], result, person_quarantine, contributing: set[str]
) -> MappedBatch:
    """Every composition mapped, filtered or quarantined; EHRs persons or quarantined."""
    produced: set[str] = set()
    for frame in tables.values():
        if "_record_key" in frame.columns:
            produced.update(frame["_record_key"].unique().to_list())
    uids = export.compositions["composition_uid"].to_list()
    mapped = sum(1 for uid in uids if f"{SOURCE}|{uid}" in produced or uid in contributing)
    filtered: dict[str, int] = {}
    if len(uids) - mapped:
        filtered["COMPOSITION: no OMOCL mapping matched its entries"] = len(uids) - mapped
    if export.superseded:
        filtered["COMPOSITION: older version of a composition in the same batch"] = export.superseded
    for field, count in result.incomplete.group_by("missing_field").len().iter_rows():
        filtered[f"row: required field {field} not found"] = count
    for name, count in result.custom_skipped.items():
        filtered[f"row: CustomMapping {name or '(unnamed)'} is not run"] = count
    inputs = dict(export.inputs)
    inputs["EHR"] = export.ehrs.height
    persons = tables.get("person")
    mapped_counts = {COMPOSITION: mapped, "EHR": persons.height if persons is not None else 0}
    if export.inputs.get(EHR_STATUS):
        mapped_counts[EHR_STATUS] = export.inputs[EHR_STATUS]
    quarantine = pl.concat([export.quarantine, person_quarantine.cast(QUARANTINE_SCHEMA)], how="vertical")
    return MappedBatch(
        tables=tables, quarantine=quarantine, inputs=inputs, mapped=mapped_counts, filtered=filtered
    )
