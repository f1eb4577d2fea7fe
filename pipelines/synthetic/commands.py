"""``passerelle generate``: write synthetic FHIR and openEHR sources for N people."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command()
@click.option("--patients", type=click.IntRange(min=3), required=True, help="How many people (at least 3).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write fhir/, openehr/ and manifest.json into.",
)
@click.option("--seed", type=int, default=42, show_default=True, help="Same seed, same bytes.")
def generate(patients: int, out_dir: Path, seed: int) -> None:
    """Write synthetic FHIR Bundles, a FHIR Bulk export and openEHR AQL pages for N patients."""
    from rich.console import Console
    from rich.table import Table

    from pipelines.synthetic import generate as run_generator

    started = time.perf_counter()
    with Console(stderr=True).status(f"generating {patients} patients ..."):
        report = run_generator(out_dir, patients, seed=seed)
    manifest = report.manifest
    table = Table(title=f"synthetic sources in {out_dir} ({time.perf_counter() - started:.1f} s)")
    for column in ("source", "patients", "records", "files"):
        table.add_column(column, justify="left" if column == "source" else "right")
    bundles, bulk, aql = manifest["fhir_bundles"], manifest["fhir_bulk"], manifest["openehr_aql"]
    table.add_row(
        "FHIR Bundles",
        str(bundles["patients"]),
        str(sum(bundles["resources"].values())),
        str(bundles["files"]),
    )
    table.add_row(
        "FHIR Bulk", str(bulk["patients"]), str(sum(bulk["resources"].values())), str(len(bulk["files"]) + 1)
    )
    table.add_row("openEHR AQL", str(aql["ehrs"]), str(sum(aql["compositions"].values())), str(aql["pages"]))
    Console().print(table)
    click.echo(f"deaths: {manifest['deaths']}; broken records on purpose: {manifest['broken']}")
    click.echo(f"manifest: {out_dir / 'manifest.json'}")
