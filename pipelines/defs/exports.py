"""Exports for OHDSI tools: the CDM as Parquet (Spark, R arrow, DuckDB) and in PostgreSQL (ATLAS)."""

import dagster as dg

from pipelines.defs.settings import PasserelleSettings


@dg.asset(group_name="exports", kinds={"parquet", "postgres"}, deps=["dqd_results"])
def cdm_exports(context: dg.AssetExecutionContext, settings: PasserelleSettings) -> dg.MaterializeResult:
    """The CDM copied to the configured export targets (PASSERELLE_PARQUET, PASSERELLE_POSTGRES),
    exactly the CDM v5.4 columns, once the quality checks found no fatal conformance failure."""
    from pipelines.warehouse import export_cdm

    parquet, postgres = settings.parquet_folder, settings.postgres_url
    if parquet is None and postgres is None:
        context.log.info("no export target configured (PASSERELLE_PARQUET, PASSERELLE_POSTGRES)")
        return dg.MaterializeResult(metadata={"targets": "none configured"})
    rows = export_cdm(settings.warehouse_path, parquet=parquet, postgres=postgres)
    return dg.MaterializeResult(
        metadata={
            "targets": ", ".join(
                t for t in ("parquet" if parquet else "", "postgres" if postgres else "") if t
            ),
            "rows": dg.MetadataValue.int(sum(rows.values())),
        }
    )
