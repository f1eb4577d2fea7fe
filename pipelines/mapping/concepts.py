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

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl

from pipelines.vocab import Vocabulary
from pipelines.vocab.aliases import unit_synonyms, vocabulary_ids
from pipelines.vocab.resolution import KEY, key_hash

_VOCAB = "__vocabulary_id"
_CATEGORICAL = (pl.Categorical, pl.Enum)
_MIX = 0x9E3779B97F4A7C15  # odd: multiplying by it is a bijection of 64-bit integers (Fibonacci hashing)
_NULL_ID = 1 << 32  # the key of a null Categorical value: no physical id is that large
_BUCKET_BITS = 20  # 2^20 buckets: 8 MB tables, about 2 % of 50 k keys collide in the first round
_MAX_ROUNDS = 8
# The first round builds its table from every 8th row only (a key with 8 rows or more in a run is always
# among them; the others' rows, few, take the next round): the scatter pass reads an eighth of the keys.
_SAMPLE = 8
_BLOCK = 1 << 16  # rows per block of the bucketing passes: their buffers (512 kB) stay in cache
_ROWS_PER_THREAD = 1_000_000
_STREAMED_ROWS = 1_000_000  # from here on the keys are hashed by the streaming engine (_row_keys)
_T = TypeVar("_T")
_R = TypeVar("_R")
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
    names = {c: f"{prefix}{c}" for c in _RESOLVED}
    _check_free(frame, [*names.values(), f"{prefix}source_value"])
    keys = _key_columns(frame, [system, code])
    slot, first_row = _slots(keys)
    distinct = keys.gather(first_row).cast(pl.Utf8)  # slot i's key is distinct's row i
    systems = distinct.get_column(system).unique().to_list()
    vocabulary_of = pl.DataFrame(
        {system: systems, _VOCAB: vocabulary_ids(systems, vocab.vocabulary_ids())},
        schema={system: pl.Utf8, _VOCAB: pl.Utf8},
    )
    wanted = distinct.join(vocabulary_of, on=system, how="left", nulls_equal=True, maintain_order="left")
    found = _find(wanted.get_column(_VOCAB), wanted.get_column(code), vocab.indexed_lookup())
    source_value: pl.Expr | pl.Series = pl.col(code).cast(pl.Utf8).alias(f"{prefix}source_value")
    if _is_categorical(keys, code):
        # the text of each slot's code, gathered onto the rows: cheaper than casting every row to text
        source_value = distinct.get_column(code).alias(f"{prefix}source_value")
    return _attach(frame, slot, len(first_row), found, names, source_value)


def resolve_units(
    frame: pl.DataFrame, vocab: Vocabulary, *, unit: str = "unit", prefix: str = "unit_"
) -> pl.DataFrame:
    """Add ``{prefix}concept_id`` (UCUM; 0 when unknown) and ``{prefix}source_value`` (the unit as given).

    Units OMOP spells differently (``mmHg``, ``U/L``, ``(score)``...) go through
    vocab/aliases/ucum_synonyms.csv first. A unit never fans out: of several targets the lowest id is kept.
    """
    target = f"{prefix}concept_id"
    _check_free(frame, [target, f"{prefix}source_value"])
    keys = _key_columns(frame, [unit])
    slot, first_row = _slots(keys)
    spelled = (
        keys.gather(first_row)
        .cast(pl.Utf8)
        .join(unit_synonyms(), left_on=unit, right_on="unit", how="left", maintain_order="left")
        .select(pl.coalesce("ucum_code", unit).alias("code"))
    )
    found = _find(
        pl.Series(["UCUM"] * spelled.height, dtype=pl.Utf8),
        spelled.get_column("code"),
        vocab.indexed_lookup(),
    )
    first = found.group_by("slot").agg(pl.col("concept_id").min())
    concept_of_slot = np.zeros(len(first_row), dtype=np.int32)
    concept_of_slot[first.get_column("slot").to_numpy()] = first.get_column("concept_id").fill_null(0)
    return frame.with_columns(
        pl.Series(target, concept_of_slot.take(slot)),
        pl.col(unit).cast(pl.Utf8).alias(f"{prefix}source_value"),
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


def _key_columns(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """The key columns: Categorical and Enum as given (their physical ids are the key), others as text."""
    return frame.select(
        pl.col(c) if isinstance(frame.schema[c], _CATEGORICAL) else pl.col(c).cast(pl.Utf8) for c in columns
    )


def _slots(keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(slot of every row, one row of every slot): the k distinct keys get slots 0..k-1, rows with equal
    keys share a slot, rows with different keys never do; ``keys[i] == keys[first_row[slot[i]]]``.

    Every row gets a 64-bit key (text columns hashed, Categorical/Enum columns by their physical id)
    and a second, independent check of its last column (the code). A table of 2^20 buckets indexed by the
    key's low bits then groups the rows in a few numpy passes (scatter, gather, compare), the rows cut in
    one run of blocks per thread (numpy lets go of the GIL); the buckets used are then numbered densely.
    The first round's table is built from every ``_SAMPLE``-th row only. Rows whose code was not
    sampled, or whose bucket another key took, retry in a smaller table with other bits of the key
    (1 % of 10 M rows over 50 k codes; every row of a later round is scattered). Two keys with different
    codes share a slot only if both 64-bit values collide (odds around 1e-29 for 10^5 distinct codes);
    keys with the same code only if two of the few code systems collide on the first hash (around 1e-14
    for a thousand systems). If the check ever disagrees within a bucket, the exact string grouping is
    used instead.
    """
    if keys.height == 0:
        return np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int64)
    blocks = _key_blocks(keys)
    slot = np.empty(keys.height, dtype=np.uint32)
    first_rows = []
    todo: np.ndarray | None = None  # the rows this round's positions stand for; None: all, in order
    for round_ in range(_MAX_ROUNDS):
        count = sum(len(key) for _, key, _ in blocks)
        bits = min(_BUCKET_BITS, max(4, (2 * count).bit_length()))
        slot_here = slot if todo is None else np.empty(count, dtype=np.uint32)
        placed = _place(blocks, count, bits, round_, slot_here, sum(len(f) for f in first_rows))
        if placed is None:
            return _exact_slots(keys)  # a 64-bit collision between two keys: see the docstring
        first, left, left_keys, left_checks = placed
        if todo is None:
            first_rows.append(first)
        else:
            placed_here = np.ones(count, dtype=np.bool_)
            placed_here[left] = False
            slot[todo[placed_here]] = slot_here[placed_here]
            first_rows.append(todo[first])
        if len(left) == 0:
            return slot, np.concatenate(first_rows)
        todo = left if todo is None else todo[left]
        blocks = _blocks([left_keys], [left_checks])
    return _exact_slots(keys)


_Block = tuple[int, np.ndarray, np.ndarray]  # (position of its first row, keys, checks)


def _key_blocks(keys: pl.DataFrame) -> list[_Block]:
    """The (key, check) of every row, in blocks of at most ``_BLOCK`` rows, in row order.

    The arrays are the Polars result's own chunks (no copy): the streaming engine hands over 100 k-row
    chunks, which the bucketing passes then walk as they come."""
    hashed = _row_keys(keys)
    key_chunks, check_chunks = (hashed.get_column(c).get_chunks() for c in ("key", "check"))
    if [c.len() for c in key_chunks] != [c.len() for c in check_chunks]:
        key_chunks, check_chunks = (hashed.get_column(c).rechunk().get_chunks() for c in ("key", "check"))
    return _blocks([c.to_numpy() for c in key_chunks], [c.to_numpy() for c in check_chunks])


def _blocks(key_chunks: list[np.ndarray], check_chunks: list[np.ndarray]) -> list[_Block]:
    blocks = []
    start = 0
    for key, check in zip(key_chunks, check_chunks, strict=True):
        for at in range(0, len(key), _BLOCK):
            blocks.append((start + at, key[at : at + _BLOCK], check[at : at + _BLOCK]))
        start += len(key)
    return blocks


def _row_keys(keys: pl.DataFrame) -> pl.DataFrame:
    """``key`` and ``check`` (UInt64) of every row.

    From ``_STREAMED_ROWS`` rows on, Polars' streaming engine computes them: it cuts the rows in morsels
    and works on them on all threads, so the hash of the long system URIs (the costliest part) is shared
    by both cores too, and the parts are combined inside the expression. The in-memory engine runs one
    expression on one thread: 10 M rows took 0.13-0.17 s wall there against 0.08-0.10 s streamed."""
    columns = keys.columns
    key: pl.Expr | None = None
    for seed, column in enumerate(columns, start=1):
        part = _key_part(column, keys.schema[column], seed)
        if key is None:
            key = part
            continue
        if _is_categorical(keys, columns[seed - 2]):
            # a Categorical column's small ids are spread over 64 bits before the xor (x * odd: a bijection)
            key = key * pl.lit(_MIX, dtype=pl.UInt64)
        key = key ^ part
    last = columns[-1]
    check = _key_part(last, keys.schema[last], 101) if _is_categorical(keys, last) else pl.col(last).hash(101)
    assert key is not None
    engine = "streaming" if keys.height >= _STREAMED_ROWS else "in-memory"
    return keys.lazy().select(key.alias("key"), check.alias("check")).collect(engine=engine)


def _place(
    blocks: list[_Block], count: int, bits: int, round_: int, slot: np.ndarray, offset: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """One round of bucketing of ``count`` keys: every key that holds its bucket gets, in ``slot``,
    ``offset`` + the number of its bucket among the buckets used. Returns (a position of each of these
    slots, the positions of the keys another key's bucket took, their keys, their checks); None if a
    bucket's key agrees with a key and its check does not.

    The blocks are cut in runs, one thread each (numpy lets go of the GIL), and each block is worked
    through with buffers of ``_BLOCK`` rows: no array the size of the frame is made, so no fresh pages
    to fault in (at 10 M rows the page faults of frame-sized temporaries cost more system time than the
    arithmetic), and a block's buffers stay in cache."""
    size = 1 << bits
    mask = size - 1
    runs = _runs(blocks, count)
    position = np.int32 if count < 2**31 else np.int64
    stride = _SAMPLE if round_ == 0 else 1
    steps = np.arange(0, _BLOCK, stride, dtype=position)
    firsts = [np.full(size, -1, dtype=position) for _ in runs]

    def scatter(i: int) -> None:
        bucket = np.empty(len(steps), dtype=np.int64)
        rows = np.empty(len(steps), dtype=position)
        for start, key, _ in runs[i]:
            sample = key[::stride]
            m = len(sample)
            _bucket(sample, bits, round_, mask, bucket[:m])
            np.add(steps[:m], start, out=rows[:m])
            firsts[i][bucket[:m]] = rows[:m]  # the last row of a bucket represents it

    _in_threads(scatter, range(len(runs)), len(runs))
    first = firsts[0]
    for other in firsts[1:]:
        np.maximum(first, other, out=first)
    used = first >= 0
    # A bucket no (sampled) row took holds a key whose low bits are not its number: no key of that bucket
    # in the first round equals it, so its rows go to the next round. (In later rounds every row's bucket
    # is taken.) The check of such a bucket is never compared, so it is left as it is.
    table_key = np.arange(size, dtype=np.uint64)
    np.bitwise_xor(table_key, np.uint64(1), out=table_key)
    table_check = np.empty(size, dtype=np.uint64)
    table_key[used], table_check[used] = _at(blocks, first[used])
    number = np.cumsum(used, dtype=np.uint32)
    number += np.uint32(offset)
    number -= np.uint32(1)  # buckets before the first used one wrap around: no row reads them

    def verify(run: list[_Block]) -> list[_Block] | None:
        """(position, key, check) of the run's keys that lost their bucket; None if one collided."""
        bucket = np.empty(_BLOCK, dtype=np.int64)
        held = np.empty(_BLOCK, dtype=np.uint64)
        same = np.empty(_BLOCK, dtype=np.bool_)
        agree = np.empty(_BLOCK, dtype=np.bool_)
        lost = []
        for start, key, check in run:
            m = len(key)
            _bucket(key, bits, round_, mask, bucket[:m])
            np.equal(np.take(table_key, bucket[:m], out=held[:m], mode="clip"), key, out=same[:m])
            np.equal(np.take(table_check, bucket[:m], out=held[:m], mode="clip"), check, out=agree[:m])
            if np.greater(same[:m], agree[:m]).any():
                return None
            np.take(number, bucket[:m], out=slot[start : start + m], mode="clip")
            if not same[:m].all():
                here = np.flatnonzero(~same[:m])
                lost.append((start + here, key[here], check[here]))
        return lost

    losts = _in_threads(verify, runs, len(runs))
    if any(run is None for run in losts):
        return None
    lost = [block for run in losts for block in run]  # type: ignore[union-attr]
    if not lost:
        empty = np.empty(0, dtype=np.uint64)
        return first[used].astype(np.int64), np.empty(0, dtype=np.int64), empty, empty
    return (
        first[used].astype(np.int64),
        np.concatenate([b[0] for b in lost]).astype(np.int64),
        np.concatenate([b[1] for b in lost]),
        np.concatenate([b[2] for b in lost]),
    )


def _at(blocks: list[_Block], positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keys, checks) at these positions of the blocks (in order, contiguous), without joining the blocks."""
    order = np.argsort(positions)
    ordered = positions[order]
    starts = np.array([start for start, _, _ in blocks], dtype=np.int64)
    bounds = [*np.searchsorted(ordered, starts).tolist(), len(positions)]
    keys = np.empty(len(positions), dtype=np.uint64)
    checks = np.empty(len(positions), dtype=np.uint64)
    for (start, key, check), lo, hi in zip(blocks, bounds, bounds[1:], strict=False):
        if lo < hi:
            within = ordered[lo:hi] - start
            keys[order[lo:hi]] = key[within]
            checks[order[lo:hi]] = check[within]
    return keys, checks


def _runs(blocks: list[_Block], count: int) -> list[list[_Block]]:
    """The blocks cut in runs of about equal rows worked on in parallel: one per Polars thread, 1 M rows
    or more each."""
    runs = max(1, min(pl.thread_pool_size(), count // _ROWS_PER_THREAD))
    cut = [count * i // runs for i in range(1, runs)]
    out: list[list[_Block]] = [[] for _ in range(runs)]
    for block in blocks:
        out[sum(block[0] >= c for c in cut)].append(block)
    return [run for run in out if run]


def _in_threads(work: Callable[[_T], _R], items: Sequence[_T], threads: int) -> list[_R]:
    """[work(item) for item in items], in up to ``threads`` threads (inline for one)."""
    if threads <= 1 or len(items) <= 1:
        return [work(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(work, items))


def _key_part(column: str, dtype: pl.DataType, seed: int) -> pl.Expr:
    if isinstance(dtype, _CATEGORICAL):
        return pl.col(column).to_physical().cast(pl.UInt64).fill_null(_NULL_ID)
    return _grouping_hash(column, seed)


def _is_categorical(keys: pl.DataFrame, column: str) -> bool:
    return isinstance(keys.schema[column], _CATEGORICAL)


def _grouping_hash(column: str, seed: int) -> pl.Expr:
    return pl.col(column).hash(seed=seed)


def _bucket(keys: np.ndarray, bits: int, round_: int, mask: int, out: np.ndarray) -> np.ndarray:
    """Bucket of each key, into ``out``: its low bits first (a hash is uniform there), then a
    multiplicative mix (Fibonacci hashing: the top bits of key * odd constant)."""
    if round_ == 0:
        return np.bitwise_and(keys.view(np.int64), mask, out=out)
    out[:] = (keys * np.uint64(_MIX + 2 * round_)) >> np.uint64(64 - bits)
    return out


def _exact_slots(keys: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``_slots`` by grouping the key values themselves: slower, exact."""
    exact = keys.with_row_index("row").group_by(keys.columns, maintain_order=True).agg(pl.col("row"))
    rows = exact.get_column("row")
    slot = np.empty(keys.height, dtype=np.uint32)
    slot[rows.explode().to_numpy()] = np.repeat(
        np.arange(exact.height, dtype=np.uint32), rows.list.len().to_numpy()
    )
    return slot, rows.list.first().to_numpy().astype(np.int64)


def _find(vocabulary_id: pl.Series, code: pl.Series, lookup: pl.DataFrame) -> pl.DataFrame:
    """Lookup rows of each (vocabulary_id, code) by binary search on the lookup's key hash.

    Returns the lookup rows with ``slot`` = position of their query; queries without a match are absent.
    """
    queries = pl.DataFrame({"vocabulary_id": vocabulary_id, "code": code}).with_columns(
        key_hash(pl.col("vocabulary_id"), pl.col("code"))
    )
    keys = lookup.get_column(KEY).to_numpy()
    wanted = queries.get_column(KEY).to_numpy()
    # sorted queries walk the sorted keys in one direction, cache-friendly: 50 k queries in 8 M keys take
    # 0.008 CPU s this way against 0.05 in query order
    order = np.argsort(wanted)
    start = np.empty(len(wanted), dtype=np.int64)
    count = np.empty(len(wanted), dtype=np.int64)
    start[order], count[order] = _equal_range(keys, wanted[order])
    query = np.repeat(np.arange(queries.height, dtype=np.uint32), count)
    offset = np.arange(len(query)) - np.repeat(np.cumsum(count) - count, count)
    rows = lookup.drop(KEY).gather(np.repeat(start, count) + offset).with_columns(slot=pl.Series(query))
    return rows.filter(
        pl.col("vocabulary_id").eq_missing(
            queries.get_column("vocabulary_id").gather(rows.get_column("slot"))
        )
        & pl.col("concept_code").eq_missing(queries.get_column("code").gather(rows.get_column("slot")))
    )


def _equal_range(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first position, count) of each of the sorted ``wanted`` values in the sorted ``keys``.

    One binary search per value (the halves of the values in two threads), then the equal keys after it
    counted by stepping: a code has one or a few targets, so this is cheaper than a second search for
    the end of the run (50 k values in 8 M keys: 0.015 CPU s for both searches)."""
    halves = [wanted[: len(wanted) // 2], wanted[len(wanted) // 2 :]]
    start = np.concatenate(
        _in_threads(lambda part: np.searchsorted(keys, part, side="left"), halves, len(halves))
    )
    count = np.zeros(len(wanted), dtype=np.int64)
    alive = np.arange(len(wanted))
    while len(alive):
        at = start[alive] + count[alive]
        inside = at < len(keys)
        alive, at = alive[inside], at[inside]
        alive = alive[keys[at] == wanted[alive]]
        count[alive] += 1
    return start, count


def _attach(
    frame: pl.DataFrame,
    slot: np.ndarray,
    n_slots: int,
    found: pl.DataFrame,
    names: dict[str, str],
    source_value: pl.Expr | pl.Series,
) -> pl.DataFrame:
    """Add ``found``'s columns to every row of ``frame`` through its slot (concept ids 0 and nulls where
    the slot found nothing), and ``source_value`` (an expression on the frame, or a value per slot). Every
    row gets its slot's first found row in place,
    without copying the frame; the further targets of one-to-many slots become extra copies of their
    rows, appended after all rows."""
    found = found.sort("slot", "concept_id", maintain_order=True)
    per_slot = np.bincount(found.get_column("slot").to_numpy(), minlength=n_slots).astype(np.int64)
    first_of_slot = np.cumsum(per_slot) - per_slot
    # one extra all-null row at the end: slots without a match point there
    values = (
        pl.concat([found.select(list(names)), found.select(list(names)).clear(1)])
        .with_columns(pl.col("source_concept_id", "concept_id").fill_null(0))
        .rename(names)
    )
    # per slot: its first found row (or the null row); then one gather per row and column
    per_slot_values = values.gather(np.where(per_slot > 0, first_of_slot, found.height))
    index = pl.Series(slot)
    if isinstance(source_value, pl.Series):
        per_slot_values = per_slot_values.with_columns(source_value)
    several = per_slot > 1
    with ThreadPoolExecutor(max_workers=1) as pool:
        # the rows that fan out are found while Polars gathers (numpy and Polars both let go of the GIL)
        fanned = pool.submit(_rows_of, several, slot) if several.any() else None
        out = frame.with_columns(*_gather(per_slot_values, index).get_columns())
        rows = fanned.result() if fanned is not None else None
    if isinstance(source_value, pl.Expr):
        out = out.with_columns(source_value)
    if rows is None:
        return out
    slot_of_row = slot.take(rows)
    repeats = per_slot[slot_of_row] - 1
    rows = np.repeat(rows, repeats)
    within = 1 + np.arange(len(rows)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
    more = frame.gather(rows).with_columns(
        *values.gather(np.repeat(first_of_slot[slot_of_row], repeats) + within).get_columns(),
        source_value
        if isinstance(source_value, pl.Expr)
        else source_value.gather(np.repeat(slot_of_row, repeats)),
    )
    return pl.concat([out, more])


def _rows_of(flagged: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """The rows whose slot is flagged, in order: ``np.flatnonzero(flagged[slot])`` block by block, so
    the slots are widened to numpy's index type a block at a time, not as one 80 MB array (10 M rows:
    0.02 CPU s against 0.047)."""
    flags = np.empty(min(_BLOCK, len(slot)), dtype=np.bool_)
    rows = []
    for start in range(0, len(slot), _BLOCK):
        m = min(_BLOCK, len(slot) - start)
        np.take(flagged, slot[start : start + m], out=flags[:m])
        if flags[:m].any():
            rows.append(start + np.flatnonzero(flags[:m]))
    return np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)


def _gather(values: pl.DataFrame, index: pl.Series) -> pl.DataFrame:
    """values[index], the columns in parallel (DataFrame.gather); an all-null column (e.g. no "Maps to
    value" among the slots) is made without reading it."""
    empty = [c.name for c in values.get_columns() if c.null_count() == c.len()]
    out = values.drop(empty).gather(index)
    return out.with_columns(pl.lit(None, dtype=values.schema[c]).alias(c) for c in empty).select(
        values.columns
    )


def _check_free(frame: pl.DataFrame, columns: list[str]) -> None:
    taken = [c for c in columns if c in frame.columns]
    if taken:
        raise ValueError(f"the frame already has column(s) {', '.join(taken)}; pass another prefix")
