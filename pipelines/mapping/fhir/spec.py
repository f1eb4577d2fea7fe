"""Read mappings/fhir/*.yaml (one file per resource type) and mappings/fhir/common/*.yaml.

A mapping file says, for one resource type, which records are filtered and why, and which outputs
each record gives: *routed* outputs (``facets:``) go to the table of their concept's domain
(mappings/fhir/common/domain_tables.yaml), *fixed* outputs (``table:`` + ``columns:``) fill one table
column by column. The value language is documented in docs/fhir.md. Mistakes in a file are reported
with the file and the rule, when the file is loaded, not half-way through a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pipelines.cdm.spec import cdm_schema
from pipelines.errors import PasserelleError
from pipelines.mapping.fhir.paths import PathError, compile_path, root_of
from pipelines.project_files import data_dir


class MappingError(PasserelleError):
    """A FHIR mapping file that cannot be used."""


@dataclass(frozen=True)
class Filter:
    when: dict  # a condition (see engine._condition)
    reason: str


@dataclass(frozen=True)
class Output:
    name: str
    each: str | None  # a list element to iterate over: one row per item
    when: dict | None
    table: str | None  # fixed table; for routed outputs, a forced table (no domain routing)
    default_table: str | None  # routed outputs: where unmapped rows go
    type_concept: str | dict | None  # a name, or {lookup: path, values: {code: name}, default: name}
    facets: dict[str, Any]  # routed outputs
    columns: dict[str, Any]  # fixed outputs
    required: dict[str, str]  # column or facet -> quarantine reason code when it is null
    key: str | None  # suffix of the row key, for a second fixed row from one record (e.g. address)

    @property
    def routed(self) -> bool:
        return bool(self.facets)


@dataclass(frozen=True)
class ResourceMapping:
    resource: str
    source: Path
    filters: tuple[Filter, ...]
    outputs: tuple[Output, ...]
    no_rows_reason: str  # why a record that passes the filters can still give no row


@dataclass(frozen=True)
class Common:
    type_concepts: dict[str, int]
    tables: dict[str, dict[str, str]]  # table -> {column: facet}
    domain_table: dict[str, str]  # domain_id -> table
    operators: dict[str, int]


def _load_yaml(text: str) -> Any:
    # libyaml's loader: the pure-Python one took 0.6 s of a run on the mapping files alone
    return yaml.load(text, Loader=yaml.CSafeLoader)


@cache
def load_common(folder: Path | None = None) -> Common:
    folder = folder or data_dir("mappings") / "fhir" / "common"
    types = _load_yaml((folder / "type_concepts.yaml").read_text(encoding="utf-8"))["type_concepts"]
    routing = _load_yaml((folder / "domain_tables.yaml").read_text(encoding="utf-8"))
    tables = {name: dict(body["columns"]) for name, body in routing["tables"].items()}
    domain_table = {domain: name for name, body in routing["tables"].items() for domain in body["domains"]}
    return Common(
        type_concepts={k: int(v) for k, v in types.items()},
        tables=tables,
        domain_table=domain_table,
        operators={str(k): int(v) for k, v in routing["operators"].items()},
    )


@cache
def load_mappings(folder: Path | None = None) -> dict[str, ResourceMapping]:
    """resourceType -> its mapping, from every ``*.yaml`` directly in ``folder`` (mappings/fhir/)."""
    folder = folder or data_dir("mappings") / "fhir"
    common = load_common()
    mappings = {}
    for path in sorted(folder.glob("*.yaml")):
        mapping = _mapping(path, common)
        mappings[mapping.resource] = mapping
    return mappings


def _mapping(path: Path, common: Common) -> ResourceMapping:
    try:
        doc = _load_yaml(path.read_text(encoding="utf-8"))
        filters = tuple(Filter(when=f["when"], reason=str(f["reason"])) for f in doc.get("filters") or ())
        outputs = tuple(_output(o) for o in doc.get("outputs") or ())
        mapping = ResourceMapping(
            resource=str(doc["resource"]),
            source=path,
            filters=filters,
            outputs=outputs,
            no_rows_reason=str(doc.get("no_rows_reason", "nothing to map")),
        )
    except (KeyError, TypeError, AttributeError, yaml.YAMLError) as error:
        raise MappingError(
            f"{path}: not a FHIR mapping file ({error.__class__.__name__}: {error})"
        ) from error
    for output in outputs:
        _check(path, output, common)
    return mapping


def _output(body: dict) -> Output:
    return Output(
        name=str(body["name"]),
        each=body.get("each"),
        when=body.get("when"),
        table=body.get("table"),
        default_table=body.get("default_table"),
        type_concept=body.get("type_concept"),
        facets=dict(body.get("facets") or {}),
        columns=dict(body.get("columns") or {}),
        required=dict(body.get("required") or {}),
        key=body.get("key"),
    )


def _check(path: Path, output: Output, common: Common) -> None:
    where = f"{path}, output {output.name!r}"
    if output.routed == bool(output.columns):
        raise MappingError(f"{where}: give either facets (routed by domain) or table + columns")
    if output.routed and not (output.table or output.default_table):
        raise MappingError(f"{where}: a routed output needs default_table (or a forced table)")
    for table in (output.table, output.default_table):
        if output.routed and table and table not in common.tables:
            raise MappingError(f"{where}: {table!r} is not a table of common/domain_tables.yaml")
    if isinstance(output.type_concept, dict) and not {"lookup", "values", "default"} <= set(
        output.type_concept
    ):
        raise MappingError(f"{where}: a type_concept lookup needs lookup, values and default")
    names = (
        [output.type_concept["default"], *output.type_concept["values"].values()]
        if isinstance(output.type_concept, dict)
        else [output.type_concept]
    )
    if output.type_concept and any(name not in common.type_concepts for name in names):
        raise MappingError(
            f"{where}: unknown type concept {output.type_concept!r} (common/type_concepts.yaml)"
        )
    if not output.routed:
        try:
            table = cdm_schema().table(output.table or "")
        except KeyError as error:
            raise MappingError(f"{where}: {output.table!r} is not an OMOP CDM v5.4 table") from error
        unknown = set(output.columns) - set(table.column_names)
        if unknown:
            raise MappingError(f"{where}: {output.table} has no columns {sorted(unknown)}")
    for spec in [*output.facets.values(), *output.columns.values()]:
        for text in _paths(spec):
            try:
                compile_path(text)
            except PathError as error:
                raise MappingError(f"{where}: {error}") from error


def elements_read(output: Output) -> frozenset[str]:
    """The top-level elements of the resource an output reads besides ``each``'s list (``item`` is the
    list's item, not an element): the engine filters and explodes only these columns, not the whole
    wide frame (a filter or explode copies every nested column it carries)."""
    specs = [*output.facets.values(), *output.columns.values()]
    if isinstance(output.type_concept, dict):
        specs.append(output.type_concept)
    return frozenset(root_of(path) for spec in specs for path in _paths(spec)) - {"item"}


# Keys of a value spec whose value is itself a path or a spec (docs/fhir.md, "Values").
_PATH_KEYS = frozenset(
    {
        "lookup",
        "concept",
        "source_concept",
        "code",
        "date",
        "datetime",
        "year",
        "month",
        "day",
        "ref",
        "resolve",
        "if",
        "unit",
        "present",
        "absent",
        "path",
        "text",
    }
)


def _paths(spec: Any) -> list[str]:
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, list):
        return [p for s in spec for p in _paths(s)]
    if isinstance(spec, dict):
        return [p for k, v in spec.items() if k in _PATH_KEYS for p in _paths(v)]
    return []
