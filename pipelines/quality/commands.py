"""``passerelle dq``: the DQD checks on a warehouse, results JSON and HTML report into a folder."""

from __future__ import annotations

from pathlib import Path

import click

from pipelines.errors import PasserelleError


@click.command()
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    help="OMOP CDM v5.4 DuckDB file (any, not only Passerelle's).",
)
@click.option("--postgres", help="Or an OMOP CDM v5.4 in PostgreSQL (postgresql://...).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--schema", "cdm_schema", default=None, help="Schema of the CDM tables [main; public].")
@click.option("--vocab-schema", default=None, help="Schema of the vocabulary tables (default: the CDM's).")
@click.option("--check", "check_names", multiple=True, help="Run only these DQD check names (repeatable).")
@click.option(
    "--expectations/--no-expectations", default=False, help="Also run the GX suites (DuckDB; slower)."
)
def dq(
    warehouse: Path | None,
    postgres: str | None,
    out_dir: Path,
    cdm_schema: str | None,
    vocab_schema: str | None,
    check_names: tuple[str, ...],
    expectations: bool,
) -> None:
    """Run the OHDSI Data Quality Dashboard checks natively; write the DQD results JSON and an HTML report."""
    from pipelines.quality.report_html import write_html_report
    from pipelines.quality.results_json import write_results_json
    from pipelines.quality.runner import run_dqd
    from pipelines.warehouse.duckdb_file import connect

    if (warehouse is None) == (postgres is None):
        raise PasserelleError("give the CDM to check: either --warehouse FILE or --postgres URL")
    names = list(check_names) or None
    if postgres:
        if expectations:
            raise PasserelleError("--expectations runs on a DuckDB warehouse only; drop it for --postgres")
        schema = cdm_schema or "public"
        results = run_dqd(postgres, cdm_schema=schema, vocab_schema=vocab_schema, check_names=names)
    else:
        schema = cdm_schema or "main"
        with connect(warehouse, read_only=True) as con:
            results = run_dqd(con, cdm_schema=schema, vocab_schema=vocab_schema, check_names=names)
            if expectations:
                _expectations(con, out_dir / "gx", schema)
    json_path = write_results_json(results, out_dir)
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


def _expectations(con, out_dir: Path, cdm_schema: str) -> None:
    from pipelines.quality.expectations import run_expectations

    gx = run_expectations(con, out_dir, cdm_schema=cdm_schema)
    click.echo(f"expectations: {gx.passed} of {gx.total} suites passed, Data Docs in {gx.docs_index}")
    for o in gx.outcomes:
        if not o.success:
            where = f" where {o.condition}" if o.condition else ""
            click.echo(
                f"  failed {o.suite}: {o.expectation} on {o.column}{where}: "
                f"{o.unexpected_count} of {o.element_count}"
            )
