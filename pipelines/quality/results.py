"""Results of a DQD run: one ``CheckResult`` per check, with DQD's statuses, and their summary.

Statuses follow DQD 2.8.4 (see docs/quality.md): error, then not applicable, then failed, then passed.
``fatal`` failures (DQD severity ``fatal``: missing tables or fields, NULL required fields, non-integer
ids, duplicate primary keys, dangling foreign keys, overlapping observation periods) are the ones an
export downstream should not go past.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipelines.quality.catalogue import Check

CATEGORIES = ("Plausibility", "Conformance", "Completeness")
CONTEXTS = ("Verification", "Validation")


@dataclass
class CheckResult:
    check: Check
    query_text: str
    num_violated_rows: int | None = None
    pct_violated_rows: float | None = None
    num_denominator_rows: int | None = None
    execution_seconds: float | None = None
    error: str | None = None
    failed: int = 0
    passed: int = 0
    is_error: int = 0
    not_applicable: int = 0
    not_applicable_reason: str | None = None

    @property
    def check_id(self) -> str:
        return self.check.check_id

    @property
    def table(self) -> str:
        return self.check.table.upper()

    @property
    def field(self) -> str | None:
        return self.check.field.upper() if self.check.field else None

    @property
    def is_fatal(self) -> bool:
        """A failure (or error) of a check DQD rates ``fatal``: the CDM is not structurally sound."""
        return self.check.type.severity == "fatal" and bool(self.failed or self.is_error)

    @property
    def status(self) -> str:
        if self.is_error:
            return "ERROR"
        if self.not_applicable:
            return "NOT APPLICABLE"
        return "FAIL" if self.failed else "PASS"

    @property
    def description(self) -> str:
        """The check type's description with this check's values (upper-cased names, as DQD does)."""
        c = self.check
        values = {
            **c.parameters,
            "table": self.table,
            "field": self.field or "",
            "concept_id": c.concept_id or "",
            "concept_name": c.concept_name or "",
        }
        for key in ("fk_table", "fk_field", "end_field", "after_table", "after_field"):
            if key in values:
                values[key] = values[key].upper()
        return c.type.description.format_map(_Blank(values))


class _Blank(dict):
    def __missing__(self, key: str) -> str:
        return ""


@dataclass
class DqdResults:
    results: list[CheckResult]
    metadata: dict[str, object]  # the cdm_source row, camelCased, plus dqdVersion
    started: datetime
    ended: datetime

    def by_table(self) -> dict[str, list[CheckResult]]:
        """Results per CDM table (lower case), for per-asset checks."""
        tables: dict[str, list[CheckResult]] = {}
        for r in self.results:
            tables.setdefault(r.check.table, []).append(r)
        return tables

    def table_metadata(self, table: str) -> dict[str, int | str]:
        """Metadata for a per-table asset check: checks by status, fatal failures, and each failed
        check's numbers ("12 of 340 rows (3.53%), threshold 0%") under its checkId."""
        rows = self.by_table().get(table.lower(), [])
        metadata: dict[str, int | str] = {"checks": len(rows), "fatal": sum(r.is_fatal for r in rows)}
        for r in rows:
            metadata[r.status] = int(metadata.get(r.status, 0)) + 1
        for r in rows:
            if r.is_error:
                metadata[r.check_id] = f"error: {r.error}"
            elif r.failed:
                threshold = f"{r.check.threshold:g}%" if r.check.threshold else "0%"
                metadata[r.check_id] = (
                    f"{r.num_violated_rows} of {r.num_denominator_rows} rows "
                    f"({(r.pct_violated_rows or 0) * 100:.2f}%), threshold {threshold}"
                )
        return metadata

    def fatal_failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.is_fatal]

    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.failed or r.is_error]

    def overview(self) -> dict[str, int | float]:
        """DQD's Overview counts (RESULTS_SCHEMA.md section 5)."""
        total = len(self.results)
        overall_failed = sum(r.failed for r in self.results)
        passed = total - overall_failed
        judged = passed + overall_failed
        view: dict[str, int | float] = {
            "countTotal": total,
            "countThresholdFailed": sum(1 for r in self.results if r.failed and not r.error),
            "countErrorFailed": sum(1 for r in self.results if r.error),
            "countOverallFailed": overall_failed,
            "countPassed": passed,
            "percentPassed": round(passed / judged * 100, 2) if judged else 0,
            "percentFailed": round(overall_failed / judged * 100, 2) if judged else 0,
        }
        for category in CATEGORIES:
            rows = [r for r in self.results if r.check.type.category == category]
            view[f"countTotal{category}"] = len(rows)
            view[f"countFailed{category}"] = sum(r.failed for r in rows)
            view[f"countPassed{category}"] = sum(r.passed for r in rows)
        return view

    def grid(self) -> dict[tuple[str, str], dict[str, int]]:
        """The viewer's grid: (context, category) -> pass/fail/NA/error counts (pass includes NA)."""
        cells: dict[tuple[str, str], dict[str, int]] = {}
        for r in self.results:
            for key in ((r.check.type.context, r.check.type.category), ("Total", r.check.type.category),
                        (r.check.type.context, "Total"), ("Total", "Total")):  # fmt: skip
                cell = cells.setdefault(key, {"pass": 0, "fail": 0, "not_applicable": 0, "error": 0})
                cell["pass"] += int(bool(r.passed or r.not_applicable))
                cell["fail"] += int(bool(r.failed or r.is_error))
                cell["not_applicable"] += r.not_applicable
                cell["error"] += r.is_error
        return cells
