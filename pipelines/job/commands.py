"""`passerelle run` and `passerelle demo`: the whole job from a terminal, with progress and a summary."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.job.pipeline import RunOptions, RunSummary, check_options, planned_steps, run_pipeline

_console = Console(stderr=True)


def _paths(values: tuple[Path, ...]) -> list[Path]:
    return [Path(v) for v in values]


@click.command()
@click.option(
    "--fhir",
    "fhir",
    multiple=True,
    type=click.Path(path_type=Path),
    help="FHIR R4 file or folder (Bundles, resources, Bulk NDJSON); repeatable.",
)
@click.option(
    "--openehr",
    "openehr",
    multiple=True,
    type=click.Path(path_type=Path),
    help="openEHR AQL result set or folder per EHR; repeatable.",
)
@click.option(
    "--vocab",
    type=click.Path(path_type=Path, file_okay=False),
    help="Athena vocabulary folder (default: the bundled starter vocabulary).",
)
@click.option("--warehouse", type=click.Path(path_type=Path, dir_okay=False), help="DuckDB file to load.")
@click.option(
    "--parquet", type=click.Path(path_type=Path, file_okay=False), help="Also export to this folder."
)
@click.option("--postgres", help="Also load into this PostgreSQL database (postgresql://...).")
@click.option(
    "--omocl",
    multiple=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Extra folder of OMOCL mapping files for openEHR; repeatable.",
)
@click.option(
    "--extraction-date",
    type=click.DateTime(["%Y-%m-%d"]),
    help="Data extraction date; caps observation periods (default: today).",
)
@click.option(
    "--quality-out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Run the Data Quality Dashboard checks and write results here.",
)
def run(fhir, openehr, vocab, warehouse, parquet, postgres, omocl, extraction_date, quality_out) -> None:
    """Map FHIR and openEHR sources to OMOP CDM v5.4 and load them (no Dagster needed)."""
    options = RunOptions(
        fhir=_paths(fhir),
        openehr=_paths(openehr),
        vocab=vocab,
        warehouse=warehouse,
        parquet=parquet,
        postgres=postgres,
        omocl=_paths(omocl),
        extraction_date=extraction_date.date() if extraction_date else None,
        quality_out=quality_out,
    )
    summary = _run_with_progress(options)
    print_summary(summary)


def _run_with_progress(options: RunOptions) -> RunSummary:
    """One bar over the run's steps; each step's name and time are kept on screen as it finishes."""
    check_options(options)  # before the bar, so an error is one clean line
    steps = planned_steps(options)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=_console, transient=True) as bar:
        task = bar.add_task("starting", total=len(steps))
        started: list[str] = []

        def progress(step: str) -> None:
            if started:
                bar.advance(task)
            started.append(step)
            bar.update(task, description=step)

        summary = run_pipeline(options, progress)
        bar.advance(task)
    return summary


def print_summary(summary: RunSummary) -> None:
    console = Console()
    inputs = Table(title="Input records", title_justify="left")
    for column in ("type", "records", "mapped", "filtered or quarantined"):
        inputs.add_column(column, justify="right" if column != "type" else "left")
    for kind, n in sorted(summary.inputs.items()):
        mapped = summary.mapped.get(kind, 0)
        inputs.add_row(kind, f"{n:,}", f"{mapped:,}", f"{n - mapped:,}")
    console.print(inputs)
    rows = Table(title="OMOP rows written", title_justify="left")
    rows.add_column("table")
    rows.add_column("rows", justify="right")
    for table, n in sorted({**summary.rows, **summary.derived}.items()):
        rows.add_row(table, f"{n:,}")
    console.print(rows)
    if summary.filtered:
        console.print(
            "Filtered by rule: " + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.filtered.items()))
        )
    quarantined = sum(summary.quarantined.values())
    console.print(
        f"Quarantined: {quarantined:,}"
        + (
            " (" + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.quarantined.items())) + ")"
            if quarantined
            else ""
        )
    )
    if summary.coverage is not None:
        console.print(f"Mapping coverage: {summary.coverage:.1%} of coded rows have a standard concept")
    if summary.top_unmapped:
        console.print(
            "Most frequent unmapped codes: "
            + ", ".join(
                f"{vocabulary} {code} ({table}, {rows:,})"
                for vocabulary, code, table, rows in summary.top_unmapped
            )
        )
    console.print(f"Vocabulary: {summary.vocabulary_version}")
    if summary.quality:
        console.print(
            "Quality checks: " + ", ".join(f"{k} {v:,}" for k, v in sorted(summary.quality.items()))
        )
    console.print("Timings: " + _timings(summary.timings))
    for what, where in summary.outputs.items():
        console.print(f"{what}: {where}")


@click.command()
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("demo"),
    show_default=True,
    help="Where the demo sources, warehouse and reports go.",
)
@click.option("--patients", type=int, default=200, show_default=True, help="Synthetic patients to generate.")
@click.option("--seed", type=int, default=42, show_default=True)
def demo(folder: Path, patients: int, seed: int) -> None:
    """Generate demo sources, build an OMOP warehouse from them with quality checks, show what to do next."""
    from pipelines.synthetic import generate

    sources = folder / "sources"
    warehouse = folder / "omop.duckdb"
    if warehouse.exists():
        warehouse.unlink()  # the demo always starts from scratch
    with _console.status(f"generating {patients} synthetic patients"):
        generate(sources, patients, seed=seed)
    options = RunOptions(
        fhir=[sources / "fhir"],
        openehr=[sources / "openehr"],
        warehouse=warehouse,
        parquet=folder / "parquet",
        quality_out=folder / "quality",
    )
    summary = _run_with_progress(options)
    print_summary(summary)
    console = Console()
    console.print(f"Demo sources: {sources}")
    console.print("\nTry a query (the ten most frequent measurements):")
    console.print(
        f"  .venv/bin/python -c \"import duckdb; print(duckdb.connect('{warehouse}', read_only=True)"
        f".sql('{DEMO_QUERY}'))\"",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )


DEMO_QUERY = (
    "SELECT c.concept_name, count(*) AS n, round(avg(m.value_as_number), 1) AS mean "
    "FROM measurement m JOIN concept c ON c.concept_id = m.measurement_concept_id "
    "GROUP BY 1 ORDER BY n DESC LIMIT 10"
)


def _timings(timings: dict[str, float]) -> str:
    """Steps in run order; the parts of the streamed step (making batches beside the load, the load's
    wait for them) in brackets after it, since they overlap and do not add up to it."""
    from pipelines.job.pipeline import STEPS

    parts = ", ".join(f"{k} {v:.1f}s" for k, v in timings.items() if k not in STEPS)
    steps = []
    for name in (k for k in timings if k in STEPS):
        streamed = name == "read, map and load" and parts
        steps.append(f"{name} {timings[name]:.1f}s" + (f" ({parts})" if streamed else ""))
    return ", ".join(steps)
