"""Concept mapping at Athena scale: Passerelle's vectorized resolution vs a per-row dict and DuckDB SQL.

    .venv/bin/python benchmarks/concept_mapping.py --rows 10000000

What it does, in one process:

1. writes a synthetic vocabulary in Athena format (tab-separated, YYYYMMDD dates): ``--concepts``
   concepts (default 8 M) in six vocabularies, ``--maps-to`` "Maps to" rows (default 6 M; 2 % of the
   mapped source concepts map one-to-many);
2. loads it with ``load_vocabulary`` twice: the first load parses the CSVs and builds the Parquet cache
   and the code lookup, the second reuses the cache (it still hashes every byte of the CSVs);
3. draws ``--rows`` source rows over ``--distinct`` distinct (FHIR system URI, code) pairs (default
   50 k; 2 % are codes the vocabulary does not have);
4. times the mapping step three ways on the same rows and the same loaded lookup (best of ``--repeat``,
   wall and CPU seconds of all threads):
   - ``resolve_concepts`` (distinct pairs resolved once, put back on the rows by position) on text
     (Utf8) system and code columns, what the FHIR and openEHR readers produce: the headline
     ``rows_per_s``; then on the same rows as Categorical columns (``categorical_rows_per_s``), what a
     reader could hand over instead; the cast is timed apart and not counted;
   - DuckDB SQL, two forms of the same mapping (every row joined to the lookup; the distinct pairs
     resolved first, then joined back), result fetched as Arrow; the faster form is DuckDB's figure;
   - the naive baseline: a Python loop with one dict lookup per row, measured on the first
     ``--naive-rows`` rows (default 1 M) — its rows/s is that measurement, not an extrapolation; its dict
     holds only the pairs that occur in the rows, which favours it. ``speedup_vs_naive`` is against the
     loop alone; ``speedup_vs_naive_frame_to_frame`` against the same task as ours, the columns taken
     out of the frame and the result put back into one;
5. checks the three give the same rows (and the Categorical input the same frame as the text input),
   and samples RSS every 10 ms.

The last line printed is one JSON object: rows_per_s, peak_rss_mb (the process's RSS peak while the
text-input mapping runs, vocabulary lookup and source rows included; each repetition starts after the
previous result is let go), speedup_vs_naive, speedup_vs_duckdb and the other figures. The in-memory
index of the lookup (``index_s``) is built once per process, before the first mapping, and reported
apart.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.mapping.concepts import resolve_concepts
from pipelines.vocab import load_vocabulary
from pipelines.vocab.aliases import vocabulary_ids

# (vocabulary_id, FHIR system, domain, share of concepts, standard?)
_VOCABULARIES = [
    ("SNOMED", "http://snomed.info/sct", "Condition", 0.15, True),
    ("LOINC", "http://loinc.org", "Measurement", 0.05, True),
    ("RxNorm", "http://www.nlm.nih.gov/research/umls/rxnorm", "Drug", 0.05, True),
    ("ICD10CM", "http://hl7.org/fhir/sid/icd-10-cm", "Condition", 0.20, False),
    ("NDC", "http://hl7.org/fhir/sid/ndc", "Drug", 0.40, False),
    ("ICD10", "http://hl7.org/fhir/sid/icd-10", "Condition", 0.15, False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="source rows to map")
    parser.add_argument("--concepts", type=int, default=8_000_000)
    parser.add_argument("--maps-to", type=int, default=6_000_000, dest="maps_to")
    parser.add_argument("--distinct", type=int, default=50_000, help="distinct (system, code) pairs")
    parser.add_argument("--naive-rows", type=int, default=1_000_000, dest="naive_rows")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions (best is reported)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the synthetic vocabulary here")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="passerelle-bench-"))
    os.environ.setdefault("PASSERELLE_CACHE_DIR", str(workdir / "cache"))
    sampler = _RssSampler()
    figures: dict[str, float | int | str] = {"rows": args.rows, "distinct_pairs": args.distinct}
    rng = np.random.default_rng(args.seed)
    try:
        folder = workdir / "athena"
        if not (folder / "CONCEPT.csv").exists():
            with _timed("write synthetic Athena CSVs", figures, "write_csv_s"):
                _write_vocabulary(folder, args.concepts, args.maps_to, rng)
        shutil.rmtree(os.environ["PASSERELLE_CACHE_DIR"], ignore_errors=True)
        with _timed("load #1: parse CSVs, build Parquet cache and lookup", figures, "cache_build_s"):
            load_vocabulary(folder)
        with _timed("load #2: hash CSVs, reuse cache, read lookup", figures, "cache_load_s"):
            vocab = load_vocabulary(folder)
            lookup = vocab.lookup()
            vocab.vocabulary_ids()
        with _timed(
            "index the lookup in memory (once per process, before the first mapping)", figures, "index_s"
        ):
            vocab.indexed_lookup()
        figures["concepts"] = vocab.tables["concept"]["rows"]
        figures["lookup_rows"] = lookup.height
        _compare_parsing(folder, vocab.cache_dir, figures)

        # a generator of its own: the same rows whether or not this run wrote the CSVs
        frame = _source_rows(lookup, args.rows, args.distinct, np.random.default_rng([args.seed, 1]))
        print(f"source rows: {frame.height:,}, distinct pairs: {frame.select('system', 'code').n_unique():,}")

        # The headline: text (Utf8) system and code columns, what the FHIR and openEHR readers produce.
        best, cpu, ours = _time_mapping(frame, vocab, args.repeat, sampler, "vectorized")
        figures["mapping_s"] = round(best, 3)
        figures["mapping_cpu_s"] = round(cpu, 3)  # CPU time of all threads: tells a loaded machine apart
        figures["rows_per_s"] = round(args.rows / best)
        figures["output_rows"] = ours.height
        print(
            f"vectorized resolve_concepts, Utf8 input (what the readers produce): {best:.3f} s wall "
            f"({cpu:.3f} s CPU), {args.rows / best:,.0f} rows/s, {ours.height:,} rows out"
        )
        figures["load_average_1min"] = round(os.getloadavg()[0], 1)

        # The same rows with Categorical system and code columns, as a reader could hand them over; the
        # cast is the price a reader would pay instead, shown beside it, not counted in the mapping.
        started = time.perf_counter()
        coded = frame.with_columns(pl.col("system", "code").cast(pl.Categorical))
        figures["categorical_cast_s"] = round(time.perf_counter() - started, 3)
        cat_best, cat_cpu, cat_out = _time_mapping(coded, vocab, args.repeat, sampler, "categorical")
        if not cat_out.drop("system", "code").equals(ours.drop("system", "code")):
            raise SystemExit("Categorical input gives another result than Utf8 input")
        del cat_out, coded
        figures["categorical_mapping_s"] = round(cat_best, 3)
        figures["categorical_mapping_cpu_s"] = round(cat_cpu, 3)
        figures["categorical_rows_per_s"] = round(args.rows / cat_best)
        print(
            f"vectorized resolve_concepts, Categorical input (cast beforehand: "
            f"{figures['categorical_cast_s']:.3f} s, not counted): {cat_best:.3f} s wall "
            f"({cat_cpu:.3f} s CPU), {args.rows / cat_best:,.0f} rows/s, same result as Utf8 input"
        )

        duck_s, duck_cpu, duck = _duckdb(frame, lookup, vocab, args.repeat)
        figures["duckdb_s"] = round(duck_s, 3)
        figures["duckdb_cpu_s"] = round(duck_cpu, 3)
        figures["duckdb_rows_per_s"] = round(args.rows / duck_s)
        print(
            f"DuckDB SQL join: {duck_s:.3f} s wall ({duck_cpu:.3f} s CPU), {args.rows / duck_s:,.0f} rows/s"
        )

        naive_rows = min(args.naive_rows, args.rows)
        naive_s, naive_cpu, framed_s, framed_cpu, naive_out = _naive(frame.head(naive_rows), lookup, vocab)
        figures["naive_rows_measured"] = naive_rows
        figures["naive_rows_per_s"] = round(naive_rows / naive_s)
        figures["naive_cpu_s"] = round(naive_cpu, 3)
        figures["naive_frame_to_frame_rows_per_s"] = round(naive_rows / framed_s)
        print(
            f"naive per-row dict on {naive_rows:,} rows: {naive_s:.3f} s wall ({naive_cpu:.3f} s CPU), "
            f"{naive_rows / naive_s:,.0f} rows/s; frame to frame (columns to lists, loop, result to a "
            f"frame): {framed_s:.3f} s wall ({framed_cpu:.3f} s CPU), {naive_rows / framed_s:,.0f} rows/s"
        )

        _check_same(ours, duck, naive_out, naive_rows)
        figures["speedup_vs_naive"] = round(figures["rows_per_s"] / figures["naive_rows_per_s"], 1)
        figures["speedup_vs_naive_frame_to_frame"] = round(
            figures["rows_per_s"] / figures["naive_frame_to_frame_rows_per_s"], 1
        )
        figures["speedup_vs_duckdb"] = round(figures["rows_per_s"] / figures["duckdb_rows_per_s"], 2)
        # the same ratios in CPU time, which a machine shared with other work distorts less
        figures["cpu_speedup_vs_naive"] = round((naive_cpu / naive_rows) / (cpu / args.rows), 1)
        figures["cpu_speedup_vs_duckdb"] = round(duck_cpu / cpu, 2)
        figures["peak_rss_mb"] = round(sampler.peaks["vectorized"])
        figures["process_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(
            f"peak RSS during the vectorized mapping: {figures['peak_rss_mb']:,} MB "
            f"(whole process, CSV writing and baselines included: {figures['process_peak_rss_mb']:,} MB)"
        )
        print(json.dumps(figures))
    finally:
        sampler.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def _time_mapping(
    frame: pl.DataFrame, vocab, repeat: int, sampler: _RssSampler, window: str
) -> tuple[float, float, pl.DataFrame]:
    """Best wall and CPU seconds of ``repeat`` runs of resolve_concepts, and its result."""
    best = cpu = float("inf")
    for _ in range(repeat):
        out = None  # the previous result is let go first, as a pipeline would
        with sampler.window(window):
            started, started_cpu = time.perf_counter(), time.process_time()
            out = resolve_concepts(frame, vocab)
            best = min(best, time.perf_counter() - started)
            cpu = min(cpu, time.process_time() - started_cpu)
    return best, cpu, out


def _write_vocabulary(folder: Path, concepts: int, maps_to: int, rng: np.random.Generator) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shares = np.array([v[3] for v in _VOCABULARIES])
    counts = np.floor(shares / shares.sum() * concepts).astype(np.int64)
    counts[0] += concepts - counts.sum()
    frames = []
    next_id = 1_000_000
    for (vocabulary_id, _, domain, _, standard), n in zip(_VOCABULARIES, counts, strict=True):
        ids = np.arange(next_id, next_id + n, dtype=np.int64)
        next_id += n
        frames.append(
            pl.DataFrame({"concept_id": ids}).with_columns(
                concept_name=pl.lit(f"{vocabulary_id} concept ") + pl.col("concept_id").cast(pl.Utf8),
                domain_id=pl.lit(domain),
                vocabulary_id=pl.lit(vocabulary_id),
                concept_class_id=pl.lit("Synthetic"),
                standard_concept=pl.lit("S" if standard else ""),
                concept_code=pl.col("concept_id").cast(pl.Utf8) + pl.lit("-" + vocabulary_id[0]),
                valid_start_date=pl.lit("19700101"),
                valid_end_date=pl.lit("20991231"),
                invalid_reason=pl.lit(""),
            )
        )
    concept = pl.concat(frames)
    concept.write_csv(folder / "CONCEPT.csv", separator="\t", quote_style="never")

    standard_ids = concept.filter(pl.col("standard_concept") == "S")["concept_id"].to_numpy()
    source_ids = concept.filter(pl.col("standard_concept") == "")["concept_id"].to_numpy()
    # maps_to rows over the source concepts: most map to one target, 2 % of them to two
    mapped = min(len(source_ids), int(maps_to / 1.02))
    chosen = rng.choice(source_ids, size=mapped, replace=False)
    twice = chosen[: maps_to - mapped]
    sources = np.concatenate([chosen, twice])
    targets = rng.choice(standard_ids, size=len(sources))
    pl.DataFrame(
        {
            "concept_id_1": sources,
            "concept_id_2": targets,
            "relationship_id": "Maps to",
            "valid_start_date": "19700101",
            "valid_end_date": "20991231",
            "invalid_reason": "",
        }
    ).write_csv(folder / "CONCEPT_RELATIONSHIP.csv", separator="\t", quote_style="never")
    (folder / "VOCABULARY.csv").write_text(
        "vocabulary_id\tvocabulary_name\tvocabulary_reference\tvocabulary_version\tvocabulary_concept_id\n"
        "None\tOMOP Standardized Vocabularies\tsynthetic\tsynthetic benchmark vocabulary\t0\n"
    )


def _source_rows(lookup: pl.DataFrame, rows: int, distinct: int, rng: np.random.Generator) -> pl.DataFrame:
    systems = pl.DataFrame(
        {"vocabulary_id": [v[0] for v in _VOCABULARIES], "system": [v[1] for v in _VOCABULARIES]}
    )
    known = (
        lookup.select("vocabulary_id", "concept_code")
        .unique(maintain_order=True)  # a stable order, so the seed gives the same sample every run
        .sample(int(distinct * 0.98), seed=int(rng.integers(1 << 31)))
    )
    unknown = pl.DataFrame(
        {
            "vocabulary_id": rng.choice([v[0] for v in _VOCABULARIES], distinct - known.height),
            "concept_code": [f"UNKNOWN-{i}" for i in range(distinct - known.height)],
        }
    )
    pairs = (
        pl.concat([known, unknown]).join(systems, on="vocabulary_id").select("system", code="concept_code")
    )
    # every pair once, then a skewed draw: a few codes are very frequent, as in real data
    picks = np.concatenate(
        [np.arange(min(rows, pairs.height)), rng.zipf(1.3, size=max(0, rows - pairs.height)) % pairs.height]
    )
    return pairs[picks].with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"))


def _duckdb(
    frame: pl.DataFrame, lookup: pl.DataFrame, vocab, repeat: int
) -> tuple[float, float, pl.DataFrame]:
    systems = frame.get_column("system").unique().to_list()
    alias = pl.DataFrame(
        {"system": systems, "vocabulary_id": vocabulary_ids(systems, vocab.vocabulary_ids())}
    )
    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count()}")
    con.register("source_rows", frame.to_arrow())
    con.register("alias", alias.to_arrow())
    con.register("lookup", lookup.to_arrow())
    # Two forms of the same mapping; the faster one is DuckDB's figure. "direct" joins every row to the
    # lookup; "distinct first" resolves the distinct pairs, then joins them back (our method, in SQL).
    queries = {
        "direct": """
            SELECT s.*, coalesce(l.source_concept_id, 0) AS source_concept_id,
                   coalesce(l.concept_id, 0) AS concept_id, l.domain_id, l.value_as_concept_id,
                   s.code AS source_value
            FROM source_rows s
            LEFT JOIN alias a ON a.system = s.system
            LEFT JOIN lookup l ON l.vocabulary_id = a.vocabulary_id AND l.concept_code = s.code
        """,
        "distinct first": """
            WITH wanted AS (SELECT DISTINCT system, code FROM source_rows),
            resolved AS (
                SELECT w.system, w.code, l.source_concept_id, l.concept_id, l.domain_id,
                       l.value_as_concept_id
                FROM wanted w
                JOIN alias a ON a.system = w.system
                JOIN lookup l ON l.vocabulary_id = a.vocabulary_id AND l.concept_code = w.code
            )
            SELECT s.*, coalesce(r.source_concept_id, 0) AS source_concept_id,
                   coalesce(r.concept_id, 0) AS concept_id, r.domain_id, r.value_as_concept_id,
                   s.code AS source_value
            FROM source_rows s
            LEFT JOIN resolved r ON r.system = s.system AND r.code = s.code
        """,
    }
    best = cpu = float("inf")
    result = None
    for form, sql in queries.items():
        form_best = form_cpu = float("inf")
        for _ in range(repeat):
            started, started_cpu = time.perf_counter(), time.process_time()
            table = con.sql(sql).to_arrow_table()  # materialized, as the Polars result is
            form_best = min(form_best, time.perf_counter() - started)
            form_cpu = min(form_cpu, time.process_time() - started_cpu)
        print(f"  DuckDB SQL, {form}: {form_best:.3f} s wall ({form_cpu:.3f} s CPU)")
        if form_best < best:
            best, cpu, result = form_best, form_cpu, table
        del table
    con.close()
    return best, cpu, pl.from_arrow(result)


def _naive(frame: pl.DataFrame, lookup: pl.DataFrame, vocab) -> tuple[float, float, float, float, dict]:
    systems = frame.get_column("system").unique().to_list()
    alias = dict(zip(systems, vocabulary_ids(systems, vocab.vocabulary_ids()), strict=True))
    wanted = (
        frame.select("system", "code")
        .unique()
        .with_columns(vocabulary_id=pl.col("system").replace_strict(alias, default=None))
    )
    relevant = lookup.join(
        wanted, left_on=["vocabulary_id", "concept_code"], right_on=["vocabulary_id", "code"]
    )
    table: dict[tuple[str, str], list[tuple]] = {}
    for vocabulary_id, code, source_id, concept_id, domain, value in relevant.select(
        "vocabulary_id", "concept_code", "source_concept_id", "concept_id", "domain_id", "value_as_concept_id"
    ).iter_rows():
        table.setdefault((vocabulary_id, code), []).append((source_id, concept_id, domain, value))
    framed, framed_cpu = time.perf_counter(), time.process_time()
    systems_col = frame.get_column("system").to_list()
    codes_col = frame.get_column("code").to_list()
    rows_col = frame.get_column("row").to_list()
    miss = [(0, 0, None, None)]
    started, started_cpu = time.perf_counter(), time.process_time()
    out: dict[str, list] = {k: [] for k in ("row", "source_concept_id", "concept_id", "domain_id", "value")}
    for row, system, code in zip(rows_col, systems_col, codes_col, strict=True):
        for source_id, concept_id, domain, value in table.get((alias.get(system), code), miss):
            out["row"].append(row)
            out["source_concept_id"].append(source_id)
            out["concept_id"].append(concept_id)
            out["domain_id"].append(domain)
            out["value"].append(value)
    loop_s, loop_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    # The same task as the vectorized step, frame in and frame out: the loop's figure plus taking the
    # columns out of the frame and putting the result back into one. Reported beside the loop's.
    pl.DataFrame(out, schema=_NAIVE_OUT)
    framed_s, framed_cpu = time.perf_counter() - framed, time.process_time() - framed_cpu
    return loop_s, loop_cpu, framed_s, framed_cpu, out


_NAIVE_OUT = {
    "row": pl.Int64,
    "source_concept_id": pl.Int64,
    "concept_id": pl.Int64,
    "domain_id": pl.Utf8,
    "value": pl.Int64,
}


def _check_same(ours: pl.DataFrame, duck: pl.DataFrame, naive: dict[str, list], naive_rows: int) -> None:
    def digest(frame: pl.DataFrame) -> tuple:
        return (
            frame.height,
            int(frame["concept_id"].cast(pl.Int64).sum()),
            int((frame["concept_id"] == 0).sum()),
        )

    if digest(ours) != digest(duck):
        raise SystemExit(f"DuckDB result differs: {digest(ours)} vs {digest(duck)}")
    head = ours.filter(pl.col("row") < naive_rows)
    naive_frame = pl.DataFrame({"concept_id": naive["concept_id"]})
    if digest(head) != digest(naive_frame):
        raise SystemExit(f"naive result differs: {digest(head)} vs {digest(naive_frame)}")
    print("check: vectorized, DuckDB and naive results agree")


def _compare_parsing(folder: Path, cache_dir: Path, figures: dict) -> None:
    """Reading CONCEPT and CONCEPT_RELATIONSHIP: Athena CSV parse vs the typed Parquet cache."""
    started = time.perf_counter()
    for name in ("CONCEPT", "CONCEPT_RELATIONSHIP"):
        pl.read_csv(folder / f"{name}.csv", separator="\t", quote_char=None, infer_schema=False)
    csv_s = time.perf_counter() - started
    started = time.perf_counter()
    for name in ("concept", "concept_relationship"):
        pl.read_parquet(cache_dir / f"{name}.parquet")
    parquet_s = time.perf_counter() - started
    figures["csv_parse_s"] = round(csv_s, 3)
    figures["parquet_read_s"] = round(parquet_s, 3)
    print(f"read CONCEPT + CONCEPT_RELATIONSHIP: CSV {csv_s:.2f} s, cached Parquet {parquet_s:.2f} s")


@contextmanager
def _timed(label: str, figures: dict, key: str):
    started = time.perf_counter()
    yield
    figures[key] = round(time.perf_counter() - started, 2)
    print(f"{label}: {figures[key]:.2f} s")


class _RssSampler:
    """Samples this process's RSS every 10 ms; ``window(name)`` records the peak inside a block."""

    def __init__(self) -> None:
        self.peaks: dict[str, float] = {}
        self._current: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @contextmanager
    def window(self, name: str):
        self.peaks.setdefault(name, _rss_mb())
        self._current = name
        try:
            yield
        finally:
            self.peaks[name] = max(self.peaks[name], _rss_mb())
            self._current = None

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            name = self._current
            if name is not None:
                self.peaks[name] = max(self.peaks.get(name, 0.0), _rss_mb())


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


if __name__ == "__main__":
    main()
