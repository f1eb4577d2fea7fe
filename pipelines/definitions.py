"""The Dagster code location of Passerelle (`dagster dev -w workspace.yaml`, `dg dev`)."""

import dagster as dg

from pipelines.defs import automation, cdm, derived, exports, quality, staging, vocabulary
from pipelines.defs.settings import PasserelleSettings

defs = dg.Definitions(
    assets=[
        vocabulary.vocabulary,
        staging.fhir_staging,
        staging.openehr_staging,
        cdm.cdm_tables,
        derived.derived_tables,
        quality.dqd_results,
        exports.cdm_exports,
    ],
    asset_checks=[quality.dqd_table_checks],
    jobs=[automation.ingest_batch, automation.refresh_warehouse],
    sensors=[automation.landing_zone],
    schedules=[automation.nightly],
    resources={"settings": PasserelleSettings()},
)
