"""Rebuild every derived table of an OMOP CDM v5.4 DuckDB database, in one transaction.

Works on any CDM with its tables in schema ``main`` (Passerelle's or another ETL's): it reads only
CDM tables. The order matters: death is deduplicated first because observation periods stop at it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import duckdb

from pipelines.derive.cdm_source import rebuild_cdm_source
from pipelines.derive.condition_era import rebuild_condition_era
from pipelines.derive.death import rebuild_death
from pipelines.derive.drug_era import rebuild_drug_era
from pipelines.derive.observation_period import rebuild_observation_period
from pipelines.derive.rules import DerivationRules, load_rules
from pipelines.derive.scope import Scope, existing_tables
from pipelines.errors import SchemaError

DERIVED_TABLES = ("death", "observation_period", "condition_era", "drug_era", "cdm_source")
# Tables the rules read besides the derived ones; the event tables of the observation period are
# optional (a CDM may leave some out).
_READ_TABLES = ("condition_occurrence", "drug_exposure", "concept", "concept_ancestor")


def derive_all(
    con: duckdb.DuckDBPyConnection,
    *,
    person_ids: list[int] | None = None,
    extraction_date: dt.date | None = None,
    rules: DerivationRules | None = None,
) -> dict[str, int]:
    """Rebuild death, observation_period, condition_era, drug_era and cdm_source; rows per table.

    ``person_ids`` limits the rebuild to those persons (their rows are replaced, the others keep
    theirs and their ids); None rebuilds everything. ``extraction_date`` caps observation periods
    and becomes cdm_source.source_release_date (default: the rules file's, else today).
    """
    rules = rules or load_rules()
    today = dt.date.today()
    extraction = extraction_date or rules.observation_period.extraction_date or today
    tables = existing_tables(con)
    missing = [t for t in (*DERIVED_TABLES, *_READ_TABLES) if t not in tables]
    if missing:
        raise SchemaError(
            f"the database has no CDM table {', '.join(missing)} in schema main:"
            " derive needs an OMOP CDM v5.4 database (create one with `passerelle init`)"
        )
    with _transaction(con):
        scope = Scope.create(con, person_ids)
        steps = {
            "death": lambda: rebuild_death(con, scope),
            "observation_period": lambda: rebuild_observation_period(
                con, scope, rules.observation_period, extraction, tables
            ),
            "condition_era": lambda: rebuild_condition_era(con, scope, rules.condition_era),
            "drug_era": lambda: rebuild_drug_era(con, scope, rules.drug_era),
            "cdm_source": lambda: rebuild_cdm_source(
                con, rules.cdm_source, extraction_date=extraction, release_date=today, tables=tables
            ),
        }
        counts = {table: _run_step(table, step) for table, step in steps.items()}
        scope.drop(con)
    return counts


def _run_step(table: str, step: Callable[[], int]) -> int:
    try:
        return step()
    except (duckdb.BinderException, duckdb.CatalogException) as error:
        # a column or table the rule reads is not there: the database is not quite CDM v5.4
        detail = str(error).strip().splitlines()[0]
        raise SchemaError(
            f"cannot rebuild {table}: the CDM does not match OMOP CDM v5.4 ({detail})"
        ) from error


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Own a transaction, or join the caller's when one is open (the loader's run, say)."""
    if _in_transaction(con):
        yield  # the caller commits or rolls back everything together
        return
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def _in_transaction(con: duckdb.DuckDBPyConnection) -> bool:
    # DuckDB's Python API does not say; in auto-commit mode every statement gets a new transaction
    # id, inside an explicit transaction they share one. (Trying BEGIN would abort the caller's.)
    first = con.execute("SELECT txid_current()").fetchone()[0]
    return con.execute("SELECT txid_current()").fetchone()[0] == first
