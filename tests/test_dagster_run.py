"""A full materialization of the Dagster asset graph on generated data, executed for real."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pipelines.definitions import defs
from pipelines.defs.settings import PasserelleSettings
from pipelines.synthetic import generate


@pytest.mark.slow
def test_the_whole_graph_materializes_into_a_temporary_warehouse(tmp_path: Path, monkeypatch):
    landing = tmp_path / "landing"
    generate(landing / "batch-001", 12, seed=3)
    # The deployment's own configuration path: environment variables read when steps run.
    for name, value in {
        "PASSERELLE_LANDING": landing,
        "PASSERELLE_STAGING": tmp_path / "staging",
        "PASSERELLE_WAREHOUSE": tmp_path / "omop.duckdb",
        "PASSERELLE_QUALITY": tmp_path / "quality",
        "PASSERELLE_PARQUET": tmp_path / "parquet",
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("PASSERELLE_VOCAB", raising=False)
    monkeypatch.delenv("PASSERELLE_POSTGRES", raising=False)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("landing_batches", ["batch-001"])
        first = dg.materialize(
            defs.assets,
            selection="vocabulary",
            instance=instance,
            resources={"settings": PasserelleSettings()},
        )
        assert first.success
        ingest = defs.resolve_job_def("ingest_batch").execute_in_process(
            instance=instance, partition_key="batch-001"
        )
        assert ingest.success
        refresh = defs.resolve_job_def("refresh_warehouse").execute_in_process(instance=instance)
        assert refresh.success

        person = instance.get_latest_materialization_event(dg.AssetKey("person")).asset_materialization
        assert person.metadata["rows_written"].value == 12
        staging = instance.get_latest_materialization_event(dg.AssetKey("fhir_staging")).asset_materialization
        assert staging.metadata["quarantined"].value == 3  # the generator's broken FHIR records
        assert "| OMOP table | rows |" in staging.metadata["rows_by_table"].value
        dqd = instance.get_latest_materialization_event(dg.AssetKey("dqd_results")).asset_materialization
        assert dqd.metadata["checks"].value > 1500
        checks = {c.asset_key.to_user_string(): c for c in refresh.get_asset_check_evaluations()}
        assert {"person", "measurement", "observation_period", "dqd_results"} <= set(checks)
        assert checks["dqd_results"].passed  # no fatal conformance failure: the export ran
        assert checks["person"].metadata["checks"].value > 50 and "PASS" in checks["person"].metadata

    with duckdb.connect(str(tmp_path / "omop.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM person").fetchone()[0] == 12
        assert con.execute("SELECT count(*) FROM observation_period").fetchone()[0] >= 12
        assert con.execute("SELECT count(*) FROM concept").fetchone()[0] > 100
    exported = duckdb.sql(f"SELECT count(*) FROM '{tmp_path}/parquet/person/*.parquet'").fetchall()[0][0]
    assert exported == 12
