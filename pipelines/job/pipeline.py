"""One run of the pipeline, step by step, each step a plain function of the room that owns it."""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from pipelines.errors import PasserelleError
from pipelines.mapping.batch import MappedBatch, read_batch, write_batch

if TYPE_CHECKING:
    from pipelines.vocab import Vocabulary
    from pipelines.warehouse import LoadReport


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
    # FHIR resources per batch (openEHR: a fifth as many compositions). The run holds one batch at a
    # time, so this bounds its memory whatever the size of the input.
    batch_resources: int = 250_000


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


STEPS = ("vocabulary", "read, map and load", "derived tables", "exports", "quality checks")


def planned_steps(options: RunOptions) -> list[str]:
    """The steps ``run_pipeline`` will take with these options, in order (for progress bars)."""
    skip = {
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

    from pipelines.warehouse import export_cdm, open_targets
    from pipelines.warehouse.targets import system_of_record

    with step("read, map and load"):
        targets = open_targets(options.warehouse, options.parquet, options.postgres)
        tally = Tally(vocab)
        # Exports wait for the derived tables, so they carry the whole CDM.
        report = load_sources(options, vocab, targets, tally)
        summary.inputs, summary.mapped, summary.filtered = tally.inputs, tally.mapped, tally.filtered
        summary.rows = dict(report.rows)
        summary.quarantined = dict(report.quarantined)
        summary.timings.update(tally.timings)  # making the batches; the rest of the step is the load
    _record_coverage(summary, tally.coverage(), options)
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


class Tally:
    """What the batches of a run add up to: the mappers' accounting, the coverage counts of the mapped
    rows, and the seconds spent making the batches (the rest of the streamed step is the load)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.inputs: dict[str, int] = {}
        self.mapped: dict[str, int] = {}
        self.filtered: dict[str, int] = {}
        self.timings: dict[str, float] = {}
        self.batches = 0
        self._coverage: list[pl.DataFrame] = []

    def count(self, batch: MappedBatch) -> MappedBatch:
        from pipelines.mapping.concepts import batch_coverage

        for total, part in (
            (self.inputs, batch.inputs),
            (self.mapped, batch.mapped),
            (self.filtered, batch.filtered),
        ):
            for key, n in part.items():
                total[key] = total.get(key, 0) + n
        self._coverage.append(batch_coverage(batch.tables, self.vocab))
        self.batches += 1
        return batch

    def timed(self, name: str, batches: Iterator[MappedBatch]) -> Iterator[MappedBatch]:
        """``batches``, the time spent making each one added to ``timings[name]``."""
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            self.add_time(name, time.perf_counter() - started)
            if batch is None:
                return
            yield batch
            del batch  # let it go before the next one is made, not after

    def add_time(self, name: str, seconds: float) -> None:
        self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)

    def coverage(self) -> pl.DataFrame | None:
        """``batch_coverage`` counts over every batch of the run (None when nothing was counted)."""
        if not self._coverage:
            return None
        counts = pl.concat(self._coverage, how="vertical_relaxed")
        return (
            counts.group_by("source_vocabulary_id", "source_code", "target_table", "mapped")
            .agg(rows=pl.col("rows").sum(), source_name=pl.col("source_name").first())
            .select(counts.columns)
        )


def load_sources(options: RunOptions, vocab: Vocabulary, targets: list, tally: Tally) -> LoadReport:
    """Read, map and load the run's sources batch after batch, in one warehouse transaction.

    FHIR is read and mapped here; openEHR, when there is enough of it, in a second process whose
    batches wait on disk until the load takes them (both mappers are CPU-bound; DuckDB stays the one
    writer). ``tally`` adds up the batches' accounting and coverage.
    """
    from pipelines.warehouse import load_batches

    batches = _made_ahead(_batches(options, vocab, tally), tally)
    try:
        return load_batches(batches, targets, vocab=vocab, export=False)
    finally:
        batches.close()  # a failed load stops the mapping thread and the openEHR process


def _made_ahead(batches: Iterator[MappedBatch], tally: Tally) -> Iterator[MappedBatch]:
    """``batches``, the next one made in a thread while the caller loads this one.

    DuckDB releases the GIL while it loads, and Polars while it maps, so mapping batch k + 1 beside
    the load of batch k uses the second core when openEHR leaves it free. At most two batches are
    in memory: the one being loaded and the one being made. The time the load waits for a batch is
    ``tally.timings["waiting for batches"]``; the rest of the streamed step is the load's own.
    """
    handed: queue_module.Queue = queue_module.Queue()
    permits = threading.Semaphore(1)  # one batch made ahead at a time
    stop = threading.Event()

    def make() -> None:
        try:
            while True:
                permits.acquire()
                if stop.is_set():
                    return
                batch = next(batches, None)
                handed.put(batch)
                if batch is None:
                    return
                del batch
        except BaseException as error:  # raised again in the loading thread
            handed.put(error)
        finally:
            batches.close()

    maker = threading.Thread(target=make, name="passerelle-batches", daemon=True)
    maker.start()
    try:
        while True:
            started = time.perf_counter()
            item = handed.get()
            tally.add_time("waiting for batches", time.perf_counter() - started)
            if isinstance(item, BaseException):
                raise item
            if item is None:
                return
            permits.release()  # make the next one while this one loads
            yield item
            del item
    finally:
        stop.set()
        permits.release()
        maker.join()


def _batches(options: RunOptions, vocab: Vocabulary, tally: Tally) -> Iterator[MappedBatch]:
    from pipelines.sources.fhir import iter_fhir_batches
    from pipelines.sources.openehr import iter_openehr_batches

    background = OpenEhrWorker.start(options)
    try:
        if options.fhir:
            fhir = iter_fhir_batches(options.fhir, vocab, max_resources=options.batch_resources)
            for batch in tally.timed("FHIR read+map", fhir):
                yield tally.count(batch)
                del batch
                if background is not None:  # what the other core has made meanwhile
                    for ready in tally.timed("openEHR (waited for)", background.ready()):
                        yield tally.count(ready)
                        del ready
        if background is not None:
            for ready in tally.timed("openEHR (waited for)", background.rest()):
                yield tally.count(ready)
                del ready
        elif options.openehr:
            openehr = iter_openehr_batches(
                options.openehr,
                vocab,
                mapping_dirs=options.omocl or None,
                max_compositions=_openehr_batch(options.batch_resources),
            )
            yield from map(tally.count, tally.timed("openEHR read+map", openehr))
    finally:
        if background is not None:
            background.stop()


def _openehr_batch(resources: int) -> int:
    """An openEHR batch of about the same bytes as a FHIR batch: a composition is about 8 times a
    FHIR resource (216 MB for 28.6 k compositions, 1,010 MB for 1.25 M resources at 10 k patients),
    and its mapping holds more per byte."""
    return max(1, resources // 5)


class OpenEhrWorker:
    """openEHR mapped in a second process, batch after batch, while FHIR maps in the run's own.

    Each batch is staged on disk (``write_batch``) and its folder sent over a queue; the run loads it
    when it comes to it (``read_batch``), so neither process holds more than a batch or two. The
    process is spawned, not forked: a fork of a process whose Polars threads hold locks can hang.
    """

    def __init__(self, process, queue, folder: tempfile.TemporaryDirectory) -> None:
        self._process, self._queue, self._folder = process, queue, folder
        self._done = False

    @classmethod
    def start(cls, options: RunOptions) -> OpenEhrWorker | None:
        """The worker mapping ``options.openehr``; None when there is nothing to overlap or too little
        openEHR to pay for a second interpreter."""
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
        context = multiprocessing.get_context("spawn")
        folder = tempfile.TemporaryDirectory(prefix="passerelle-openehr-")
        queue = context.Queue()
        process = context.Process(
            target=_map_openehr_batches,
            args=(
                options.openehr,
                options.vocab,
                options.omocl or None,
                _openehr_batch(options.batch_resources),
                Path(folder.name),
                queue,
            ),
            daemon=True,
        )
        process.start()
        return cls(process, queue, folder)

    def ready(self) -> Iterator[MappedBatch]:
        """The batches made so far, without waiting."""
        while not self._done:
            try:
                item = self._queue.get_nowait()
            except queue_module.Empty:
                return
            batch = self._take(item)
            if batch is not None:
                yield batch

    def rest(self) -> Iterator[MappedBatch]:
        """Every batch still to come, waiting for each."""
        while not self._done:
            try:
                item = self._queue.get(timeout=1)
            except queue_module.Empty:
                if not self._process.is_alive():
                    raise PasserelleError(
                        f"the openEHR mapping process ended without finishing (exit code "
                        f"{self._process.exitcode}); run again with fewer sources to see its error"
                    ) from None
                continue
            batch = self._take(item)
            if batch is not None:
                yield batch

    def _take(self, item) -> MappedBatch | None:
        if isinstance(item, BaseException):
            self._done = True
            raise item
        if item is None:
            self._done = True
            return None
        folder = Path(item)
        batch = read_batch(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return batch

    def stop(self) -> None:
        """End the process (if the run stopped early) and remove its staged batches."""
        if self._process.is_alive() and not self._done:
            self._process.terminate()
        self._process.join()
        self._queue.close()
        self._folder.cleanup()


# Below this much openEHR JSON the second interpreter (about 2 CPU seconds to import Polars and the
# mappers again) costs more than mapping on the same core after FHIR: measured in docs/performance.md.
_BACKGROUND_OPENEHR_BYTES = 8 * 1024 * 1024


def _map_openehr_batches(
    paths: list[Path],
    vocab_folder: Path | None,
    mapping_dirs: list[Path] | None,
    max_compositions: int,
    folder: Path,
    queue,
) -> None:
    """The worker's body: each batch written to ``folder`` and its path queued; then None (the end)
    or the exception that stopped it."""
    from pipelines.sources.openehr import iter_openehr_batches
    from pipelines.vocab import load_vocabulary

    try:
        vocab = load_vocabulary(vocab_folder)
        batches = iter_openehr_batches(
            paths, vocab, mapping_dirs=mapping_dirs, max_compositions=max_compositions
        )
        for number, batch in enumerate(batches, start=1):
            staged = folder / f"batch-{number:05d}"
            write_batch(batch, staged)
            del batch
            queue.put(str(staged))
        queue.put(None)
    except BaseException as error:  # sent whole: the run raises it as if mapped in its own process
        queue.put(error)


def _record_coverage(summary: RunSummary, counts: pl.DataFrame | None, options: RunOptions) -> None:
    """Mapping coverage in the summary, and the unmapped codes as a CSV a mapping team takes to Usagi."""
    from pipelines.mapping.concepts import write_coverage_report

    if counts is None:
        return
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
