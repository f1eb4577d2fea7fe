"""OBSERVATION_PERIOD from the clinical events: the OHDSI EHR working-group rule, parameters as data.

A person's events (every table listed in the rules, start..end) are sorted; a new period starts when
the next event begins ``split_gap_days`` or more after the latest end seen so far. A period runs from
its first event to the first of: its last event end + ``end_extension_days``, death +
``death_extension_days``, the extraction date. The cap never cuts an event off: a period always
covers its own events, so no recorded event falls outside observation (events long after death or
after the extraction date are the data-quality checks' to report, not ours to hide).
"""

from __future__ import annotations

import datetime as dt

import duckdb

from pipelines.derive.intervals import merged_intervals_sql
from pipelines.derive.rules import ObservationPeriodRule
from pipelines.derive.scope import CDM, Scope, existing_columns, replace_rows
from pipelines.errors import SchemaError


def rebuild_observation_period(
    con: duckdb.DuckDBPyConnection,
    scope: Scope,
    rule: ObservationPeriodRule,
    extraction_date: dt.date,
    tables: set[str],
) -> int:
    """Replace the observation periods of the persons in scope; rows written."""
    events_sql = _events_sql(con, scope, rule, tables)
    if events_sql is None:
        con.execute(f"DELETE FROM {CDM}.observation_period WHERE {scope.where()}")
        return 0
    # Events starting less than split_gap_days apart can never be split, so each person's events are
    # first collapsed per block of split_gap_days days (by start date) into one interval: exact, and
    # it turns ~100 events per person into a handful of rows before the window functions.
    blocks = f"""
        SELECT person_id, min(start_date) AS start_date,
               max(greatest(start_date, coalesce(end_date, start_date))) AS end_date
        FROM ({events_sql})
        WHERE person_id IS NOT NULL AND start_date IS NOT NULL
        GROUP BY person_id, floor((start_date - DATE '1900-01-01') / {rule.split_gap_days})
    """
    # "a gap of N days or more splits" is "runs merge across at most N - 1 days"
    spans = merged_intervals_sql(blocks, ("person_id",), rule.split_gap_days - 1)
    death = (
        f"SELECT person_id, min(CAST(death_date AS DATE)) AS death_date FROM {CDM}.death"
        f" WHERE {scope.where()} GROUP BY person_id"
        if "death" in tables
        else "SELECT NULL::BIGINT AS person_id, NULL::DATE AS death_date WHERE FALSE"
    )
    rows_sql = f"""
        SELECT s.person_id,
               s.start_date AS observation_period_start_date,
               greatest(s.end_date,
                        least(s.end_date + {rule.end_extension_days},
                              d.death_date + {rule.death_extension_days},
                              DATE '{extraction_date.isoformat()}')) AS observation_period_end_date,
               {rule.period_type_concept_id} AS period_type_concept_id
        FROM ({spans}) AS s LEFT JOIN ({death}) AS d USING (person_id)
    """
    return replace_rows(
        con,
        "observation_period",
        "observation_period_id",
        rows_sql,
        "person_id, observation_period_start_date",
        scope,
    )


def _events_sql(
    con: duckdb.DuckDBPyConnection, scope: Scope, rule: ObservationPeriodRule, tables: set[str]
) -> str | None:
    """UNION ALL of (person_id, start_date, end_date) over the event tables this CDM has."""
    parts = []
    for table, (start, end) in rule.events.items():
        if table not in tables:
            continue  # a CDM may leave out tables it does not populate (e.g. visit_detail)
        columns = existing_columns(con, table)
        missing = [c for c in ("person_id", start, end) if c is not None and c not in columns]
        if missing:
            raise SchemaError(f"CDM table {table} has no column {', '.join(missing)}: not OMOP CDM v5.4")
        end_expr = "NULL::DATE" if end is None else f"CAST({end} AS DATE)"
        parts.append(
            f"SELECT person_id, CAST({start} AS DATE) AS start_date, {end_expr} AS end_date"
            f" FROM {CDM}.{table} WHERE {scope.where()}"
        )
    return "\nUNION ALL\n".join(parts) if parts else None
