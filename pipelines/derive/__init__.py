"""Tables computed from the CDM itself: observation_period, condition_era, drug_era, death, cdm_source.

``derive_all`` rebuilds them on any OMOP CDM v5.4 DuckDB database; the rules' parameters live in
``omop_ddl/derivation_rules.yaml`` and docs/derived_tables.md explains each rule.
"""

from pipelines.derive.rebuild import DERIVED_TABLES, derive_all
from pipelines.derive.rules import DerivationRules, load_rules

__all__ = ["DERIVED_TABLES", "DerivationRules", "derive_all", "load_rules"]
