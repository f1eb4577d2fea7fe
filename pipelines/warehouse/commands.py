"""``passerelle export``: refresh the Parquet and PostgreSQL copies of a warehouse's CDM tables."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The DuckDB warehouse to export from.",
)
@click.option(
    "--parquet", type=click.Path(file_okay=False, path_type=Path), help="Parquet folder to (re)write."
)
@click.option("--postgres", help="postgresql://user@host:5432/database?schema=cdm to (re)load.")
def export(warehouse: Path, parquet: Path | None, postgres: str | None) -> None:
    """Copy every CDM table, exactly its CDM columns, to a Parquet folder and/or PostgreSQL."""
    from pipelines.warehouse.targets import export_cdm

    rows = export_cdm(warehouse, parquet=parquet, postgres=postgres)
    where = " and ".join(x for x in (str(parquet) if parquet else "", "PostgreSQL" if postgres else "") if x)
    filled = sum(1 for n in rows.values() if n)
    click.echo(
        f"exported {sum(rows.values())} rows ({filled} non-empty of {len(rows)} CDM tables) to {where}"
    )
