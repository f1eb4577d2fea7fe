"""great-expectations suites for what DQD does not check, run through GX and rendered as Data Docs.

Suites are GX's own JSON (``quality/expectations/*.json``); ``meta.passerelle`` says what a suite
validates: ``query`` (SQL on the CDM, ``{cdm}`` being its schema) or ``frame`` (a staging frame the
caller hands in by that name, e.g. ``{"codes": frame}``). great_expectations is imported inside
``run_expectations`` only: importing it takes 10 s or more, which no other command should pay.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import polars as pl

from pipelines.errors import PasserelleError
from pipelines.project_files import data_dir


@dataclass(frozen=True)
class ExpectationOutcome:
    suite: str
    expectation: str
    column: str | None
    condition: str | None
    success: bool
    unexpected_count: int | None
    element_count: int | None


@dataclass
class ExpectationReport:
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # suites whose frame was not handed in
    docs_index: Path | None = None

    @property
    def suites(self) -> dict[str, bool]:
        """Suite name -> whether every expectation of it passed."""
        result: dict[str, bool] = {}
        for o in self.outcomes:
            result[o.suite] = result.get(o.suite, True) and o.success
        return result

    @property
    def total(self) -> int:
        return len(self.suites)

    @property
    def passed(self) -> int:
        return sum(self.suites.values())


def load_suites(folder: Path | None = None) -> dict[str, dict]:
    """The suite documents by name (``folder`` defaults to ``quality/expectations``)."""
    folder = folder or data_dir("quality") / "expectations"
    suites = {}
    for path in sorted(folder.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise PasserelleError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from error
        target = document.get("meta", {}).get("passerelle", {})
        if not ("query" in target) ^ ("frame" in target):
            raise PasserelleError(f"{path}: meta.passerelle needs exactly one of 'query' or 'frame'")
        suites[document["name"]] = document
    return suites


def run_expectations(
    con: duckdb.DuckDBPyConnection | None,
    out_dir: Path,
    *,
    cdm_schema: str = "main",
    frames: dict[str, pl.DataFrame] | None = None,
    suites_dir: Path | None = None,
) -> ExpectationReport:
    """Validate the CDM (``con``) and the given staging ``frames``; Data Docs go to ``out_dir``."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no network calls from a pipeline run
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    out_dir.mkdir(parents=True, exist_ok=True)
    context = gx.get_context(mode="ephemeral")
    for site in context.get_site_names():  # GX's default site writes into a temporary folder
        context.delete_data_docs_site(site)
    context.add_data_docs_site(
        site_name="passerelle",
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out_dir)},
        },
    )
    source = context.data_sources.add_pandas("passerelle")
    report = ExpectationReport(docs_index=out_dir / "index.html")
    for name, document in load_suites(suites_dir).items():
        frame = _frame(document["meta"]["passerelle"], con, cdm_schema, frames or {})
        if frame is None:
            report.skipped.append(name)
            continue
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all rows")
        suite = context.suites.add(gx.ExpectationSuite(**_with_conditions_in_meta(document)))
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(data=batch, suite=suite, name=name)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=name, validation_definitions=[validation], actions=[UpdateDataDocsAction(name="docs")]
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": frame})
        for result in run.run_results.values():
            for r in result.results:
                kwargs = r.expectation_config.kwargs
                report.outcomes.append(
                    ExpectationOutcome(
                        suite=name,
                        expectation=r.expectation_config.type,
                        column=kwargs.get("column"),
                        condition=r.expectation_config.meta.get("row_condition"),
                        success=bool(r.success),
                        unexpected_count=r.result.get("unexpected_count"),
                        element_count=r.result.get("element_count"),
                    )
                )
    return report


def _with_conditions_in_meta(document: dict) -> dict:
    """GX parses a row_condition into its own object; keep the text in meta to report it as written."""
    expectations = []
    for e in document["expectations"]:
        condition = e.get("kwargs", {}).get("row_condition")
        expectations.append(
            {**e, "meta": {**e.get("meta", {}), "row_condition": condition}} if condition else e
        )
    return {**document, "expectations": expectations}


def _frame(target: dict, con, cdm_schema: str, frames: dict[str, pl.DataFrame]):
    """The pandas frame a suite validates, or None when it is a staging frame nobody handed in."""
    if "query" in target:
        if con is None:
            return None
        return con.execute(target["query"].format(cdm=cdm_schema)).df()
    frame = frames.get(target["frame"])
    return None if frame is None else frame.to_pandas()
