"""Quality: the OHDSI Data Quality Dashboard checks, as an asset and as asset checks on each table."""

import json
import time

import dagster as dg

from pipelines.defs.cdm import CLINICAL_TABLES
from pipelines.defs.derived import DERIVED_TABLES
from pipelines.defs.settings import PasserelleSettings
from pipelines.job.pipeline import status_counts

_CHECKED_TABLES = [*CLINICAL_TABLES, *DERIVED_TABLES]
_TABLE_SUMMARY = "dqd_by_table.json"  # written by dqd_results, read by the per-table checks


@dg.asset(
    group_name="quality",
    kinds={"duckdb", "html"},
    deps=[*CLINICAL_TABLES, *DERIVED_TABLES],
    check_specs=[
        dg.AssetCheckSpec(
            "no_fatal_conformance_failures",
            asset="dqd_results",
            blocking=True,
            description="Fatal DQD conformance checks (tables, fields, keys) all pass; exports wait for it.",
        )
    ],
)
def dqd_results(settings: PasserelleSettings):
    """The Data Quality Dashboard results of the whole CDM (the JSON the DQD viewer and Ares read)
    and a readable HTML report. Sites judge a CDM by these numbers."""
    from pipelines.quality import run_dqd
    from pipelines.warehouse.duckdb_file import connect

    started = time.perf_counter()
    out = settings.quality_folder
    with connect(settings.warehouse_path, read_only=True) as con:
        results = run_dqd(con, out_dir=out)
    statuses = status_counts(results.results)
    fatal = results.fatal_failures()
    per_table = {table: results.table_metadata(table) for table in _CHECKED_TABLES}
    (out / _TABLE_SUMMARY).write_text(json.dumps(per_table, indent=1, sort_keys=True))
    yield dg.MaterializeResult(
        metadata={
            "checks": dg.MetadataValue.int(sum(statuses.values())),
            **{status: dg.MetadataValue.int(n) for status, n in sorted(statuses.items())},
            "report": dg.MetadataValue.path(str(out / "dq_report.html")),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    yield dg.AssetCheckResult(
        check_name="no_fatal_conformance_failures",
        passed=not fatal,
        metadata={"fatal_failures": dg.MetadataValue.int(len(fatal))},
    )


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            "dqd",
            asset=table,
            additional_deps=["dqd_results"],
            description="Data Quality Dashboard checks of this table",
        )
        for table in _CHECKED_TABLES
    ],
    can_subset=True,
)
def dqd_table_checks(context: dg.AssetCheckExecutionContext, settings: PasserelleSettings):
    """One check per table, from the DQD results: passes when none of its checks failed."""
    per_table = json.loads((settings.quality_folder / _TABLE_SUMMARY).read_text())
    selected = {key.asset_key.path[-1] for key in context.selected_asset_check_keys}
    for table in _CHECKED_TABLES:
        if table not in selected:
            continue
        numbers = per_table.get(table, {})  # checks by status, then each failed check's numbers
        yield dg.AssetCheckResult(
            asset_key=table,
            check_name="dqd",
            passed=numbers.get("FAIL", 0) == 0 and numbers.get("ERROR", 0) == 0,
            severity=dg.AssetCheckSeverity.ERROR if numbers.get("fatal") else dg.AssetCheckSeverity.WARN,
            metadata=numbers,
        )
