"""``passerelle dq``: the DQD checks on a warehouse, results JSON and HTML report into a folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="OMOP CDM v5.4 DuckDB file (any, not only Passerelle's).",
)
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--schema", "cdm_schema", default="main", show_default=True, help="Schema of the CDM tables.")
@click.option("--vocab-schema", default=None, help="Schema of the vocabulary tables (default: the CDM's).")
@click.option("--check", "check_names", multiple=True, help="Run only these DQD check names (repeatable).")
@click.option("--expectations/--no-expectations", default=False, help="Also run the GX suites (slower).")
def dq(
    warehouse: Path,
    out_dir: Path,
    cdm_schema: str,
    vocab_schema: str | None,
    check_names: tuple[str, ...],
    expectations: bool,
) -> None:
    """Run the OHDSI Data Quality Dashboard checks natively; write the DQD results JSON and an HTML report."""
    from pipelines.quality.results_json import write_results_json
    from pipelines.quality.runner import run_dqd
    from pipelines.warehouse.duckdb_file import connect

    with connect(warehouse, read_only=True) as con:
        results = run_dqd(
            con, cdm_schema=cdm_schema, vocab_schema=vocab_schema, check_names=list(check_names) or None
        )
        if expectations:
            from pipelines.quality.expectations import run_expectations

            gx = run_expectations(con, out_dir / "gx", cdm_schema=cdm_schema)
            click.echo(f"expectations: {gx.passed} of {gx.total} suites passed, Data Docs in {gx.docs_index}")
            for o in gx.outcomes:
                if not o.success:
                    where = f" where {o.condition}" if o.condition else ""
                    click.echo(
                        f"  failed {o.suite}: {o.expectation} on {o.column}{where}: "
                        f"{o.unexpected_count} of {o.element_count}"
                    )
    json_path = write_results_json(results, out_dir)
    from pipelines.quality.report_html import write_html_report

    html_path = write_html_report(results, out_dir)
    o = results.overview()
    seconds = (results.ended - results.started).total_seconds()
    click.echo(
        f"{o['countTotal']} checks in {seconds:.1f} s: {o['countPassed']} passed (incl. not applicable), "
        f"{o['countThresholdFailed']} failed, {o['countErrorFailed']} errors, "
        f"{len(results.fatal_failures())} fatal"
    )
    click.echo(f"results: {json_path}")
    click.echo(f"report:  {html_path}")
