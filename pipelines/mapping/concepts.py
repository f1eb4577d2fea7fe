"""Concept resolution: source codes of any system → standard OMOP concepts, in one vectorized step.

FHIR and openEHR both come through here. The distinct (code system, code) pairs of a frame are
resolved once against the vocabulary's lookup (see pipelines/vocab/resolution.py), then put back on
the rows by position: a frame of ten million rows with fifty thousand distinct codes costs a hash of
each row and one integer join, not ten million lookups (docs/vocabulary.md, "How it is fast").
One-to-many "Maps to" fans rows out; nothing is ever dropped — an unknown code system or an unmapped
code gives concept_id 0 with the source value kept.

The coverage helpers count what did not map, per vocabulary and target table, and write the list a
mapping team takes into Usagi.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from pipelines.vocab import Vocabulary
from pipelines.vocab.aliases import unit_synonyms, vocabulary_ids
from pipelines.vocab.resolution import KEY, key_hash

_VOCAB = "__vocabulary_id"
_RESOLVED = ("source_concept_id", "concept_id", "domain_id", "value_as_concept_id")
_COVERAGE_SCHEMA = {
    "source_vocabulary_id": pl.Utf8,
    "source_code": pl.Utf8,
    "target_table": pl.Utf8,
    "mapped": pl.Boolean,
    "rows": pl.UInt32,
    "source_name": pl.Utf8,
}


def resolve_concepts(
    frame: pl.DataFrame,
    vocab: Vocabulary,
    *,
    system: str = "system",
    code: str = "code",
    prefix: str = "",
) -> pl.DataFrame:
    """Add ``{prefix}source_concept_id``, ``concept_id``, ``domain_id``, ``value_as_concept_id`` and
    ``source_value`` to ``frame`` from its code-system and code columns.

    ``system`` holds a FHIR system URI, an openEHR terminology id (versions such as
    ``http://snomed.info/sct (20230731)`` are fine) or an OMOP vocabulary_id. concept_id and
    source_concept_id are 0 when unknown; domain_id and value_as_concept_id are null then. Rows keep
    their order, each with its code's first target (lowest concept_id); a code with several "Maps to"
    targets gives one more row per further target, appended after all rows.
    """
    names = [f"{prefix}{c}" for c in _RESOLVED] + [f"{prefix}source_value"]
    _check_free(frame, names)
    keys = frame.select(pl.col(system).cast(pl.Utf8), pl.col(code).cast(pl.Utf8))
    slots, distinct = _distinct_keys(keys)
    systems = distinct.get_column(system).unique().to_list()
    vocabulary_of = pl.DataFrame(
        {system: systems, _VOCAB: vocabulary_ids(systems, vocab.vocabulary_ids())},
        schema={system: pl.Utf8, _VOCAB: pl.Utf8},
    )
    wanted = distinct.join(vocabulary_of, on=system, how="left", nulls_equal=True, maintain_order="left")
    found = _find(wanted.get_column(_VOCAB), wanted.get_column(code), vocab.indexed_lookup())
    out = _attach(frame, slots, distinct.height, found, {c: f"{prefix}{c}" for c in _RESOLVED})
    return out.with_columns(
        pl.col(f"{prefix}concept_id").fill_null(0),
        pl.col(f"{prefix}source_concept_id").fill_null(0),
        pl.col(code).cast(pl.Utf8).alias(f"{prefix}source_value"),
    )


def resolve_units(
    frame: pl.DataFrame, vocab: Vocabulary, *, unit: str = "unit", prefix: str = "unit_"
) -> pl.DataFrame:
    """Add ``{prefix}concept_id`` (UCUM; 0 when unknown) and ``{prefix}source_value`` (the unit as given).

    Units OMOP spells differently (``mmHg``, ``U/L``, ``(score)``...) go through
    vocab/aliases/ucum_synonyms.csv first. A unit never fans out: of several targets the lowest id is kept.
    """
    target = f"{prefix}concept_id"
    _check_free(frame, [target, f"{prefix}source_value"])
    keys = frame.select(pl.col(unit).cast(pl.Utf8))
    slots, distinct = _distinct_keys(keys)
    spelled = distinct.join(
        unit_synonyms(), left_on=unit, right_on="unit", how="left", maintain_order="left"
    ).select(pl.coalesce("ucum_code", unit).alias("code"))
    found = _find(
        pl.Series(["UCUM"] * spelled.height, dtype=pl.Utf8),
        spelled.get_column("code"),
        vocab.indexed_lookup(),
    )
    first = found.group_by("slot").agg(pl.col("concept_id").min())
    per_slot = pl.DataFrame({"slot": pl.int_range(distinct.height, eager=True, dtype=pl.UInt32)}).join(
        first, on="slot", how="left", maintain_order="left"
    )
    concept = per_slot.get_column("concept_id").fill_null(0).gather(slots)
    return frame.with_columns(
        concept.alias(target), pl.col(unit).cast(pl.Utf8).alias(f"{prefix}source_value")
    )


def coverage(
    frame: pl.DataFrame,
    vocab: Vocabulary,
    *,
    system: str = "system",
    code: str = "code",
    concept_id: str = "concept_id",
    table: str | None = None,
    name: str | None = None,
) -> pl.DataFrame:
    """Counts per (vocabulary, code, target table, mapped?) of a resolved frame.

    Frames of several calls concatenate; ``write_coverage_report`` and ``coverage_summary`` read them.
    ``table`` names the CDM table the rows go to (or, when it is a column of ``frame``, that column);
    ``name`` optionally a column with the code's display text, which Usagi matches on.
    """
    systems = frame.get_column(system).cast(pl.Utf8).unique().to_list()
    known = vocab.vocabulary_ids()
    vocabulary_of = pl.DataFrame(
        {system: systems, "source_vocabulary_id": vocabulary_ids(systems, known)},
        schema={system: pl.Utf8, "source_vocabulary_id": pl.Utf8},
    )
    target = (
        pl.col(table).cast(pl.Utf8)
        if table is not None and table in frame.columns
        else pl.lit(table, dtype=pl.Utf8)
    )
    return (
        frame.select(
            pl.col(system).cast(pl.Utf8),
            source_code=pl.col(code).cast(pl.Utf8),
            source_name=pl.col(name).cast(pl.Utf8) if name else pl.lit(None, dtype=pl.Utf8),
            target_table=target,
            mapped=pl.col(concept_id).fill_null(0) != 0,
        )
        .join(vocabulary_of, on=system, how="left", nulls_equal=True)
        .with_columns(source_vocabulary_id=pl.coalesce("source_vocabulary_id", system, pl.lit("(none)")))
        .group_by("source_vocabulary_id", "source_code", "target_table", "mapped")
        .agg(rows=pl.len(), source_name=pl.col("source_name").drop_nulls().first())
    )


def batch_coverage(tables: dict[str, pl.DataFrame], vocab: Vocabulary) -> pl.DataFrame:
    """``coverage`` counts of mapped CDM rows (e.g. ``MappedBatch.tables``), per table and main concept.

    The main concept of a table is its ``<x>_concept_id`` with a ``<x>_source_value`` beside it
    (condition, drug, measurement, ...). The vocabulary of a code is that of its source concept; codes
    without one (source_concept_id 0) count under "(unknown)".
    """
    parts = []
    for table, frame in tables.items():
        for column in frame.columns:
            stem = column.removesuffix("_source_value")
            if column == stem or f"{stem}_concept_id" not in frame.columns or stem in ("unit", "value"):
                continue
            source_id = f"{stem}_source_concept_id"
            parts.append(
                frame.select(
                    source_code=pl.col(column).cast(pl.Utf8),
                    source_concept_id=pl.col(source_id).cast(pl.Int32) if source_id in frame.columns else 0,
                    mapped=pl.col(f"{stem}_concept_id").fill_null(0) != 0,
                    target_table=pl.lit(table),
                )
            )
    if not parts:
        return pl.DataFrame(schema=_COVERAGE_SCHEMA)
    # A row without a source value has no code to map (e.g. a visit with no type given): not counted.
    rows = pl.concat(parts, how="vertical_relaxed").filter(pl.col("source_code").str.len_chars() > 0)
    vocabularies = (
        vocab.concept.select(source_concept_id="concept_id", source_vocabulary_id="vocabulary_id")
        .filter(pl.col("source_concept_id") != 0)  # 0 is "No matching concept": the vocabulary is unknown
        .join(rows.lazy().select("source_concept_id").unique(), on="source_concept_id", how="semi")
        .collect()
    )
    return (
        rows.join(vocabularies, on="source_concept_id", how="left")
        .with_columns(pl.col("source_vocabulary_id").fill_null("(unknown)"))
        .group_by("source_vocabulary_id", "source_code", "target_table", "mapped")
        .agg(rows=pl.len().cast(pl.UInt32), source_name=pl.lit(None, dtype=pl.Utf8))
        .select(list(_COVERAGE_SCHEMA))
    )


def coverage_summary(counts: pl.DataFrame) -> pl.DataFrame:
    """Rows, mapped rows and the mapped share per vocabulary and target table (from ``coverage``)."""
    return (
        counts.group_by("source_vocabulary_id", "target_table")
        .agg(
            rows=pl.col("rows").sum(),
            mapped_rows=pl.col("rows").filter(pl.col("mapped")).sum(),
            unmapped_codes=pl.col("source_code").filter(~pl.col("mapped")).n_unique(),
        )
        .with_columns(mapped_share=(pl.col("mapped_rows") / pl.col("rows")).round(4))
        .sort("rows", descending=True)
    )


def write_coverage_report(frame: pl.DataFrame, path: Path, *, top: int | None = None) -> int:
    """Write the unmapped codes, most frequent first, as a CSV Usagi imports; returns the row count.

    ``frame`` is what ``coverage`` returns (several concatenated are fine). Columns: sourceCode,
    sourceName, sourceFrequency (Usagi's names), then sourceVocabularyId and targetTable so a team
    can split the work per vocabulary and table.
    """
    unmapped = (
        frame.filter(~pl.col("mapped"))
        .group_by("source_vocabulary_id", "source_code", "target_table")
        .agg(rows=pl.col("rows").sum(), source_name=pl.col("source_name").drop_nulls().first())
        .sort(
            ["rows", "source_vocabulary_id", "source_code"], descending=[True, False, False], nulls_last=True
        )
    )
    if top is not None:
        unmapped = unmapped.group_by("source_vocabulary_id", "target_table", maintain_order=True).head(top)
    report = unmapped.select(
        sourceCode="source_code",
        sourceName=pl.col("source_name").fill_null(""),
        sourceFrequency="rows",
        sourceVocabularyId="source_vocabulary_id",
        targetTable=pl.col("target_table").fill_null(""),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    report.write_csv(path)
    return report.height


def _distinct_keys(keys: pl.DataFrame) -> tuple[pl.Series, pl.DataFrame]:
    """(slot of every row, the distinct key rows): ``keys[i] == distinct[slot[i]]`` for every row i.

    Rows are grouped by a 64-bit hash of their key columns (integer grouping is several times faster
    than grouping strings); then a second, independent 64-bit hash of the last column (the code) must
    agree within every group. Two keys with different codes share a slot only if both hashes collide
    (odds around 1e-29 for 10^5 distinct codes); keys with the same code only if two of the few code
    systems collide on the first hash (around 1e-14 for a thousand systems). If the second hash ever
    disagrees, the exact string grouping is used instead.
    """
    columns = keys.columns
    first_hash = pl.lit(0, dtype=pl.UInt64)
    for seed, column in enumerate(columns, start=1):
        first_hash = first_hash ^ _grouping_hash(column, seed)
    hashes = keys.select(first_hash.alias("h"), pl.col(columns[-1]).hash(seed=101).alias("check"))
    h = hashes.get_column("h")
    first = h.is_first_distinct()
    firsts = first.arg_true()
    distinct_h = pl.DataFrame({"h": h.filter(first)}).with_row_index("slot")
    slots = hashes.select("h").join(distinct_h, on="h", how="left", maintain_order="left").get_column("slot")
    check = hashes.get_column("check")
    if bool((check == check.gather(firsts).gather(slots)).all()):
        return slots, keys.gather(firsts)
    exact = keys.with_row_index("row").group_by(columns, maintain_order=True).agg(pl.col("row"))
    rows = exact.get_column("row")
    slot = np.empty(keys.height, dtype=np.uint32)
    slot[rows.explode().to_numpy()] = np.repeat(
        np.arange(exact.height, dtype=np.uint32), rows.list.len().to_numpy()
    )
    return pl.Series(slot), exact.drop("row")


def _grouping_hash(column: str, seed: int) -> pl.Expr:
    return pl.col(column).hash(seed=seed)


def _find(vocabulary_id: pl.Series, code: pl.Series, lookup: pl.DataFrame) -> pl.DataFrame:
    """Lookup rows of each (vocabulary_id, code) by binary search on the lookup's key hash.

    Returns the lookup rows with ``slot`` = position of their query; queries without a match are absent.
    """
    queries = pl.DataFrame({"vocabulary_id": vocabulary_id, "code": code}).with_columns(
        key_hash(pl.col("vocabulary_id"), pl.col("code"))
    )
    keys = lookup.get_column(KEY)
    start = keys.search_sorted(queries.get_column(KEY), side="left").to_numpy().astype(np.int64)
    stop = keys.search_sorted(queries.get_column(KEY), side="right").to_numpy().astype(np.int64)
    count = stop - start
    query = np.repeat(np.arange(queries.height, dtype=np.uint32), count)
    offset = np.arange(len(query)) - np.repeat(np.cumsum(count) - count, count)
    rows = lookup.drop(KEY).gather(np.repeat(start, count) + offset).with_columns(slot=pl.Series(query))
    return rows.filter(
        pl.col("vocabulary_id").eq_missing(
            queries.get_column("vocabulary_id").gather(rows.get_column("slot"))
        )
        & pl.col("concept_code").eq_missing(queries.get_column("code").gather(rows.get_column("slot")))
    )


def _attach(
    frame: pl.DataFrame, slots: pl.Series, n_slots: int, found: pl.DataFrame, names: dict[str, str]
) -> pl.DataFrame:
    """Add ``found``'s columns to every row of ``frame`` through its slot (nulls where the slot found
    nothing). Every row gets its slot's first found row in place, without copying the frame; the
    further targets of one-to-many slots become extra copies of their rows, appended after all rows."""
    found = found.sort("slot", "concept_id", maintain_order=True)
    per_slot = np.bincount(found.get_column("slot").to_numpy(), minlength=n_slots).astype(np.int64)
    first_of_slot = np.cumsum(per_slot) - per_slot
    # one extra all-null row at the end: rows without a match point there
    values = pl.concat([found.select(list(names)), found.select(list(names)).clear(1)]).rename(names)
    missing = found.height
    # per slot: the position of its first found row (or of the null row), then one gather per row
    per_slot_values = values.gather(np.where(per_slot > 0, first_of_slot, missing))
    out = frame.with_columns(per_slot_values.gather(slots).get_columns())
    several = np.flatnonzero(per_slot > 1)
    if len(several) == 0:
        return out
    rows = slots.is_in(pl.Series(several, dtype=slots.dtype).implode()).arg_true().to_numpy()
    slot = slots.to_numpy()[rows]
    repeats = per_slot[slot] - 1
    rows = np.repeat(rows, repeats)
    within = 1 + np.arange(len(rows)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    more = frame.gather(rows).with_columns(
        values.gather(np.repeat(first_of_slot[slot], repeats) + within).get_columns()
    )
    return pl.concat([out, more])


def _check_free(frame: pl.DataFrame, columns: list[str]) -> None:
    taken = [c for c in columns if c in frame.columns]
    if taken:
        raise ValueError(f"the frame already has column(s) {', '.join(taken)}; pass another prefix")
