"""The generator's catalogue (catalogue.yaml) as typed, read-only objects.

The YAML is the place to change what is generated (codes, ranges, frequencies); this module only gives
it names the simulation can rely on, and fails early with the file name when an entry is malformed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import PasserelleError

CATALOGUE_FILE = Path(__file__).with_name("catalogue.yaml")


@dataclass(frozen=True, slots=True)
class Quantity:
    """A vital sign or laboratory test: its LOINC code, UCUM unit and how its values spread."""

    name: str
    loinc: str
    display: str
    unit: str
    decimals: int
    usual: tuple[float, float] | None = None  # [mean, sd] of a person's own level
    visit_sd: float = 0.0
    bounds: tuple[float, float] | None = None
    reference: tuple[float, float] | None = None  # labs: reference interval


@dataclass(frozen=True, slots=True)
class Condition:
    """A chronic or acute condition and what comes with it (drugs, labs, procedures, vital shifts)."""

    name: str
    code: str
    display: str
    shifts: dict[str, float]
    treatment: tuple[str, ...]
    monitor: tuple[str, ...] = ()
    procedures: tuple[str, ...] = ()
    prevalence: tuple[tuple[float, float], ...] = ()  # chronic: [from age, chance] steps
    visit: str = "AMB"  # acute: class of the visit it brings
    weight: float = 0.0
    ages: tuple[float, float] = (0, 120)
    days: int = 0


@dataclass(frozen=True, slots=True)
class Catalogue:
    as_of: dt.date
    history_years: int
    population: dict[str, Any]
    visit_classes: dict[str, dict[str, Any]]
    visit_types: dict[str, tuple[str, str]]
    visits_per_year: tuple[float, float]
    vitals: dict[str, Quantity]
    blood_pressure_panel: tuple[str, str]
    min_pulse_pressure: float
    child_vitals: dict[str, Any]
    labs: dict[str, Quantity]
    checkup_labs: tuple[str, ...]
    checkup_labs_from_age: float
    medications: dict[str, tuple[str, int]]
    procedures: dict[str, tuple[str, str]]
    checkup_procedures: dict[str, str]
    screening: tuple[tuple[str, str, float, float], ...]
    chronic: tuple[Condition, ...]
    acute: tuple[Condition, ...]
    acute_per_year: float
    immunizations: dict[str, tuple[str, float, float, int]]
    immunization_uptake: float
    openehr_vitals: dict[str, dict[str, Any]]
    openehr_terminologies: dict[str, str]

    def codes(self) -> dict[str, set[str]]:
        """Every code the generator can emit, by OMOP vocabulary id (for checks against a vocabulary)."""
        conditions = {c.code for c in (*self.chronic, *self.acute)}
        return {
            "LOINC": {q.loinc for q in (*self.vitals.values(), *self.labs.values())}
            | {self.blood_pressure_panel[0]},
            "SNOMED": conditions
            | {code for code, _ in self.procedures.values()}
            | {code for code, _ in self.visit_types.values()},
            "RxNorm": set(self.medications),
            "CVX": set(self.immunizations),
            "UCUM": {q.unit for q in (*self.vitals.values(), *self.labs.values())},
        }


@cache
def load_catalogue(path: Path = CATALOGUE_FILE) -> Catalogue:
    """Read and check the catalogue once per process."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        catalogue = Catalogue(
            as_of=raw["as_of"],
            history_years=int(raw["history_years"]),
            population=raw["population"],
            visit_classes=raw["visit_classes"],
            visit_types={k: (str(v[0]), v[1]) for k, v in raw["visit_types"].items()},
            visits_per_year=tuple(raw["visits_per_year"]),
            vitals={name: _quantity(name, spec) for name, spec in raw["vitals"].items()},
            blood_pressure_panel=tuple(raw["blood_pressure_panel"].values()),
            min_pulse_pressure=float(raw["min_pulse_pressure"]),
            child_vitals=raw["child_vitals"],
            labs={name: _quantity(name, spec) for name, spec in raw["labs"].items()},
            checkup_labs=tuple(raw["checkup_labs"]),
            checkup_labs_from_age=float(raw["checkup_labs_from_age"]),
            medications={str(k): (v[0], int(v[1])) for k, v in raw["medications"].items()},
            procedures={k: (str(v[0]), v[1]) for k, v in raw["procedures"].items()},
            checkup_procedures=raw["checkup_procedures"],
            screening=tuple(tuple(row) for row in raw["screening"]),
            chronic=tuple(_condition(n, s) for n, s in raw["chronic_conditions"].items()),
            acute=tuple(_condition(n, s) for n, s in raw["acute_conditions"].items()),
            acute_per_year=float(raw["acute_per_year"]),
            immunizations={str(k): _vaccine(v) for k, v in raw["immunizations"].items()},
            immunization_uptake=float(raw["immunization_uptake"]),
            openehr_vitals=raw["openehr_vitals"],
            openehr_terminologies=raw["openehr_terminologies"],
        )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise PasserelleError(f"{path}: malformed generator catalogue ({error!r})") from error
    _check_references(catalogue, path)
    return catalogue


def _quantity(name: str, spec: dict[str, Any]) -> Quantity:
    bounds = (spec["min"], spec["max"]) if "min" in spec else None
    return Quantity(
        name=name,
        loinc=str(spec["loinc"]),
        display=spec["display"],
        unit=spec["unit"],
        decimals=int(spec["decimals"]),
        usual=tuple(spec.get("baseline") or spec.get("usual") or ()) or None,
        visit_sd=float(spec.get("visit_sd", 0.0)),
        bounds=bounds,
        reference=tuple(spec["reference"]) if "reference" in spec else None,
    )


def _vaccine(row: list) -> tuple[str, float, float, int]:
    display, from_age, to_age, every = row
    return display, float(from_age), float(to_age), int(every)


def _condition(name: str, spec: dict[str, Any]) -> Condition:
    code, display = spec["code"]
    return Condition(
        name=name,
        code=str(code),
        display=display,
        shifts={k: float(v) for k, v in (spec.get("shifts") or {}).items()},
        treatment=tuple(str(c) for c in spec.get("treatment") or ()),
        monitor=tuple(spec.get("monitor") or ()) + tuple(spec.get("labs") or ()),
        procedures=tuple(spec.get("procedures") or ()),
        prevalence=tuple(tuple(step) for step in spec.get("prevalence") or ()),
        visit=spec.get("visit", "AMB"),
        weight=float(spec.get("weight", 0.0)),
        ages=tuple(spec.get("ages", (0, 120))),
        days=int(spec.get("days", 0)),
    )


def _check_references(catalogue: Catalogue, path: Path) -> None:
    """Names used across sections must exist, so a typo fails here rather than mid-generation."""
    quantities = {**catalogue.vitals, **catalogue.labs}
    for condition in (*catalogue.chronic, *catalogue.acute):
        unknown = (
            [s for s in condition.shifts if s not in quantities]
            + [m for m in condition.treatment if m not in catalogue.medications]
            + [lab for lab in condition.monitor if lab not in catalogue.labs]
            + [p for p in condition.procedures if p not in catalogue.procedures]
        )
        if condition.visit not in catalogue.visit_classes:
            unknown.append(condition.visit)
        if unknown:
            raise PasserelleError(f"{path}: condition {condition.name!r} names unknown entries {unknown}")
    for lab in catalogue.checkup_labs:
        if lab not in catalogue.labs:
            raise PasserelleError(f"{path}: checkup_labs names unknown lab {lab!r}")
    named = [row[0] for row in catalogue.screening] + list(catalogue.checkup_procedures.values())
    for procedure in named:
        if procedure not in catalogue.procedures:
            raise PasserelleError(f"{path}: unknown procedure {procedure!r} in screening/checkup_procedures")
