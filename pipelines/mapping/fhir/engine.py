"""The one engine that applies mappings/fhir/*.yaml to staged FHIR frames and yields a MappedBatch.

Everything is a Polars operation on a whole resource type at once: filters are boolean expressions,
paths are struct/list expressions, references and concepts are joins. Per record the outcome is one
of: rows (``mapped``), a rule that filtered it (``filtered``, by reason), or the quarantine (a
missing subject, an impossible date...). A record that passes the filters and gives no row is
counted as filtered with the mapping's ``no_rows_reason`` so that the books always balance.

Speed (docs/performance.md): a mapping reads millions of repeated values (a patient's subject on every
Observation, a few dozen codes, one effective time per encounter), so the costly steps, references
(reference_index.py), dates and codes, run once per distinct value (distinct.py); each output reads,
gathers and explodes only the columns it uses; the outputs run side by side in a pool of threads.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from pipelines.cdm.spec import cdm_schema
from pipelines.mapping.batch import QUARANTINE_SCHEMA, MappedBatch
from pipelines.mapping.fhir import dates
from pipelines.mapping.fhir.distinct import distinct_rows
from pipelines.mapping.fhir.paths import compile_path
from pipelines.mapping.fhir.reference_index import ReferenceIndex
from pipelines.mapping.fhir.spec import (
    Common,
    MappingError,
    Output,
    ResourceMapping,
    elements_read,
    load_common,
    load_mappings,
)
from pipelines.sources.fhir.model import CodeableConcept, polars_schema
from pipelines.sources.fhir.reader import StagedFhir

if TYPE_CHECKING:
    from pipelines.vocab import Vocabulary

# Threads that evaluate outputs side by side: Polars releases the GIL, so up to one per core helps.
_THREADS = max(1, min(4, os.cpu_count() or 1))
# Facets of routed outputs, by kind (docs/fhir.md lists what each fills).
_CODEABLE = ("concept", "value_concept", "route", "anatomic_site", "status")
_DATES = ("start", "end")
_REFS = {
    "person": ("person_id", "Patient"),
    "visit": ("visit_occurrence_id", "Encounter"),
    "provider": ("provider_id", "Practitioner"),
    "visit_detail": ("visit_detail_id", "Encounter"),  # derived from visit (see _Engine.split_visits)
}
# The FHIR resource type a CDM foreign key points at, for logical references (identifier only).
_FHIR_TYPE = {
    "person": "Patient",
    "visit_occurrence": "Encounter",
    "visit_detail": "Encounter",
    "provider": "Practitioner",
    "care_site": "Organization",
    "location": "Location",
}
_NUMBERS = {
    "value_number": pl.Float64,
    "quantity": pl.Float64,
    "range_low": pl.Float64,
    "range_high": pl.Float64,
    "days_supply": pl.Int64,
    "refills": pl.Int64,
}
_TEXT = ("value_string", "sig", "lot_number", "stop_reason", "unique_device_id", "specimen_source_id")
_KNOWN_FACETS = frozenset([*_CODEABLE, *_DATES, *_REFS, *_NUMBERS, *_TEXT, "unit", "operator"])
# The kinds of value spec (docs/fhir.md, "Values"); a spec is a dict holding one of these keys.
_VALUE_KINDS = (
    "const",
    "type_concept",
    "lookup",
    "ref",
    "own",
    "resolve",
    "date",
    "datetime",
    "year",
    "month",
    "day",
    "concept",
    "source_concept",
    "code",
    "unit",
    "text",
)
_CODEABLE_CONCEPT = pl.Struct(polars_schema(CodeableConcept))
_CODING = pl.Struct({"system": pl.Utf8, "code": pl.Utf8, "display": pl.Utf8, "userSelected": pl.Boolean})
_POLARS_TYPE = {
    "bigint": pl.Int64,
    "integer": pl.Int32,
    "float": pl.Float64,
    "date": pl.Date,
    "datetime": pl.Datetime("us"),
    "boolean": pl.Boolean,
}
# Columns of a staged frame every output carries: lineage, record key and Bundle.
_LINEAGE = ("_source_file", "_position", "_record_type", "_record_id", "_record_version", "_record_key")
_BOOKKEEPING = {
    "_key": pl.Utf8,
    "_record_key": pl.Utf8,
    "_source_format": pl.Utf8,
    "_source_file": pl.Utf8,
    "_position": pl.Int64,
    "_record_type": pl.Utf8,
    "_record_id": pl.Utf8,
    "_record_version": pl.Utf8,
}


def map_staged(staged: StagedFhir, vocab: Vocabulary) -> MappedBatch:
    """Map every staged resource type through its mapping file; types without one are filtered."""
    return _Engine(staged, vocab, load_mappings(), load_common()).run()


class _Engine:
    def __init__(
        self, staged: StagedFhir, vocab: Vocabulary, mappings: dict[str, ResourceMapping], common: Common
    ) -> None:
        self.staged = staged
        self.vocab = vocab
        self.mappings = mappings
        self.common = common
        self.codes = _referenced_codes(staged.resources)
        self.references = ReferenceIndex(staged)
        self.visit_parents = _visit_parents(staged, self.references)
        self.tables: dict[str, list[pl.DataFrame]] = {}
        self.quarantine: list[pl.DataFrame] = [staged.quarantine]
        self.mapped: Counter[str] = Counter()
        self.filtered: Counter[str] = Counter(staged.filtered)

    def run(self) -> MappedBatch:
        """Every output of every resource type is a task of a pool of threads (Polars works outside the
        GIL, so both cores of the machine map); the results are put together in the order of the
        staged types and outputs, so the batch is the same as mapping them one after the other."""
        plans: dict[str, _Plan] = {}
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            tasks = []
            for kind, frame in self.staged.resources.items():
                if kind in self.mappings:
                    plans[kind] = plan = _filter(self.mappings[kind], frame)
                    tasks.extend((frame.height, plan, index) for index in range(len(plan.mapping.outputs)))
            # the biggest first, so that no large output is left alone at the end
            for _, plan, index in sorted(tasks, key=lambda task: -task[0]):
                plan.results[index] = pool.submit(self.map_output, plan, plan.mapping.outputs[index])
            for kind, frame in self.staged.resources.items():
                if kind in plans:
                    self.combine(plans[kind])
                else:
                    self.filtered[f"{kind}: no mapping"] += frame.height
        return MappedBatch(
            tables={name: _finish(name, frames) for name, frames in sorted(self.tables.items())},
            quarantine=pl.concat(self.quarantine, how="vertical_relaxed").cast(QUARANTINE_SCHEMA),
            deletions=self.staged.deletions,
            inputs=dict(self.staged.inputs),
            mapped=dict(self.mapped),
            filtered=dict(self.filtered),
        )

    def split_visits(self, encounters: pl.Series) -> tuple[pl.Series, pl.Series]:
        """Encounter keys -> (visit_occurrence key, visit_detail key): an Encounter that is partOf
        another is a visit_detail of that visit (Encounter.yaml), so rows pointing at it point at both."""
        frame = pl.DataFrame({"key": encounters}).join(
            self.visit_parents, on="key", how="left", maintain_order="left"
        )
        visit = frame.select(pl.coalesce("parent", "key")).to_series()
        detail = frame.select(pl.when(pl.col("parent").is_not_null()).then(pl.col("key"))).to_series()
        return visit, detail

    # --- one resource type ------------------------------------------------------------------

    def map_output(self, plan: _Plan, output: Output) -> _Output | None:
        """One output evaluated on the rows it applies to (None when there are none)."""
        frame, mask = plan.frame, plan.keep
        if output.when is not None:
            when = frame.select(_condition(output.when).fill_null(False)).to_series()
            mask = when if mask is None else mask & when
        rows = frame.select(_columns_read(output, frame))
        if output.each is not None:
            has_items = rows.get_column("item").list.len() > 0
            mask = has_items if mask is None else mask & has_items
        if mask is not None:
            # gather, not filter: Polars' filter of nested columns took 2x (dense mask) to 4x (sparse)
            # the time of a gather of the same rows (10 k patients, Observation: 0.8 s against 0.35 s)
            rows = rows.gather(mask.arg_true())
        if output.each is not None:
            # Only the rows with items are exploded, and only the columns the output reads: exploding
            # every row of the wide nested frame (most Observations have no component) took several
            # GB at 10 k patients, the run's peak of memory, and 18 s (docs/performance.md).
            rows = (
                rows.with_columns(pl.int_ranges(pl.col("item").list.len()).alias("_item_index"))
                .explode(["item", "_item_index"])
                .filter(pl.col("item").is_not_null())
            )
        if rows.height == 0:
            return None
        context = _Output(self, plan.mapping, output, rows)
        context.produced = context.tables()
        return context

    def combine(self, plan: _Plan) -> None:
        """The rows, quarantine and counts of one resource type from its outputs' results."""
        kind, mapping = plan.mapping.resource, plan.mapping
        self.filtered.update(plan.filtered)
        produced: list[tuple[str, pl.DataFrame]] = []
        problems: list[pl.DataFrame] = []
        for index in range(len(mapping.outputs)):
            context = plan.results[index].result()
            if context is not None:
                produced.extend(context.produced)
                problems.extend(context.problems)
        lineage = plan.frame.select(*_LINEAGE)
        if plan.keep is not None:
            lineage = lineage.filter(plan.keep)
        bad = _first_problem(problems)
        if bad.height:
            self.quarantine.append(_quarantine_rows(lineage, bad))
            produced = [(table, _without(rows, bad)) for table, rows in produced]
        produced = [(table, rows) for table, rows in produced if rows.height]
        for table, rows in produced:
            self.tables.setdefault(table, []).append(rows)
        keys = pl.concat([rows["_record_key"] for _, rows in produced]).n_unique() if produced else 0
        self.mapped[kind] += keys
        nothing = lineage.height - bad.height - keys
        if nothing:
            self.filtered[f"{kind}: {mapping.no_rows_reason}"] += nothing


@dataclass
class _Plan:
    """One resource type to map: its frame, the rows its filters keep (None: all) and what they
    filtered, and the result of each output by its position in the mapping (futures of the pool)."""

    mapping: ResourceMapping
    frame: pl.DataFrame
    keep: pl.Series | None
    filtered: Counter[str]
    results: dict[int, Future[_Output | None]] = field(default_factory=dict)


def _filter(mapping: ResourceMapping, frame: pl.DataFrame) -> _Plan:
    """Apply the mapping's filters, in order, as a mask: the wide nested frame is then cut once per
    output, on the columns that output reads (cutting copies every column a frame carries)."""
    keep: pl.Series | None = None
    filtered: Counter[str] = Counter()
    for rule in mapping.filters:
        drop = frame.select(_condition(rule.when).fill_null(False)).to_series()
        if keep is not None:
            drop = drop & keep
        if drop.any():
            filtered[f"{mapping.resource}: {rule.reason}"] += int(drop.sum())
            keep = ~drop if keep is None else keep & ~drop
    return _Plan(mapping, frame, keep, filtered)


class _Output:
    """One output of one mapping, evaluated on the rows it applies to."""

    def __init__(self, engine: _Engine, mapping: ResourceMapping, output: Output, rows: pl.DataFrame) -> None:
        self.engine = engine
        self.mapping = mapping
        self.output = output
        # One chunk per column: Polars' eager select re-aligns every column of a frame whose columns are
        # chunked differently (the staged chunks beside the one-chunk _row) on every call, 0.2-0.4 s per
        # path on the 10 k Observations; a rechunk once costs 0.1 s.
        self.rows = rows.rechunk().with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"))
        self.problems: list[pl.DataFrame] = []
        self.produced: list[tuple[str, pl.DataFrame]] = []  # (table, rows), once evaluated
        self.parsed: dict[str, pl.DataFrame] = {}  # parse_dates by value spec
        self.where = f"{mapping.source.name}, output {output.name!r}"

    # --- values -----------------------------------------------------------------------------

    def raw(self, spec: Any) -> pl.Series:
        """A value spec evaluated on every row, before any facet-specific treatment."""
        rows = self.rows
        if isinstance(spec, str):
            return rows.select(compile_path(spec)).to_series()
        if isinstance(spec, list):
            return _coalesce([self.raw(s) for s in spec])
        if not isinstance(spec, dict) or not spec:
            raise MappingError(f"{self.where}: cannot read value {spec!r}")
        key = next((k for k in _VALUE_KINDS if k in spec), None)
        if key is None:
            raise MappingError(f"{self.where}: {spec!r} names no value kind ({', '.join(_VALUE_KINDS)})")
        value = spec[key]
        if key == "const":
            return pl.repeat(value, rows.height, eager=True)
        if key == "type_concept":
            return pl.repeat(self.engine.common.type_concepts[value], rows.height, eager=True, dtype=pl.Int32)
        if key == "lookup":
            source = self.raw(value).cast(pl.Utf8)
            mapping = {str(k): v for k, v in spec["values"].items()}
            return source.replace_strict(mapping, default=spec.get("default"))
        if key == "ref":
            return self.reference(value, spec.get("type"))
        if key == "own" and value == "self":
            return rows["_record_key"]
        if key == "own":
            present = (
                self.raw(spec["if"]).is_not_null()
                if "if" in spec
                else pl.repeat(True, rows.height, eager=True)
            )
            keys = rows["_record_key"] + f"|{value}"
            return pl.select(pl.when(present).then(keys)).to_series()
        if key == "resolve":
            keys = self.reference(value, None)
            codes = self.engine.codes.filter(pl.col("element") == spec["element"]).drop("element")
            return pl.DataFrame({"key": keys}).join(codes, on="key", how="left", maintain_order="left")[
                "code"
            ]
        if key == "text":  # a bare text as a CodeableConcept without coding (e.g. a reference's display)
            text = self.raw(value).cast(pl.Utf8)
            return pl.DataFrame({"coding": pl.repeat(None, rows.height, eager=True), "text": text}).select(
                pl.struct(pl.col("coding").cast(_CODEABLE_CONCEPT.fields[0].dtype), "text").alias("cc")
            )["cc"]
        if key in ("date", "datetime", "year", "month", "day"):
            return self.date_part(key, value)
        if key in ("concept", "source_concept", "code"):
            resolved = self.codeable(value, fan_out=False)
            column = {"concept": "concept_id", "source_concept": "source_concept_id", "code": "source_value"}[
                key
            ]
            # An absent element has no concept (null); a present but unmapped one has concept 0.
            present = resolved["source_value"].is_not_null()
            return pl.select(pl.when(present).then(resolved[column])).to_series()
        if key == "unit":
            return self.unit(value)["unit_concept_id"]
        raise MappingError(f"{self.where}: unknown value kind {key!r}")

    def reference(self, spec: Any, target_type: str | None) -> pl.Series:
        ref = self.raw(spec)
        frame = self.rows.select("_scope", "_record_key").with_columns(ref.alias("_ref"))
        return self.engine.references.keys(frame, target_type)

    def parse_dates(self, spec: Any) -> pl.DataFrame:
        """Parsed dates of every row; a record with an impossible date is a quarantine problem. Once
        per value spec: outputs read one element as a date and as a datetime (Encounter.period.start),
        or as year, month, day and datetime (Patient.birthDate)."""
        key = repr(spec)
        if key not in self.parsed:
            parsed = self.parsed[key] = dates.parse(self.raw(spec))
            bad = self.rows["_record_key"].filter(parsed["impossible"])
            if bad.len():
                self.problem(
                    bad,
                    "impossible_date",
                    f"The {self.mapping.resource} has a date or time that does not exist in the calendar "
                    f"(read by {self.where}).",
                )
        return self.parsed[key]

    def date_part(self, part: str, spec: Any) -> pl.Series:
        parsed = self.parse_dates(spec)
        day, precision = pl.col("date"), pl.col("precision")
        expr = {
            "datetime": pl.col("datetime"),
            "date": day,
            "year": day.dt.year().cast(pl.Int32),
            "month": pl.when(precision != "year").then(day.dt.month().cast(pl.Int32)),
            "day": pl.when(precision == "day").then(day.dt.day().cast(pl.Int32)),
        }[part]
        return parsed.select(expr).to_series()

    def problem(self, record_keys: pl.Series, code: str, reason: str) -> None:
        self.problems.append(
            pl.DataFrame({"_record_key": record_keys}).with_columns(
                pl.lit(code).alias("reason_code"), pl.lit(reason).alias("reason")
            )
        )

    # --- concepts ---------------------------------------------------------------------------

    def codeable(self, spec: Any, *, fan_out: bool) -> pl.DataFrame:
        """Resolve a CodeableConcept (or Coding) per row: one coding chosen by the IG's priority
        (standard concept, then mapped, then userSelected, then order); with ``fan_out`` all the
        standard concepts it maps to, else the first. Columns: _row, concept_id, source_concept_id,
        source_value, domain_id, value_as_concept_id, _fan (targets of the chosen coding).

        Each distinct value is resolved once (10 k patients: 947 k Observation codes, 22 distinct)."""
        value = self.raw(spec)
        if not isinstance(value.dtype, pl.Struct):
            raise MappingError(f"{self.where}: {spec!r} is not a CodeableConcept or a Coding")
        found = distinct_rows(value.to_frame())
        if found is None:
            return _resolve_codeable(value, self.engine.vocab, fan_out=fan_out)
        per_value = _resolve_codeable(value.gather(found.firsts), self.engine.vocab, fan_out=fan_out)
        if per_value.height == found.count:  # one row per value (ordered by value): put back by position
            return found.spread(per_value).with_columns(self.rows["_row"])
        slots = pl.DataFrame({"_row": self.rows["_row"], "_value": found.slots.cast(pl.Int64)})
        return slots.join(
            per_value.rename({"_row": "_value"}), on="_value", how="left", maintain_order="left"
        ).drop("_value")

    def unit(self, spec: Any) -> pl.DataFrame:
        """A Quantity's unit (UCUM code when the system is UCUM, else its text) -> unit concept."""
        from pipelines.mapping.concepts import resolve_units

        quantity = self.raw(spec)
        if not isinstance(quantity.dtype, pl.Struct):
            raise MappingError(f"{self.where}: unit {spec!r} is not a Quantity")
        q = pl.col("q")
        unit = (
            pl.when(q.struct.field("system") == "http://unitsofmeasure.org")
            .then(pl.coalesce(q.struct.field("code"), q.struct.field("unit")))
            .otherwise(pl.coalesce(q.struct.field("unit"), q.struct.field("code")))
        )
        frame = pl.DataFrame({"q": quantity}).select(unit.alias("unit"))
        resolved = resolve_units(frame, self.engine.vocab, unit="unit", prefix="unit_")
        return resolved.select(
            pl.when(pl.col("unit").is_not_null())
            .then(pl.col("unit_concept_id").fill_null(0))
            .cast(pl.Int32)
            .alias("unit_concept_id"),
            pl.col("unit_source_value"),
        )

    # --- outputs ----------------------------------------------------------------------------

    def tables(self) -> list[tuple[str, pl.DataFrame]]:
        return self.routed() if self.output.routed else self.fixed()

    def fixed(self) -> list[tuple[str, pl.DataFrame]]:
        output, table = self.output, self.output.table
        spec_table = cdm_schema().table(table)
        columns: dict[str, pl.Series] = {}
        for column, spec in output.columns.items():
            references = spec_table.column(column).references
            if references and references[0] != "concept":
                if isinstance(spec, dict) and ("own" in spec or "ref" in spec):
                    columns[f"_ref__{column}"] = self.raw(spec)
                else:
                    columns[f"_ref__{column}"] = self.reference(spec, _FHIR_TYPE.get(references[0]))
            else:
                columns[column] = self.raw(spec)
        frame = self.bookkeeping().with_columns([series.alias(name) for name, series in columns.items()])
        self.require(frame, output.required)
        suffix = f"|{output.key}" if output.key else ""
        frame = frame.with_columns((pl.col("_record_key") + suffix).alias("_key"))
        return [(table, frame)]

    def routed(self) -> list[tuple[str, pl.DataFrame]]:
        output, common = self.output, self.engine.common
        unknown = set(output.facets) - _KNOWN_FACETS
        if unknown:
            raise MappingError(f"{self.where}: unknown facets {sorted(unknown)} (docs/fhir.md lists them)")
        facets = self.bookkeeping()
        cols: dict[str, pl.Series] = {}
        for name, spec in output.facets.items():
            if name in _CODEABLE and name != "concept":
                resolved = self.codeable(spec, fan_out=False)
                # An absent element has no concept (null), an unmapped one has concept 0.
                present = resolved["source_value"].is_not_null()
                cols[f"{name}_concept_id"] = pl.select(
                    pl.when(present).then(resolved["concept_id"])
                ).to_series()
                cols[f"{name}_source_value"] = resolved["source_value"]
            elif name in _DATES:
                parsed = self.parse_dates(spec)
                cols[f"{name}_date"] = parsed["date"]
                cols[f"{name}_datetime"] = parsed["datetime"]
            elif name in _REFS:
                cols[f"_facet_{name}"] = self.reference(spec, _REFS[name][1])
            elif name in _NUMBERS:
                cols[name] = self.raw(spec).cast(_NUMBERS[name], strict=False)
            elif name in _TEXT:
                cols[name] = self.raw(spec).cast(pl.Utf8)
            elif name == "unit":
                resolved = self.unit(spec)
                cols["unit_concept_id"] = resolved["unit_concept_id"]
                cols["unit_source_value"] = resolved["unit_source_value"]
            elif name == "operator":
                cols["operator_concept_id"] = (
                    self.raw(spec)
                    .cast(pl.Utf8)
                    .replace_strict(common.operators, default=None, return_dtype=pl.Int32)
                )
        if "_facet_visit" in cols:
            cols["_facet_visit"], cols["_facet_visit_detail"] = self.engine.split_visits(cols["_facet_visit"])
        facets = facets.with_columns([series.alias(name) for name, series in cols.items()])
        concept_spec = output.facets.get("concept")
        if isinstance(concept_spec, dict) and ("const" in concept_spec or "lookup" in concept_spec):
            # value-as-concept pattern: a concept id given by the mapping (fixed, or looked up)
            concepts = self.rows.select(
                "_row",
                self.raw(concept_spec).cast(pl.Int32).alias("concept_id"),
                pl.lit(0, dtype=pl.Int32).alias("source_concept_id"),
                # value-as-concept pattern: the fixed concept says what, the source value keeps the code
                (
                    cols["value_concept_source_value"]
                    if "value_concept_source_value" in cols
                    else pl.lit(None, dtype=pl.Utf8)
                ).alias("source_value"),
                pl.lit(None, dtype=pl.Utf8).alias("domain_id"),
                pl.lit(None, dtype=pl.Int32).alias("value_as_concept_id"),
                pl.lit(1, dtype=pl.UInt32).alias("_fan"),
            )
        elif concept_spec is not None:
            concepts = self.codeable(concept_spec, fan_out=True)
        else:
            raise MappingError(f"{self.where}: a routed output needs a concept facet")
        frame = facets.with_columns(self.type_concepts().alias("type_concept_id"))
        if concepts.height == frame.height:  # one concept row per row, in order: no join to make
            frame = frame.hstack(concepts.drop("_row"))
        else:  # a code that maps to several standard concepts gives one row each
            frame = frame.join(concepts, on="_row", how="left", maintain_order="left")
        frame = frame.with_columns(
            _value_concept(frame).alias("value_concept_id"),
            _end_or_supply(frame).alias("end_date_or_supply"),
        )
        self.require_routed(frame)
        item = f"|{output.each}/" if output.each else None
        key = pl.col("_record_key")
        if item:
            key = key + item + pl.col("_item_index").cast(pl.Utf8)
        if output.key:
            key = key + f"|{output.key}"
        key = pl.when(pl.col("_fan") > 1).then(key + "|" + pl.col("concept_id").cast(pl.Utf8)).otherwise(key)
        routed_table = pl.col("domain_id").replace_strict(
            common.domain_table, default=None, return_dtype=pl.Utf8
        )
        table = (
            pl.lit(output.table, dtype=pl.Utf8)
            if output.table
            else pl.coalesce(
                pl.when(pl.col("concept_id") != 0).then(routed_table), pl.lit(output.default_table)
            )
        )
        frame = frame.with_columns(key.alias("_key"), table.alias("_table"))
        # Each table takes its columns, then its rows (partitioning the whole frame first copied every
        # facet column of every row: 0.36 s on 10 k patients)
        tables = frame.get_column("_table")
        names = tables.unique(maintain_order=True).to_list()
        if len(names) == 1:
            return [(names[0], self.to_table(names[0], frame))]
        return [(name, self.to_table(name, frame).gather((tables == name).arg_true())) for name in names]

    def type_concepts(self) -> pl.Series:
        """The type concept of every row: one name, or a lookup of names (e.g. by category)."""
        spec, known = self.output.type_concept, self.engine.common.type_concepts
        if isinstance(spec, dict):
            return self.raw(spec).replace_strict(known, return_dtype=pl.Int32)
        return pl.repeat(known[spec] if spec else 0, self.rows.height, eager=True, dtype=pl.Int32)

    def to_table(self, table: str, rows: pl.DataFrame) -> pl.DataFrame:
        exprs = []
        for column, facet in self.engine.common.tables[table].items():
            if facet in _REFS:
                name = f"_facet_{facet}"
                exprs.append(
                    (pl.col(name) if name in rows.columns else pl.lit(None, pl.Utf8)).alias(f"_ref__{column}")
                )
            elif facet in rows.columns:
                exprs.append(pl.col(facet).alias(column))
        return rows.select(*_BOOKKEEPING, *exprs)

    def bookkeeping(self) -> pl.DataFrame:
        return self.rows.select(
            "_row",
            "_record_key",
            pl.lit("fhir").alias("_source_format"),
            "_source_file",
            "_position",
            "_record_type",
            "_record_id",
            "_record_version",
            *(["_item_index"] if "_item_index" in self.rows.columns else []),
        )

    # --- quarantine rules -------------------------------------------------------------------

    def require(self, frame: pl.DataFrame, required: dict[str, str]) -> None:
        for column, code in required.items():
            name = column if column in frame.columns else f"_ref__{column}"
            missing = _record_keys_where(frame, pl.col(name).is_null())
            if missing.len():
                self.problem(
                    missing,
                    code,
                    _REASONS.get(code, "A required element is missing.").format(
                        kind=self.mapping.resource, where=self.where
                    ),
                )

    def require_routed(self, frame: pl.DataFrame) -> None:
        if "_facet_person" not in frame.columns:
            raise MappingError(f"{self.where}: a routed output needs a person facet")
        person = pl.col("_facet_person")
        self.require(frame.with_columns(person.alias("person")), {"person": "missing_subject"})
        # A subject of a known other type (Group, Device, Location) or a contained one cannot be a
        # person; an unresolved urn:uuid is left to the loader, which reports it as dangling.
        contained = person.str.contains("#", literal=True)
        other_type = person.str.contains(r"^fhir\|[A-Z][A-Za-z]+[/?]") & ~person.str.starts_with(
            "fhir|Patient"
        )
        for code, keys in (
            ("contained_subject", _record_keys_where(frame, contained)),
            ("subject_not_a_patient", _record_keys_where(frame, other_type & ~contained)),
        ):
            if keys.len():
                reason = _REASONS[code].format(kind=self.mapping.resource, where=self.where)
                self.problem(keys, code, reason)
        if "start_date" not in frame.columns:
            raise MappingError(f"{self.where}: a routed output needs a start facet")
        self.require(frame, {"start_date": "missing_date"})


def _record_keys_where(frame: pl.DataFrame, condition: pl.Expr) -> pl.Series:
    """The record keys of the rows where ``condition`` holds: the key column filtered alone, not the
    frame's every column."""
    return frame.select(pl.col("_record_key").filter(condition)).to_series()


_REASONS = {
    "missing_subject": "The {kind} names no patient (no subject or patient reference): it belongs to no one.",
    "subject_not_a_patient": "The {kind} is about something other than a Patient (group, device, location).",
    "contained_subject": "The {kind}'s subject is contained inside it, not a Patient record to be a person.",
    "missing_date": "The {kind} has none of the dates {where} reads, so it cannot be placed in time.",
    "missing_birth_date": "The {kind} has no birth date; OMOP person.year_of_birth is required.",
}


def _columns_read(output: Output, frame: pl.DataFrame) -> list[pl.Expr]:
    """The columns of ``frame`` an output reads, its list of items as ``item``, and the bookkeeping."""
    read = sorted(elements_read(output) & set(frame.columns))
    each = [compile_path(output.each).alias("item")] if output.each is not None else []
    return [pl.col(*_LINEAGE, "_scope", *read), *each]


def _condition(spec: dict) -> pl.Expr:
    """A filter/when condition: ``{path, in|not_in}``, ``{present}``, ``{absent}``, ``{all}``, ``{any}``."""
    if "all" in spec:
        return pl.all_horizontal([_condition(s).fill_null(False) for s in spec["all"]])
    if "any" in spec:
        return pl.any_horizontal([_condition(s).fill_null(False) for s in spec["any"]])
    if "present" in spec:
        paths = spec["present"] if isinstance(spec["present"], list) else [spec["present"]]
        return pl.any_horizontal([_present(compile_path(p)) for p in paths])
    if "absent" in spec:
        paths = spec["absent"] if isinstance(spec["absent"], list) else [spec["absent"]]
        return ~pl.any_horizontal([_present(compile_path(p)) for p in paths])
    value = compile_path(spec["path"]).cast(pl.Utf8)
    if "in" in spec:
        return value.is_in([str(v) for v in spec["in"]]).fill_null(False)
    if "not_in" in spec:
        return ~value.is_in([str(v) for v in spec["not_in"]]).fill_null(False)
    raise MappingError(f"cannot read condition {spec!r}")


def _present(expr: pl.Expr) -> pl.Expr:
    return expr.is_not_null()


def _coalesce(series: list[pl.Series]) -> pl.Series:
    kinds = {s.dtype for s in series if s.dtype != pl.Null}
    if len(kinds) > 1:
        numeric = all(k.is_numeric() for k in kinds)
        series = [s.cast(pl.Float64 if numeric else pl.Utf8) for s in series]
    frame = pl.DataFrame({f"v{i}": s for i, s in enumerate(series)})
    return frame.select(pl.coalesce(frame.columns)).to_series()


def _value_concept(frame: pl.DataFrame) -> pl.Expr:
    """value_as_concept_id: the coded value when there is one, else the concept's "Maps to value"."""
    parts = [
        pl.when(pl.col(c) != 0).then(pl.col(c))
        for c in ("value_concept_concept_id", "value_as_concept_id")
        if c in frame.columns
    ]
    if "value_concept_concept_id" in frame.columns:
        parts.append(pl.col("value_concept_concept_id"))
    return pl.coalesce(parts).cast(pl.Int32) if parts else pl.lit(None, dtype=pl.Int32)


def _end_or_supply(frame: pl.DataFrame) -> pl.Expr:
    """A required end date (drug_exposure): the end, else start + days supply - 1, else the start."""
    if "start_date" not in frame.columns:
        return pl.lit(None, dtype=pl.Date)
    parts = []
    if "end_date" in frame.columns:
        parts.append(pl.col("end_date"))
    if "days_supply" in frame.columns:
        parts.append(pl.col("start_date") + pl.duration(days=(pl.col("days_supply") - 1).clip(lower_bound=0)))
    parts.append(pl.col("start_date"))
    return pl.coalesce(parts)


def _resolve_codeable(value: pl.Series, vocab: Vocabulary, *, fan_out: bool) -> pl.DataFrame:
    """``_Output.codeable`` of a column of CodeableConcepts or Codings, ``_row`` being the position."""
    from pipelines.mapping.concepts import resolve_concepts

    rows = pl.int_range(value.len(), dtype=pl.Int64, eager=True)
    if "coding" in value.dtype.to_schema():
        codings = value.struct.field("coding")
        text = value.struct.field("text")
    else:
        codings = value.cast(_CODING, strict=False).to_frame("c").select(pl.concat_list("c")).to_series()
        codings = pl.select(pl.when(value.is_not_null()).then(codings)).to_series()
        text = pl.repeat(None, value.len(), eager=True, dtype=pl.Utf8)
    long = (
        pl.DataFrame({"_row": rows, "c": codings})
        .explode("c")
        .with_columns(pl.int_range(pl.len()).over("_row").alias("_coding"))
        .unnest("c")
        .filter(pl.col("code").is_not_null())
        .select("_row", "_coding", "system", "code", pl.col("userSelected").fill_null(False))
    )
    if long.height:
        resolved = resolve_concepts(long, vocab, system="system", code="code")
    else:  # nothing coded on any row: no vocabulary look-up to make
        resolved = long.with_columns(
            pl.lit(0, pl.Int32).alias("concept_id"),
            pl.lit(0, pl.Int32).alias("source_concept_id"),
            pl.col("code").alias("source_value"),
            pl.lit(None, pl.Utf8).alias("domain_id"),
            pl.lit(None, pl.Int32).alias("value_as_concept_id"),
        )
    ranked = resolved.with_columns(
        ((pl.col("source_concept_id") != 0) & (pl.col("concept_id") == pl.col("source_concept_id"))).alias(
            "_standard"
        ),
        (pl.col("concept_id") != 0).alias("_mapped"),
    ).sort(
        ["_row", "_standard", "_mapped", "userSelected", "_coding"],
        descending=[False, True, True, True, False],
    )
    chosen = ranked.group_by("_row", maintain_order=True).agg(pl.col("_coding").first().alias("_chosen"))
    picked = ranked.join(chosen, on="_row").filter(pl.col("_coding") == pl.col("_chosen"))
    picked = picked.with_columns(pl.len().over("_row").alias("_fan"))
    if not fan_out:
        picked = picked.unique("_row", keep="first", maintain_order=True)
    columns = [
        "concept_id",
        "source_concept_id",
        "source_value",
        "domain_id",
        "value_as_concept_id",
        "_fan",
    ]
    base = pl.DataFrame({"_row": rows, "_text": text})
    out = base.join(picked.select("_row", *columns), on="_row", how="left", maintain_order="left")
    return out.with_columns(
        pl.col("concept_id").fill_null(0).cast(pl.Int32),
        pl.col("source_concept_id").fill_null(0).cast(pl.Int32),
        pl.coalesce("source_value", pl.col("_text")).alias("source_value"),
        pl.col("value_as_concept_id").cast(pl.Int32),
        pl.col("_fan").fill_null(1),
    ).drop("_text")


def _first_problem(problems: list[pl.DataFrame]) -> pl.DataFrame:
    if not problems:
        return pl.DataFrame(schema={"_record_key": pl.Utf8, "reason_code": pl.Utf8, "reason": pl.Utf8})
    return pl.concat(problems).unique("_record_key", keep="first", maintain_order=True)


def _without(rows: pl.DataFrame, bad: pl.DataFrame) -> pl.DataFrame:
    """``rows`` without those of the quarantined records: a look-up of each key in the few bad ones
    (a tenth of the cost of an anti-join on a million rows), most frames have none of them."""
    quarantined = rows.get_column("_record_key").is_in(bad.get_column("_record_key").implode())
    return rows.filter(~quarantined) if quarantined.any() else rows


def _quarantine_rows(frame: pl.DataFrame, bad: pl.DataFrame) -> pl.DataFrame:
    return frame.join(bad, on="_record_key", how="inner", maintain_order="left").select(
        pl.lit("fhir").alias("source_format"),
        pl.col("_source_file").alias("source_file"),
        pl.col("_position").alias("position"),
        pl.col("_record_type").alias("record_type"),
        pl.col("_record_id").alias("record_id"),
        "reason_code",
        "reason",
    )


def _visit_parents(staged: StagedFhir, references: ReferenceIndex) -> pl.DataFrame:
    """key of each Encounter that is partOf another -> key of that other Encounter."""
    encounters = staged.resources.get("Encounter")
    if encounters is None or encounters.height == 0:
        return pl.DataFrame(schema={"key": pl.Utf8, "parent": pl.Utf8})
    parents = references.keys(
        encounters.select("_scope", "_record_key", pl.col("partOf").alias("_ref")), "Encounter"
    )
    return encounters.select(pl.col("_record_key").alias("key"), parents.alias("parent")).drop_nulls("parent")


# Elements of a referenced resource that ``{resolve: <reference>, element: <name>}`` can read.
_RESOLVABLE = {"Medication": "code", "Device": "type"}


def _referenced_codes(resources: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """key, element -> CodeableConcept of the resources that others point at: Medication.code,
    Device.type, and contained resources' code (key ``<container key>#<id>``)."""
    parts = []
    for kind, element in _RESOLVABLE.items():
        if kind in resources:
            parts.append(
                resources[kind].select(
                    pl.col("_record_key").alias("key"),
                    pl.lit(element).alias("element"),
                    pl.col(element).alias("code"),
                )
            )
    for frame in resources.values():
        if "contained" not in frame.columns:
            continue
        contained = (
            frame.select("_record_key", "contained")
            .filter(pl.col("contained").list.len() > 0)  # few resources contain any: explode only those
            .explode("contained")
            .unnest("contained")
        )
        contained = contained.filter(pl.col("id").is_not_null())
        parts.append(
            contained.select(
                (pl.col("_record_key") + "#" + pl.col("id")).alias("key"),
                pl.lit("code").alias("element"),
                "code",
            )
        )
    if not parts:
        return pl.DataFrame(
            schema={"key": pl.Utf8, "element": pl.Utf8, "code": pl.Struct(polars_schema(CodeableConcept))}
        )
    return pl.concat(parts, how="vertical_relaxed").unique(
        ["key", "element"], keep="first", maintain_order=True
    )


def _finish(table: str, frames: list[pl.DataFrame]) -> pl.DataFrame:
    """One frame per CDM table: every column but the primary key, typed as the CDM says, then the
    bookkeeping and reference columns."""
    spec = cdm_schema().table(table)
    frame = pl.concat(frames, how="diagonal_relaxed")
    exprs = []
    for column in spec.columns:
        if column.primary_key:
            continue
        dtype = _POLARS_TYPE.get(column.type, pl.Utf8)
        value = pl.col(column.name) if column.name in frame.columns else pl.lit(None)
        value = value.cast(dtype, strict=False)
        if column.varchar_length:
            value = value.str.slice(0, column.varchar_length)
        exprs.append(value.alias(column.name))
    refs = sorted(c for c in frame.columns if c.startswith("_ref__"))
    return frame.select(*exprs, *[pl.col(c).cast(t) for c, t in _BOOKKEEPING.items()], *refs)
