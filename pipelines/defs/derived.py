"""Derived tables, computed from the CDM itself after every load."""

import time

import dagster as dg

from pipelines.defs.cdm import CLINICAL_TABLES
from pipelines.defs.partitions import WAREHOUSE_POOL
from pipelines.defs.settings import PasserelleSettings

DERIVED_TABLES = {
    "observation_period": "Spans during which the patient's events are expected to be recorded; "
    "every cohort and incidence rate is computed inside them.",
    "condition_era": "Spans of continuous presence of a condition (30-day persistence window).",
    "drug_era": "Spans of continuous exposure to an ingredient (30-day gap, OHDSI non-stockpile rule).",
    "cdm_source": "What this CDM is: source, CDM version, vocabulary release, dates.",
}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            name, group_name="derived", kinds={"duckdb"}, description=meaning, deps=list(CLINICAL_TABLES)
        )
        for name, meaning in DERIVED_TABLES.items()
    ],
    pool=WAREHOUSE_POOL,
    can_subset=False,
)
def derived_tables(settings: PasserelleSettings):
    """Rebuild observation periods, eras and cdm_source from the clinical tables."""
    from pipelines.derive import derive_all
    from pipelines.warehouse.duckdb_file import connect

    started = time.perf_counter()
    with connect(settings.warehouse_path) as con:
        rows = derive_all(con)
    seconds = round(time.perf_counter() - started, 2)
    for name in DERIVED_TABLES:
        yield dg.MaterializeResult(
            asset_key=name, metadata={"rows": dg.MetadataValue.int(rows.get(name, 0)), "seconds": seconds}
        )
