"""DQD's status of each check: threshold evaluation, then Not Applicable (DQD 2.8.4 rules).

Order: error, then not applicable, then failed, then passed. A check fails when its threshold is
missing or 0 and any row violates it, else when pct_violated_rows * 100 > threshold (strict).
Not Applicable needs the cdmTable, cdmField and measureValueCompleteness results of the same run.
"""

from __future__ import annotations

from pipelines.quality.results import CheckResult

_NA_DRIVERS = {"cdmTable", "cdmField", "measureValueCompleteness"}


def evaluate(results: list[CheckResult]) -> None:
    """Set failed / is_error / not_applicable / passed on every result, in place."""
    for r in results:
        r.failed = r.passed = r.is_error = r.not_applicable = 0
        r.not_applicable_reason = None
        if r.error:
            r.is_error = 1
        elif r.check.name in ("cdmTable", "cdmField") and r.num_violated_rows:
            r.failed = 1
        elif r.num_violated_rows is not None:
            threshold = r.check.threshold
            if not threshold:
                r.failed = int(r.num_violated_rows > 0)
            else:
                r.failed = int(r.pct_violated_rows * 100 > threshold)
    if not {r.check.name for r in results} >= _NA_DRIVERS:
        return  # as DQD: without the three driving checks no result is judged passed either
    _not_applicable(results)
    for r in results:
        if r.not_applicable:
            r.failed = 0
        r.passed = int(not (r.failed or r.is_error or r.not_applicable))


def _not_applicable(results: list[CheckResult]) -> None:
    missing_tables = {r.table for r in results if r.check.name == "cdmTable" and r.failed}
    missing_fields = {(r.table, r.field) for r in results if r.check.name == "cdmField" and r.failed}
    known_fields = {(r.table, r.field) for r in results if r.check.name == "cdmField"}
    completeness = [r for r in results if r.check.name == "measureValueCompleteness" and not r.error]
    empty_tables = {r.table for r in completeness if r.num_denominator_rows == 0}
    empty_fields = {(r.table, r.field) for r in completeness if r.num_violated_rows == r.num_denominator_rows}
    condition_occurrence_absent = bool({"CONDITION_OCCURRENCE"} & (missing_tables | empty_tables))

    for r in results:
        name, table, field = r.check.name, r.table, r.field
        reason = None
        if r.is_error or name in ("cdmTable", "cdmField"):
            continue
        if name == "measureConditionEraCompleteness":
            if condition_occurrence_absent:
                reason = "Table CONDITION_OCCURRENCE is empty."
        elif table in missing_tables:
            reason = f"Table {table} does not exist."
        elif field and ((table, field) in missing_fields or (table, field) not in known_fields):
            reason = f"Field {table}.{field} does not exist."
        elif name == "measurePersonCompleteness":
            pass  # an empty table is exactly what this check measures (DQD 2.8.4)
        elif table in empty_tables:
            reason = f"Table {table} is empty."
        elif name == "measureValueCompleteness":
            pass
        elif field and (table, field) in empty_fields:
            reason = f"Field {table}.{field} is not populated."
        elif r.check.type.level == "CONCEPT" and r.num_denominator_rows == 0:
            if r.check.unit_concept_id:
                reason = (
                    f"Combination of {field}={r.check.concept_id}, unitConceptId={r.check.unit_concept_id} "
                    f"and VALUE_AS_NUMBER IS NOT NULL is missing from the {table} table."
                )
            else:
                reason = f"{field}={r.check.concept_id} is missing from the {table} table."
        if reason:
            r.not_applicable = 1
            r.not_applicable_reason = reason
