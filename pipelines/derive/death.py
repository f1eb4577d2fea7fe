"""DEATH: one row per person (CDM v5.4 allows only one).

Several sources may report a death (a FHIR Patient's deceasedDateTime, an openEHR death notification,
a registry). We keep the earliest date: a later date usually comes from a record written after the
fact (certificate, registry sync). On the same date, the row that names a cause wins, then the one
with a time, then the one whose type concept is set; ties beyond that keep the lowest cause concept
so reruns choose the same row.
"""

from __future__ import annotations

import duckdb

from pipelines.derive.scope import CDM, Scope

_TEMP = "_passerelle_death_chosen"


def rebuild_death(con: duckdb.DuckDBPyConnection, scope: Scope) -> int:
    """Reduce the death rows of the persons in scope to one per person; rows left."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {_TEMP} AS
        SELECT * EXCLUDE (choice)
        FROM (
            SELECT *, row_number() OVER (
                       PARTITION BY person_id
                       ORDER BY death_date NULLS LAST,
                                coalesce(cause_concept_id, 0) = 0,
                                death_datetime IS NULL,
                                coalesce(death_type_concept_id, 0) = 0,
                                cause_concept_id NULLS LAST,
                                death_type_concept_id NULLS LAST,
                                cause_source_value NULLS LAST) AS choice
            FROM {CDM}.death
            WHERE {scope.where()} AND person_id IS NOT NULL
        )
        WHERE choice = 1
        """
    )
    con.execute(f"DELETE FROM {CDM}.death WHERE {scope.where()}")
    con.execute(f"INSERT INTO {CDM}.death BY NAME SELECT * FROM {_TEMP}")
    kept = con.execute(f"SELECT count(*) FROM {_TEMP}").fetchone()[0]
    con.execute(f"DROP TABLE {_TEMP}")
    return int(kept)
