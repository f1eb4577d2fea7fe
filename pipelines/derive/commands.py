"""``passerelle derive``: rebuild the derived tables of any OMOP CDM v5.4 DuckDB file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click


@click.command()
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="OMOP CDM v5.4 DuckDB file (tables in schema main); Passerelle's or another ETL's.",
)
@click.option(
    "--extraction-date",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Date the source data were extracted (YYYY-MM-DD); caps observation periods. Default: today.",
)
def derive(warehouse: Path, extraction_date: dt.datetime | None) -> None:
    """Rebuild observation_period, condition_era, drug_era, death and cdm_source."""
    from pipelines.derive import derive_all
    from pipelines.errors import PasserelleError, WarehouseError
    from pipelines.warehouse.duckdb_file import connect

    if not warehouse.is_file():
        raise WarehouseError(f"{warehouse}: no such DuckDB file")
    with connect(warehouse) as con:
        try:
            counts = derive_all(con, extraction_date=extraction_date.date() if extraction_date else None)
        except PasserelleError as error:
            raise type(error)(f"{warehouse}: {error}") from error
    for table, rows in counts.items():
        click.echo(f"{table:<20} {rows:>12,}")
