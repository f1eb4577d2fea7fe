"""Read the schema specs in ``omop_ddl/`` into plain dataclasses.

``cdm_v5.4.yaml`` is the CDM itself; ``passerelle_side_tables.yaml`` holds the project's own tables
(id map, lineage, quarantine, run log), kept in their own schema so the CDM stays exactly v5.4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from pipelines.errors import SchemaError
from pipelines.project_files import data_dir

_TYPE = re.compile(r"^(bigint|integer|float|date|datetime|boolean|varchar\((\d+|max)\))$")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # logical type: bigint, integer, float, date, datetime, boolean, varchar(N), varchar(max)
    required: bool
    primary_key: bool = False
    references: tuple[str, str] | None = None  # (table, column) of a foreign key

    @property
    def varchar_length(self) -> int | None:
        """N of varchar(N); None for varchar(max) and non-text columns."""
        match = _TYPE.match(self.type)
        return int(match.group(2)) if match and match.group(2) and match.group(2) != "max" else None


@dataclass(frozen=True)
class Index:
    name: str
    table: str
    columns: tuple[str, ...]
    cluster: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    group: str
    columns: tuple[Column, ...]
    indexes: tuple[Index, ...] = ()

    @property
    def primary_key(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.primary_key)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")


@dataclass(frozen=True)
class Schema:
    version: str
    tables: tuple[Table, ...]

    def table(self, name: str) -> Table:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(f"no table {name!r} in the schema")

    @property
    def table_names(self) -> list[str]:
        return [t.name for t in self.tables]

    def group(self, group: str) -> list[Table]:
        return [t for t in self.tables if t.group == group]


@cache
def cdm_schema() -> Schema:
    """OMOP CDM v5.4 as specified in ``omop_ddl/cdm_v5.4.yaml``."""
    return load_schema(data_dir("omop_ddl") / "cdm_v5.4.yaml")


@cache
def side_schema() -> Schema:
    """Passerelle's own tables (schema ``passerelle``): id map, lineage, quarantine, runs."""
    return load_schema(data_dir("omop_ddl") / "passerelle_side_tables.yaml")


def load_schema(path: Path) -> Schema:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        tables = tuple(_table(name, body, path) for name, body in doc["tables"].items())
        return Schema(version=str(doc["version"]), tables=tables)
    except (KeyError, TypeError, ValueError) as error:
        raise SchemaError(f"{path}: not a valid schema spec ({error})") from error


def _table(name: str, body: dict, path: Path) -> Table:
    columns = tuple(_column(name, row, path) for row in body["columns"])
    indexes = tuple(
        Index(name=i["name"], table=name, columns=tuple(i["columns"]), cluster=bool(i.get("cluster")))
        for i in body.get("indexes", ())
    )
    return Table(name=name, group=body["group"], columns=columns, indexes=indexes)


def _column(table: str, row: list, path: Path) -> Column:
    name, type_, required, *key = row
    if not _TYPE.match(type_):
        raise SchemaError(f"{path}: {table}.{name} has unknown type {type_!r}")
    if required not in ("required", "optional"):
        raise SchemaError(f"{path}: {table}.{name}: say 'required' or 'optional', not {required!r}")
    references = None
    primary_key = False
    if key:
        if key[0] == "pk":
            primary_key = True
        elif key[0].startswith("fk "):
            ref_table, ref_column = key[0][3:].split(".")
            references = (ref_table, ref_column)
        else:
            raise SchemaError(f"{path}: {table}.{name}: key must be 'pk' or 'fk table.column'")
    return Column(name, type_, required == "required", primary_key, references)
