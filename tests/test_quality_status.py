"""DQD's status rules on hand-made results: threshold strictness, precedence, Not Applicable drivers."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.quality.catalogue import load_catalogue
from pipelines.quality.results import CheckResult
from pipelines.quality.status import evaluate


def _check(check_id: str):
    return next(c for c in load_catalogue("5.4").select() if c.check_id == check_id)


def _result(check_id: str, violated: int | None, denominator: int | None, *, threshold=None, error=None):
    check = _check(check_id)
    if threshold is not None:
        check = dataclasses.replace(check, threshold=threshold)
    pct = None if violated is None else (violated / denominator if denominator else 0.0)
    return CheckResult(check, "SELECT 1", violated, pct, denominator, 0.0, error)


def _drivers() -> list[CheckResult]:
    """cdmTable, cdmField and measureValueCompleteness of measurement.value_as_number (populated)."""
    return [
        _result("table_cdmtable_measurement", 0, 1),
        _result("field_cdmfield_measurement_value_as_number", 0, 1),
        _result("field_measurevaluecompleteness_measurement_value_as_number", 2, 20),
    ]


@pytest.mark.parametrize(
    ("violated", "threshold", "status"),
    [
        (1, 5.0, "PASS"),  # 5 % is not more than 5 %: the comparison is strict
        (2, 5.0, "FAIL"),
        (1, 0.0, "FAIL"),  # threshold 0: any violation fails
        (1, None, "FAIL"),  # no threshold: any violation fails
        (0, None, "PASS"),
    ],
)
def test_threshold(violated: int, threshold: float | None, status: str) -> None:
    check = _result("field_isrequired_measurement_person_id", violated, 20, threshold=threshold)
    results = [*_drivers(), _result("field_cdmfield_measurement_person_id", 0, 1), check]
    evaluate(results)
    assert check.status == status
    assert (check.passed, check.failed) == ((1, 0) if status == "PASS" else (0, 1))


def test_error_comes_before_everything() -> None:
    broken = _result("field_isrequired_measurement_person_id", None, None, error="Catalog Error: no table")
    results = [*_drivers(), broken]
    evaluate(results)
    assert (broken.is_error, broken.failed, broken.passed, broken.not_applicable) == (1, 0, 0, 0)


def test_without_the_driving_checks_nothing_is_judged_passed() -> None:
    check = _result("field_isrequired_measurement_person_id", 0, 20)
    evaluate([check])
    assert (check.failed, check.passed, check.not_applicable) == (0, 0, 0)


def test_condition_era_completeness_is_not_applicable_without_conditions() -> None:
    era = _result("table_measureconditioneracompleteness_condition_era", 0, 0)
    results = [
        _result("table_cdmtable_condition_occurrence", 0, 1),
        _result("table_cdmtable_condition_era", 0, 1),
        _result("field_cdmfield_condition_occurrence_person_id", 0, 1),
        _result("field_measurevaluecompleteness_condition_occurrence_person_id", 0, 0),
        era,
    ]
    evaluate(results)
    assert (era.not_applicable, era.not_applicable_reason) == (1, "Table CONDITION_OCCURRENCE is empty.")
