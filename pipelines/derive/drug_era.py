"""DRUG_ERA: spans of exposure to one ingredient, the OHDSI non-stockpile rule.

1. Each exposure rolls up to its ingredients: ancestors in CONCEPT_ANCESTOR of concept class
   Ingredient in RxNorm (or RxNorm Extension). A drug that is itself an ingredient counts as its own
   (Athena ships that self row in CONCEPT_ANCESTOR; shards of it sometimes do not).
2. Effective end: drug_exposure_end_date, else start + days_supply, else start + 1 day. Exposures
   with concept 0 or a negative days_supply are left out, as in the OHDSI script.
3. Overlapping exposures of one ingredient merge into sub-exposures (0-day window); "non-stockpile":
   a refill does not push the end out by the left-over supply.
4. Sub-exposures at most ``persistence_window_days`` apart merge into an era; gap_days is the era's
   length minus the days covered by its sub-exposures.
"""

from __future__ import annotations

import duckdb

from pipelines.derive.intervals import merged_intervals_sql
from pipelines.derive.rules import DrugEraRule
from pipelines.derive.scope import CDM, Scope, replace_rows


def rebuild_drug_era(con: duckdb.DuckDBPyConnection, scope: Scope, rule: DrugEraRule) -> int:
    """Replace the drug eras of the persons in scope; rows written."""
    vocabularies = ", ".join(_quote(v) for v in rule.ingredient_vocabulary_ids)
    ingredient_class = _quote(rule.ingredient_concept_class_id)
    exposures = f"""
        SELECT person_id, drug_concept_id, CAST(drug_exposure_start_date AS DATE) AS start_date,
               CAST(drug_exposure_end_date AS DATE) AS end_date, days_supply
        FROM {CDM}.drug_exposure
        WHERE {scope.where()} AND drug_concept_id <> 0 AND coalesce(days_supply, 0) >= 0
          AND drug_exposure_start_date IS NOT NULL AND person_id IS NOT NULL
    """
    ingredient_of = f"""
        WITH used AS (SELECT DISTINCT drug_concept_id FROM ({exposures}))
        SELECT ca.descendant_concept_id AS drug_concept_id, ca.ancestor_concept_id AS ingredient_concept_id
        FROM {CDM}.concept_ancestor AS ca
        JOIN used ON used.drug_concept_id = ca.descendant_concept_id
        JOIN {CDM}.concept AS c ON c.concept_id = ca.ancestor_concept_id
        WHERE c.vocabulary_id IN ({vocabularies}) AND c.concept_class_id = {ingredient_class}
        UNION
        SELECT c.concept_id, c.concept_id
        FROM {CDM}.concept AS c JOIN used ON used.drug_concept_id = c.concept_id
        WHERE c.vocabulary_id IN ({vocabularies}) AND c.concept_class_id = {ingredient_class}
    """
    ingredient_exposures = f"""
        SELECT e.person_id, i.ingredient_concept_id, e.start_date,
               greatest(e.start_date, coalesce(
                   e.end_date,
                   CASE WHEN e.days_supply > 0 THEN e.start_date + CAST(e.days_supply AS INTEGER) END,
                   e.start_date + {rule.missing_end_days})) AS end_date
        FROM ({exposures}) AS e JOIN ({ingredient_of}) AS i USING (drug_concept_id)
    """
    keys = ("person_id", "ingredient_concept_id")
    sub_exposures = merged_intervals_sql(ingredient_exposures, keys, 0)
    covered_days = f"""
        SELECT person_id, ingredient_concept_id, start_date, end_date,
               interval_count AS exposure_count, end_date - start_date AS days_exposed
        FROM ({sub_exposures})
    """
    eras = merged_intervals_sql(
        covered_days,
        keys,
        rule.persistence_window_days,
        "sum(exposure_count) AS exposure_count, sum(days_exposed) AS days_exposed",
    )
    rows_sql = f"""
        SELECT person_id, ingredient_concept_id AS drug_concept_id,
               start_date AS drug_era_start_date, end_date AS drug_era_end_date,
               CAST(exposure_count AS INTEGER) AS drug_exposure_count,
               CAST((end_date - start_date) - days_exposed AS INTEGER) AS gap_days
        FROM ({eras})
    """
    return replace_rows(
        con, "drug_era", "drug_era_id", rows_sql, "person_id, drug_concept_id, drug_era_start_date", scope
    )


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
