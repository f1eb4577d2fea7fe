"""CDM_SOURCE: the one row OHDSI tools read to learn what this CDM is.

CDM version and its concept, and the vocabulary release (the VOCABULARY row 'None', as the CDM
documentation says to look it up) are always refreshed. A site's own names (source name,
abbreviation, holder, description, documentation and ETL references) are kept when a row exists;
otherwise they come from the rules file.
"""

from __future__ import annotations

import datetime as dt

import duckdb

from pipelines.derive.rules import CdmSourceDefaults
from pipelines.derive.scope import CDM

_KEPT = (
    "cdm_source_name",
    "cdm_source_abbreviation",
    "cdm_holder",
    "source_description",
    "source_documentation_reference",
    "cdm_etl_reference",
)
# cdm_source.vocabulary_version is varchar(20) while vocabulary.vocabulary_version is varchar(255):
# a longer release name is cut so the row still loads into PostgreSQL.
_VOCABULARY_VERSION_LENGTH = 20
UNKNOWN_VOCABULARY = "unknown"


def rebuild_cdm_source(
    con: duckdb.DuckDBPyConnection,
    defaults: CdmSourceDefaults,
    *,
    extraction_date: dt.date,
    release_date: dt.date,
    tables: set[str],
) -> int:
    """Write the single cdm_source row; 1."""
    existing = con.execute(
        f"SELECT {', '.join(_KEPT)}, vocabulary_version FROM {CDM}.cdm_source"
        " ORDER BY cdm_release_date DESC NULLS LAST LIMIT 1"
    ).fetchone()
    kept = dict(zip(_KEPT, existing[: len(_KEPT)], strict=True)) if existing else {}
    row = {name: kept.get(name) or getattr(defaults, name, None) for name in _KEPT}
    vocabulary_version = _vocabulary_version(con, tables) or (existing[-1] if existing else None)
    row |= {
        "source_release_date": extraction_date,
        "cdm_release_date": release_date,
        "cdm_version": defaults.cdm_version,
        "cdm_version_concept_id": defaults.cdm_version_concept_id,
        "vocabulary_version": (vocabulary_version or UNKNOWN_VOCABULARY)[:_VOCABULARY_VERSION_LENGTH],
    }
    con.execute(f"DELETE FROM {CDM}.cdm_source")
    names = list(row)
    con.execute(
        f"INSERT INTO {CDM}.cdm_source ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})",
        [row[name] for name in names],
    )
    return 1


def _vocabulary_version(con: duckdb.DuckDBPyConnection, tables: set[str]) -> str | None:
    if "vocabulary" not in tables:
        return None
    found = con.execute(
        f"SELECT vocabulary_version FROM {CDM}.vocabulary WHERE vocabulary_id = 'None'"
        " AND vocabulary_version IS NOT NULL LIMIT 1"
    ).fetchone()
    return found[0] if found else None
