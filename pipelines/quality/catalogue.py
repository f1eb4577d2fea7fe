"""The DQD check catalogue, read from ``quality/dqd/``: check types and the checks they expand to.

``check_types.yaml`` says what each of DQD's 27 check types means (SQL pieces, Kahn category,
severity); ``cdm_v5.4/{table,field,concept}_checks.csv`` say which table, field or concept gets which
check with which threshold. A ``Check`` is one resolved check, the unit DQD reports on.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl
import yaml

from pipelines.errors import PasserelleError
from pipelines.project_files import data_dir

LEVELS = ("TABLE", "FIELD", "CONCEPT")


@dataclass(frozen=True)
class CheckType:
    name: str
    level: str
    context: str
    category: str
    subcategory: str | None
    severity: str  # fatal | convention | characterization
    sql_file: str
    description: str
    sql: dict[str, str]  # scan, restrict, violated (and its variants), denominator, count, exists
    deprecated: bool = False


@dataclass(frozen=True)
class Check:
    """One check of one table, field or concept, with its threshold (percent) and parameters."""

    type: CheckType
    table: str  # lower case, as in the warehouse
    field: str | None = None
    concept_id: str | None = None  # text; a comma-separated list for plausibleGenderUseDescendants
    concept_name: str | None = None
    unit_concept_id: str | None = None
    threshold: float | None = None
    notes: str | None = None
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.type.name

    @property
    def check_id(self) -> str:
        """DQD's checkId: level, name, table, field, concept, unit joined by '_', lower case."""
        parts = [self.type.level, self.name, self.table, self.field, self.concept_id, self.unit_concept_id]
        return "_".join(p.replace(" ", "") for p in parts if p).lower()


@dataclass(frozen=True)
class Catalogue:
    dqd_version: str
    types: dict[str, CheckType]
    checks: tuple[Check, ...]
    default_excluded_tables: tuple[str, ...]
    table_schemas: dict[str, str]  # table -> cdm | vocab | cohort (where DQD looks for it)
    scans: dict[str, str]  # shared scan templates (check_types.yaml `scans`), by placeholder name
    batch_scans: dict[str, str]  # faster forms of some of them for batched queries (`batch_scans`)

    def select(
        self,
        *,
        excluded_tables: tuple[str, ...] | list[str] | None = None,
        check_names: list[str] | None = None,
        levels: tuple[str, ...] = LEVELS,
    ) -> list[Check]:
        """The checks of one run; ``excluded_tables=None`` means DQD's default (the vocabulary tables)."""
        if excluded_tables is None:
            excluded_tables = self.default_excluded_tables
        excluded = {t.lower() for t in excluded_tables}
        unknown = set(check_names or ()) - set(self.types)
        if unknown:
            raise PasserelleError(f"unknown DQD check name(s): {', '.join(sorted(unknown))}")
        return [
            c
            for c in self.checks
            if c.table not in excluded
            and c.type.level in levels
            and (not check_names or c.name in check_names)
            # DQD never checks note_nlp.offset: a reserved word on several databases
            and c.field != "offset"
        ]


@cache
def load_catalogue(cdm_version: str = "5.4", folder: Path | None = None) -> Catalogue:
    """Read the catalogue (``folder`` defaults to ``quality/dqd`` of this installation)."""
    folder = folder or data_dir("quality") / "dqd"
    # libyaml's safe loader when PyYAML has it: 0.002 s against 0.023 s for the pure-Python one
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load((folder / "check_types.yaml").read_text(), Loader=loader)
    types = {name: _check_type(name, body) for name, body in spec["check_types"].items()}
    version_dir = folder / f"cdm_v{cdm_version}"
    if not version_dir.is_dir():
        raise PasserelleError(f"no DQD catalogue for CDM v{cdm_version} in {folder}")
    checks: list[Check] = []
    schemas: dict[str, str] = {}
    for level in ("table", "field", "concept"):
        path = version_dir / f"{level}_checks.csv"
        frame = pl.read_csv(path, infer_schema=False)
        for number, row in enumerate(frame.iter_rows(named=True), start=2):
            if row["check"] not in types:
                raise PasserelleError(f"{path}, line {number}: unknown check type {row['check']!r}")
            parameters = _parameters(row.get("parameters"))
            problem = _problem(row, parameters)
            if problem:
                raise PasserelleError(f"{path}, line {number} ({row['check']} {row['table']}): {problem}")
            if row["check"] == "cdmTable":
                schemas[row["table"]] = parameters.get("schema", "cdm")
            checks.append(
                Check(
                    type=types[row["check"]],
                    table=row["table"],
                    field=row.get("field"),
                    concept_id=row.get("concept_id"),
                    concept_name=row.get("concept_name"),
                    unit_concept_id=row.get("unit_concept_id"),
                    threshold=float(row["threshold"]) if row.get("threshold") else None,
                    notes=row.get("notes"),
                    parameters=parameters,
                )
            )
    return Catalogue(
        dqd_version=str(spec["dqd_version"]),
        types=types,
        checks=tuple(checks),
        default_excluded_tables=tuple(spec["default_excluded_tables"]),
        table_schemas=schemas,
        scans=dict(spec.get("scans", {})),
        batch_scans=dict(spec.get("batch_scans", {})),
    )


def _check_type(name: str, body: dict) -> CheckType:
    sql_keys = (
        "scan",
        "restrict",
        "violated",
        "violated_via_person",
        "violated_in_integer_column",
        "batch_violated_in_primary_key",
        "denominator",
        "count",
        "exists",
    )
    return CheckType(
        name=name,
        level=body["level"],
        context=body["context"],
        category=body["category"],
        subcategory=body.get("subcategory"),
        severity=body["severity"],
        sql_file=body["sql_file"],
        description=body["description"],
        sql={k: body[k] for k in sql_keys if k in body},
        deprecated=bool(body.get("deprecated", False)),
    )


_BOUND = re.compile(r"^(\d{4}-\d{2}-\d{2}|(today|current_year)\+\d+|-?\d+(\.\d+)?)$")


def _problem(row: dict, parameters: dict[str, str]) -> str | None:
    """What is wrong with a catalogue row, if anything (checked at load, not when the SQL runs)."""
    threshold = row.get("threshold")
    if threshold and not re.fullmatch(r"\d+(\.\d+)?", threshold):
        return f"threshold {threshold!r} is not a percent between 0 and 100"
    if threshold and float(threshold) > 100:
        return f"threshold {threshold} is more than 100 percent"
    if "value" in parameters and not _BOUND.match(parameters["value"]):
        return f"value {parameters['value']!r} is none of: a number, YYYY-MM-DD, today+N, current_year+N"
    return None


def _parameters(text: str | None) -> dict[str, str]:
    """``key=value;key=value`` (values may hold commas, e.g. a unit list)."""
    if not text:
        return {}
    return dict(part.split("=", 1) for part in text.split(";"))
