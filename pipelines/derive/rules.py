"""The parameters of the derived tables, read from ``omop_ddl/derivation_rules.yaml``.

Kept as data so a site can change the persistence windows or the observation-period rule without
touching SQL; the loader checks the values once so the SQL can trust them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipelines.errors import PasserelleError
from pipelines.project_files import data_dir


@dataclass(frozen=True)
class ObservationPeriodRule:
    end_extension_days: int
    death_extension_days: int
    split_gap_days: int
    extraction_date: dt.date | None
    period_type_concept_id: int
    events: dict[str, tuple[str, str | None]]  # table -> (start date column, end date column or None)


@dataclass(frozen=True)
class EraRule:
    persistence_window_days: int
    missing_end_days: int


@dataclass(frozen=True)
class DrugEraRule(EraRule):
    ingredient_vocabulary_ids: tuple[str, ...]
    ingredient_concept_class_id: str


@dataclass(frozen=True)
class CdmSourceDefaults:
    cdm_version: str
    cdm_version_concept_id: int
    cdm_source_name: str
    cdm_source_abbreviation: str
    cdm_holder: str
    cdm_etl_reference: str


@dataclass(frozen=True)
class DerivationRules:
    observation_period: ObservationPeriodRule
    condition_era: EraRule
    drug_era: DrugEraRule
    cdm_source: CdmSourceDefaults


_CDM_SOURCE_FIELDS = tuple(CdmSourceDefaults.__annotations__)


def load_rules(path: Path | None = None) -> DerivationRules:
    """Read and check the rules (None = the bundled ``omop_ddl/derivation_rules.yaml``)."""
    path = path or data_dir("omop_ddl") / "derivation_rules.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        period = doc["observation_period"]
        rules = DerivationRules(
            observation_period=ObservationPeriodRule(
                end_extension_days=_days(period["end_extension_days"]),
                death_extension_days=_days(period["death_extension_days"]),
                split_gap_days=_days(period["split_gap_days"]),
                extraction_date=_date(period.get("extraction_date")),
                period_type_concept_id=int(period["period_type_concept_id"]),
                events={
                    str(table): (str(start), None if end is None else str(end))
                    for table, (start, end) in period["events"].items()
                },
            ),
            condition_era=EraRule(
                persistence_window_days=_days(doc["condition_era"]["persistence_window_days"]),
                missing_end_days=_days(doc["condition_era"]["missing_end_days"]),
            ),
            drug_era=DrugEraRule(
                persistence_window_days=_days(doc["drug_era"]["persistence_window_days"]),
                missing_end_days=_days(doc["drug_era"]["missing_end_days"]),
                ingredient_vocabulary_ids=tuple(str(v) for v in doc["drug_era"]["ingredient_vocabulary_ids"]),
                ingredient_concept_class_id=str(doc["drug_era"]["ingredient_concept_class_id"]),
            ),
            cdm_source=CdmSourceDefaults(
                **{k: doc["cdm_source"][k] for k in CdmSourceDefaults.__annotations__}
            ),
        )
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise PasserelleError(f"{path}: not valid derivation rules ({error})") from error
    if rules.observation_period.end_extension_days >= rules.observation_period.split_gap_days - 1:
        # otherwise an extended period could touch or overlap the next one
        raise PasserelleError(
            f"{path}: observation_period.end_extension_days must be smaller than split_gap_days - 1"
        )
    return rules


def _days(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"expected a whole number of days >= 0, got {value!r}")
    return value


def _date(value: object) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))
