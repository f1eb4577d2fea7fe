"""CONDITION_ERA: spans of one condition concept, the OHDSI condition era rule.

Occurrences of the same standard concept (concept 0 excluded: an unmapped code says nothing about
which condition it is) merge when the next one starts at most ``persistence_window_days`` after the
latest end so far; an occurrence without an end date lasts ``missing_end_days`` (start + 1 day).
"""

from __future__ import annotations

import duckdb

from pipelines.derive.intervals import merged_intervals_sql
from pipelines.derive.rules import EraRule
from pipelines.derive.scope import CDM, Scope, replace_rows


def rebuild_condition_era(con: duckdb.DuckDBPyConnection, scope: Scope, rule: EraRule) -> int:
    """Replace the condition eras of the persons in scope; rows written."""
    occurrences = f"""
        SELECT person_id, condition_concept_id, start_date,
               greatest(start_date, coalesce(end_date, start_date + {rule.missing_end_days})) AS end_date
        FROM (
            SELECT person_id, condition_concept_id,
                   CAST(condition_start_date AS DATE) AS start_date,
                   CAST(condition_end_date AS DATE) AS end_date
            FROM {CDM}.condition_occurrence
            WHERE {scope.where()} AND condition_concept_id <> 0
              AND condition_start_date IS NOT NULL AND person_id IS NOT NULL
        )
    """
    eras = merged_intervals_sql(
        occurrences, ("person_id", "condition_concept_id"), rule.persistence_window_days
    )
    rows_sql = f"""
        SELECT person_id, condition_concept_id,
               start_date AS condition_era_start_date,
               end_date AS condition_era_end_date,
               interval_count AS condition_occurrence_count
        FROM ({eras})
    """
    return replace_rows(
        con,
        "condition_era",
        "condition_era_id",
        rows_sql,
        "person_id, condition_concept_id, condition_era_start_date",
        scope,
    )
