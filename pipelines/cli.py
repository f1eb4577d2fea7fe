"""The ``passerelle`` command: thin wrappers over the library, no Dagster daemon needed.

Each room contributes its commands from its own module (``pipelines/<room>/commands.py``), imported
only when that command runs so ``passerelle --help`` stays fast. This module assembles them and turns
a ``PasserelleError`` into one clear line and a non-zero exit.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import click

from pipelines.errors import PasserelleError

# command name -> "module:attribute" of its click command, one per room
_ROOM_COMMANDS = {
    "vocab": "pipelines.vocab.commands:vocab",
    "run": "pipelines.job.commands:run",
    "demo": "pipelines.job.commands:demo",
    "derive": "pipelines.derive.commands:derive",
    "export": "pipelines.warehouse.commands:export",
    "dq": "pipelines.quality.commands:dq",
    "generate": "pipelines.synthetic.commands:generate",
}


class _Group(click.Group):
    """Loads room commands lazily; prints user errors as one line (``--debug`` keeps the traceback)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        available = [name for name, target in _ROOM_COMMANDS.items() if _module_exists(target)]
        return sorted([*super().list_commands(ctx), *available])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in _ROOM_COMMANDS and _module_exists(_ROOM_COMMANDS[name]):
            module, attribute = _ROOM_COMMANDS[name].split(":")
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PasserelleError as error:
            if ctx.meta.get("passerelle.debug"):
                raise
            click.secho(f"error: {error}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.version_option(package_name="passerelle")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Passerelle: openEHR and FHIR R4 to OMOP CDM v5.4."""
    ctx.meta["passerelle.debug"] = debug


@main.command()
@click.option(
    "--dialect",
    type=click.Choice(["duckdb", "postgresql", "spark", "bigquery", "snowflake", "tsql"]),
    default="duckdb",
    show_default=True,
)
@click.option("--schema", "db_schema", default=None, help="Qualify tables with this database schema.")
def ddl(dialect: str, db_schema: str | None) -> None:
    """Print the OMOP CDM v5.4 DDL (tables, keys, indexes) for a SQL dialect."""
    from pipelines.cdm import cdm_schema, render_ddl

    click.echo(render_ddl(cdm_schema(), dialect, db_schema=db_schema), nl=False)


@main.command()
@click.option(
    "--warehouse",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="DuckDB file to create (its folder is created too).",
)
def init(warehouse: Path) -> None:
    """Create an empty OMOP CDM v5.4 warehouse (DuckDB) with Passerelle's side tables."""
    from pipelines.warehouse.duckdb_file import initialize

    created = initialize(warehouse)
    click.echo(f"{'created' if created else 'already initialised'}: {warehouse}")


def _module_exists(target: str) -> bool:
    try:
        return importlib.util.find_spec(target.split(":")[0]) is not None
    except ModuleNotFoundError:  # its room's package is not there
        return False
