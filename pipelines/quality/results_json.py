"""The DQD results JSON, as DQD 2.8.4 writes it, so the DQD viewer and Ares read ours unchanged.

Layout (../shared/reference/ohdsi/dqd/RESULTS_SCHEMA.md): top-level scalars and Overview values are
one-element arrays (R's jsonlite), CheckResults and Metadata are arrays of row objects, a missing
value is left out of its row rather than written as null, numbers carry at most 4 decimals, and
timestamps are local time "YYYY-MM-DD HH:MM:SS". File name: <cdm_source_abbreviation>-<end>.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.quality.results import CheckResult, DqdResults

_TIMESTAMP = "%Y-%m-%d %H:%M:%S"


def results_document(results: DqdResults) -> dict:
    """The JSON document as Python objects."""
    seconds = (results.ended - results.started).total_seconds()
    return {
        "startTimestamp": [results.started.strftime(_TIMESTAMP)],
        "endTimestamp": [results.ended.strftime(_TIMESTAMP)],
        "executionTime": [_duration(seconds)],
        # DQD stores R's difftime in its automatic unit here; we write seconds, as the name says
        "executionTimeSeconds": [round(seconds, 4)],
        "CheckResults": [_row(r) for r in results.results],
        "Metadata": [{k: v for k, v in results.metadata.items() if v is not None}],
        "Overview": {key: [value] for key, value in results.overview().items()},
    }


def write_results_json(results: DqdResults, out_dir: Path) -> Path:
    """Write the results file into ``out_dir`` (created if needed); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    abbreviation = str(results.metadata.get("cdmSourceAbbreviation") or "cdm").lower().replace(" ", "_")
    path = out_dir / f"{abbreviation}-{results.ended.strftime('%Y%m%d%H%M%S')}.json"
    path.write_text(json.dumps(results_document(results), ensure_ascii=False), encoding="utf-8")
    return path


def _row(r: CheckResult) -> dict:
    """One CheckResults object, keys in DQD's order, missing values left out."""
    check = r.check
    row = {
        "numViolatedRows": r.num_violated_rows,
        "pctViolatedRows": None if r.pct_violated_rows is None else round(r.pct_violated_rows, 4),
        "numDenominatorRows": r.num_denominator_rows,
        "executionTime": None if r.execution_seconds is None else f"{r.execution_seconds:.6f} secs",
        "queryText": r.query_text,
        "checkName": check.name,
        "checkLevel": check.type.level,
        "checkDescription": r.description,
        "cdmTableName": r.table,
        "cdmFieldName": r.field,
        "conceptId": check.concept_id,
        "unitConceptId": check.unit_concept_id,
        "sqlFile": check.type.sql_file,
        "category": check.type.category,
        "subcategory": check.type.subcategory,
        "context": check.type.context,
        "error": r.error,
        "checkId": r.check_id,
        "failed": r.failed,
        "passed": r.passed,
        "isError": r.is_error,
        "notApplicable": r.not_applicable,
        "notApplicableReason": r.not_applicable_reason,
        "thresholdValue": _number(check.threshold),
        "notesValue": check.notes,
    }
    if r.error:  # as DQD: an errored check has no numbers
        for key in ("numViolatedRows", "pctViolatedRows", "numDenominatorRows", "executionTime"):
            row[key] = None
    return {k: v for k, v in row.items() if v is not None}


def _number(value: float | None) -> int | float | None:
    if value is None:
        return None
    return int(value) if float(value).is_integer() else value


def _duration(seconds: float) -> str:
    """R's difftime in its automatic unit, rounded: '12 secs', '3 mins', '1 hours'."""
    if seconds < 60:
        return f"{round(seconds)} secs"
    if seconds < 3600:
        return f"{round(seconds / 60)} mins"
    return f"{round(seconds / 3600)} hours"
