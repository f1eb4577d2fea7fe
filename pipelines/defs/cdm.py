"""The OMOP CDM tables: each landing batch's staged rows loaded into the warehouse in one transaction."""

import time

import dagster as dg

from pipelines.defs.partitions import WAREHOUSE_POOL, landing_batches
from pipelines.defs.settings import PasserelleSettings
from pipelines.mapping.batch import read_batch

# The CDM tables that sources fill (derived tables live in derived.py), with their business meaning.
CLINICAL_TABLES = {
    "person": "One row per patient: sex at birth, birth date, race and ethnicity.",
    "visit_occurrence": "Encounters with the health system: inpatient stays, outpatient and ER visits.",
    "visit_detail": "Parts of a visit, e.g. the wards a patient passed through during a stay.",
    "condition_occurrence": "Diagnoses, problems and signs, as standard SNOMED concepts.",
    "drug_exposure": "Prescriptions, dispensings, administrations and vaccinations (RxNorm, CVX).",
    "procedure_occurrence": "Procedures performed on the patient.",
    "device_exposure": "Devices used by or implanted in the patient.",
    "measurement": "Lab results and vital signs with values and units (LOINC, UCUM).",
    "observation": "Other clinical facts: history, allergies, social and lifestyle observations.",
    "death": "Date and cause of death, one row per deceased patient.",
    "specimen": "Biological samples taken from the patient.",
    "location": "Addresses of patients and care sites.",
    "care_site": "Hospitals, wards and practices where care was given.",
    "provider": "Clinicians who gave the care.",
    "payer_plan_period": "Periods during which the patient was covered by an insurance plan.",
}


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            name,
            group_name="cdm",
            kinds={"duckdb"},
            description=meaning,
            deps=["fhir_staging", "openehr_staging", "vocabulary"],
        )
        for name, meaning in CLINICAL_TABLES.items()
    ],
    partitions_def=landing_batches,
    pool=WAREHOUSE_POOL,
    can_subset=False,
)
def cdm_tables(context: dg.AssetExecutionContext, settings: PasserelleSettings):
    """Load one batch: ids from the persistent id map, references resolved, lineage recorded, the
    previous version of each record replaced, deletions applied — all or nothing."""
    from pipelines.warehouse import load_batches, open_targets

    started = time.perf_counter()
    folders = [settings.staged(context.partition_key, source) for source in ("fhir", "openehr")]
    # read one staged batch at a time: the loader holds one in memory, never the two merged
    staged = (read_batch(folder) for folder in folders if folder.exists())
    targets = open_targets(settings.warehouse_path, None, None)
    report = load_batches(staged, targets)
    seconds = round(time.perf_counter() - started, 2)
    for name in CLINICAL_TABLES:
        yield dg.MaterializeResult(
            asset_key=name,
            metadata={
                "rows_written": dg.MetadataValue.int(report.rows.get(name, 0)),
                "batch_seconds": seconds,
                "batch_quarantined": dg.MetadataValue.int(sum(report.quarantined.values())),
            },
        )
    context.log.info(f"loaded batch {context.partition_key}: {sum(report.rows.values())} rows")
