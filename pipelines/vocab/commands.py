"""``passerelle vocab``: load the OHDSI vocabularies into a warehouse."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.group()
def vocab() -> None:
    """The OHDSI standardized vocabularies (Athena downloads or CDM exports)."""


@vocab.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="DuckDB warehouse file (created if missing).",
)
def load(folder: Path, warehouse: Path) -> None:
    """Load the vocabulary in FOLDER (CONCEPT.csv, CONCEPT_RELATIONSHIP.csv, ...) into the warehouse.

    The first load of these files builds a columnar cache ($PASSERELLE_CACHE_DIR, default
    ~/.cache/passerelle); later loads of the same files reuse it.
    """
    from pipelines.vocab import load_vocabulary
    from pipelines.vocab.warehouse import write_vocabulary
    from pipelines.warehouse.duckdb_file import connect, initialize

    started = time.perf_counter()
    loaded = load_vocabulary(folder)
    cached = time.perf_counter()
    click.echo(
        f"vocabulary {loaded.version!r}: cache {'built' if loaded.built else 'reused'} "
        f"in {cached - started:.1f} s ({loaded.cache_dir})"
    )
    for name, info in loaded.tables.items():
        if info["status"] != "loaded":
            click.echo(
                f"  {name}: {'no file' if info['status'] == 'missing' else 'header only, no rows'} - skipped"
            )
    initialize(warehouse)
    with connect(warehouse) as con:
        counts = write_vocabulary(con, loaded)
        has_source = con.execute("SELECT count(*) FROM main.cdm_source").fetchone()[0]
    for name, rows in counts.items():
        if rows:
            click.echo(f"  {name}: {rows:,} rows")
    click.echo(
        "cdm_source.vocabulary_version updated"
        if has_source
        else "cdm_source has no row yet: `passerelle derive` writes it with this release"
    )
    click.echo(f"loaded into {warehouse} in {time.perf_counter() - started:.1f} s")
