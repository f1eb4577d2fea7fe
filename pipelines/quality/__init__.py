"""Data quality: the OHDSI Data Quality Dashboard checks run natively, and GX expectation suites.

``run_dqd(con)`` runs DQD's default suite on a CDM v5.4 (DuckDB connection or PostgreSQL URL) and
returns ``DqdResults``: per-check numbers and statuses, ``by_table()`` for per-asset checks and
``fatal_failures()`` for what must stop an export. The catalogue is data in ``quality/dqd/``.
"""

from pipelines.quality.catalogue import Catalogue, Check, CheckType, load_catalogue
from pipelines.quality.expectations import ExpectationReport, run_expectations
from pipelines.quality.report_html import write_html_report
from pipelines.quality.results import CheckResult, DqdResults
from pipelines.quality.results_json import write_results_json
from pipelines.quality.runner import run_dqd

__all__ = [
    "Catalogue",
    "Check",
    "CheckResult",
    "CheckType",
    "DqdResults",
    "ExpectationReport",
    "load_catalogue",
    "run_dqd",
    "run_expectations",
    "write_html_report",
    "write_results_json",
]
