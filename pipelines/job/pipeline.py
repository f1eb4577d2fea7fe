"""One run of the pipeline, step by step, each step a plain function of the room that owns it."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from pipelines.errors import PasserelleError
from pipelines.mapping.batch import MappedBatch


@dataclass
class RunOptions:
    fhir: list[Path] = field(default_factory=list)
    openehr: list[Path] = field(default_factory=list)
    vocab: Path | None = None  # None: the starter vocabulary bundled in vocab/starter
    warehouse: Path | None = None
    parquet: Path | None = None
    postgres: str | None = None
    omocl: list[Path] = field(default_factory=list)  # extra OMOCL mapping folders
    extraction_date: date | None = None
    quality_out: Path | None = None  # write the DQ results here; None: skip the checks


@dataclass
class RunSummary:
    inputs: dict[str, int] = field(default_factory=dict)
    mapped: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    quarantined: dict[str, int] = field(default_factory=dict)  # by reason code
    rows: dict[str, int] = field(default_factory=dict)  # rows written per OMOP table
    derived: dict[str, int] = field(default_factory=dict)
    coverage: float | None = None  # share of coded rows mapped to a standard concept
    top_unmapped: list[tuple] = field(default_factory=list)  # (vocabulary, code, table, rows)
    vocabulary_version: str = ""
    quality: dict[str, int] = field(default_factory=dict)  # checks by status
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    outputs: dict[str, str] = field(default_factory=dict)  # what was written where


Progress = Callable[[str], None]


STEPS = ("vocabulary", "FHIR", "openEHR", "load", "derived tables", "exports", "quality checks")


def planned_steps(options: RunOptions) -> list[str]:
    """The steps ``run_pipeline`` will take with these options, in order (for progress bars)."""
    skip = {
        "FHIR": not options.fhir,
        "openEHR": not options.openehr,
        "exports": options.parquet is None and options.postgres is None,
        "quality checks": options.quality_out is None,
    }
    return [s for s in STEPS if not skip.get(s, False)]


def check_options(options: RunOptions) -> None:
    """Fail fast, before any work, on options the user must fix."""
    if not options.fhir and not options.openehr:
        raise PasserelleError("nothing to load: give --fhir PATH and/or --openehr PATH")
    if options.warehouse is None and options.parquet is None and options.postgres is None:
        raise PasserelleError("no target: give --warehouse PATH.duckdb, --parquet DIR or --postgres URL")
    for path in [*options.fhir, *options.openehr, *options.omocl]:
        if not path.exists():
            raise PasserelleError(f"{path}: no such file or folder")


def run_pipeline(options: RunOptions, progress: Progress | None = None) -> RunSummary:
    """Run every step; raises PasserelleError on a problem the user can fix."""
    check_options(options)
    say = progress or (lambda _message: None)
    summary = RunSummary()

    @contextmanager
    def step(name: str) -> Iterator[None]:
        say(name)
        started = time.perf_counter()
        yield
        summary.timings[name] = round(time.perf_counter() - started, 3)

    from pipelines.vocab import load_vocabulary

    with step("vocabulary"):
        vocab = load_vocabulary(options.vocab)
        summary.vocabulary_version = vocab.version

    batch = MappedBatch()
    openehr = map_openehr_in_background(options)  # None: mapped here, after FHIR
    if options.fhir:
        from pipelines.sources.fhir import map_fhir

        with step("FHIR"):
            batch = batch.merge(map_fhir(options.fhir, vocab))
    if options.openehr:
        from pipelines.sources.openehr import map_openehr

        with step("openEHR"):  # in the background: the time left to wait once FHIR is done
            mapped = (
                openehr.result()
                if openehr
                else map_openehr(options.openehr, vocab, mapping_dirs=options.omocl or None)
            )
            batch = batch.merge(mapped)
    summary.inputs, summary.mapped, summary.filtered = batch.inputs, batch.mapped, batch.filtered
    _record_coverage(summary, batch, vocab, options)

    from pipelines.warehouse import export_cdm, load_batch, open_targets
    from pipelines.warehouse.targets import system_of_record

    with step("load"):
        targets = open_targets(options.warehouse, options.parquet, options.postgres)
        # Exports wait for the derived tables, so they carry the whole CDM.
        report = load_batch(batch, targets, vocab=vocab, export=False)
        summary.rows = dict(report.rows)
        summary.quarantined = dict(report.quarantined)
    warehouse = system_of_record(targets).path
    summary.outputs["warehouse"] = str(warehouse)

    from pipelines.derive import derive_all
    from pipelines.warehouse.duckdb_file import connect

    with step("derived tables"), connect(warehouse) as con:
        summary.derived = derive_all(con, extraction_date=options.extraction_date)

    if options.parquet is not None or options.postgres is not None:
        with step("exports"):
            export_cdm(warehouse, parquet=options.parquet, postgres=options.postgres, run_id=report.run_id)
        if options.parquet is not None:
            summary.outputs["parquet"] = str(options.parquet)
        if options.postgres is not None:
            summary.outputs["postgres"] = "loaded"  # the URL may carry a password: not printed

    if options.quality_out is not None:
        from pipelines.quality import run_dqd

        with step("quality checks"), connect(warehouse, read_only=True) as con:
            results = run_dqd(con, out_dir=options.quality_out)
            summary.quality = status_counts(results.results)
            summary.outputs["quality report"] = str(options.quality_out / "dq_report.html")
    return summary


def map_openehr_in_background(options: RunOptions) -> Future[MappedBatch] | None:
    """Start mapping the openEHR sources in a second process, so that FHIR maps on the other core.

    Both mappers are CPU-bound (Python and Polars) and write nothing; the warehouse load, DuckDB's
    single writer, starts after both. None when there is nothing to overlap or too little openEHR to
    pay for a second interpreter. The process is spawned, not forked: a fork of a process whose
    Polars threads hold locks can hang.
    """
    if not options.fhir or not options.openehr:
        return None
    size = sum(
        f.stat().st_size
        for path in options.openehr
        for f in ([path] if path.is_file() else path.rglob("*"))
        if f.is_file()
    )
    if size < _BACKGROUND_OPENEHR_BYTES:
        return None
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        return pool.submit(_map_openehr, options.openehr, options.vocab, options.omocl or None)
    finally:
        pool.shutdown(wait=False)  # the submitted mapping still runs; the worker exits after it


# Below this much openEHR JSON the second interpreter (about 2 CPU seconds to import Polars and the
# mappers again) costs more than mapping on the same core after FHIR: measured in docs/performance.md.
_BACKGROUND_OPENEHR_BYTES = 8 * 1024 * 1024


def _map_openehr(
    paths: list[Path], vocab_folder: Path | None, mapping_dirs: list[Path] | None
) -> MappedBatch:
    from pipelines.sources.openehr import map_openehr
    from pipelines.vocab import load_vocabulary

    return map_openehr(paths, load_vocabulary(vocab_folder), mapping_dirs=mapping_dirs)


def _record_coverage(summary: RunSummary, batch: MappedBatch, vocab, options: RunOptions) -> None:
    """Mapping coverage in the summary, and the unmapped codes as a CSV a mapping team takes to Usagi."""
    from pipelines.mapping.concepts import batch_coverage, write_coverage_report

    counts = batch_coverage(batch.tables, vocab)
    total = int(counts["rows"].sum()) if counts.height else 0
    mapped = int(counts.filter("mapped")["rows"].sum()) if counts.height else 0
    summary.coverage = round(mapped / total, 4) if total else None
    summary.top_unmapped = (
        counts.filter(~counts["mapped"])
        .sort("rows", descending=True)
        .head(5)
        .select("source_vocabulary_id", "source_code", "target_table", "rows")
        .rows()
    )
    folder = options.quality_out or (options.warehouse.parent if options.warehouse else options.parquet)
    if folder is not None and total > mapped:
        report = Path(folder) / "unmapped_codes.csv"
        write_coverage_report(counts, report)
        summary.outputs["unmapped codes (Usagi CSV)"] = str(report)


def status_counts(results: list) -> dict[str, int]:
    """DQD checks by status (PASS, FAIL, NOT APPLICABLE, ERROR)."""
    return dict(Counter(r.status for r in results))
