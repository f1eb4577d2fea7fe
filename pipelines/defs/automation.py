"""Jobs, the landing-zone sensor and the nightly schedule."""

import hashlib
from pathlib import Path

import dagster as dg

from pipelines.defs.partitions import landing_batches
from pipelines.defs.quality import dqd_table_checks
from pipelines.defs.settings import PasserelleSettings

ingest_batch = dg.define_asset_job(
    "ingest_batch",
    selection=dg.AssetSelection.groups("staging", "cdm").without_checks(),
    partitions_def=landing_batches,
    description="Map one landing batch (FHIR and openEHR) and load it into the warehouse.",
)
refresh_warehouse = dg.define_asset_job(
    "refresh_warehouse",
    selection=dg.AssetSelection.groups("vocabulary", "derived", "quality", "exports")
    | dg.AssetSelection.checks(dqd_table_checks),
    description="Vocabulary, derived tables, quality checks and exports over the whole warehouse.",
)


def batch_fingerprint(folder: Path) -> str:
    """Changes when any file of the batch is added, removed, resized or rewritten."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@dg.sensor(job=ingest_batch, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_zone(context: dg.SensorEvaluationContext, settings: PasserelleSettings) -> dg.SensorResult:
    """Each sub-folder of the landing zone is a batch (with fhir/ and/or openehr/ inside). A new or
    changed batch becomes a partition and a run; the run key makes re-detection harmless."""
    landing = settings.landing_folder
    if not landing.is_dir():
        return dg.SensorResult(skip_reason=f"landing folder {landing} does not exist yet")
    batches = sorted(p for p in landing.iterdir() if p.is_dir() and not p.name.startswith("."))
    known = set(context.instance.get_dynamic_partitions(landing_batches.name))
    new = [b.name for b in batches if b.name not in known]
    requests = [
        dg.RunRequest(partition_key=b.name, run_key=f"{b.name}:{batch_fingerprint(b)}") for b in batches
    ]
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[landing_batches.build_add_request(new)] if new else [],
    )


nightly = dg.ScheduleDefinition(
    job=refresh_warehouse,
    cron_schedule="0 2 * * *",
    execution_timezone="Europe/Paris",
    description="Every night: vocabulary, derived tables, quality checks, exports.",
)
