"""Staging: each landing batch read and mapped to OMOP rows, one asset per source standard."""

import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from pipelines.defs.metadata import batch_metadata
from pipelines.defs.partitions import landing_batches
from pipelines.defs.settings import PasserelleSettings
from pipelines.mapping.batch import MappedBatch, write_batch


def _stage(
    context: dg.AssetExecutionContext,
    settings: PasserelleSettings,
    source: str,
    mapper: Callable[[list[Path], object], MappedBatch],
) -> dg.MaterializeResult:
    """Map the batch's ``source`` folder (fhir/ or openehr/) and stage the result for the load."""
    from pipelines.mapping.concepts import batch_coverage
    from pipelines.vocab import load_vocabulary

    started = time.perf_counter()
    folder = settings.batch_folder(context.partition_key) / source
    vocab = load_vocabulary(settings.vocab_folder)
    batch = mapper([folder], vocab) if folder.exists() else MappedBatch()
    write_batch(batch, settings.staged(context.partition_key, source))
    seconds = time.perf_counter() - started
    return dg.MaterializeResult(metadata=batch_metadata(batch, batch_coverage(batch.tables, vocab), seconds))


@dg.asset(
    group_name="staging", kinds={"polars", "parquet"}, partitions_def=landing_batches, deps=["vocabulary"]
)
def fhir_staging(context: dg.AssetExecutionContext, settings: PasserelleSettings) -> dg.MaterializeResult:
    """FHIR R4 resources of one landing batch (Bundles, Bulk NDJSON), mapped to OMOP rows with their
    standard concepts, ready to load. Records that could not be mapped are kept in quarantine."""
    from pipelines.sources.fhir import map_fhir

    return _stage(context, settings, "fhir", map_fhir)


@dg.asset(
    group_name="staging", kinds={"polars", "parquet"}, partitions_def=landing_batches, deps=["vocabulary"]
)
def openehr_staging(context: dg.AssetExecutionContext, settings: PasserelleSettings) -> dg.MaterializeResult:
    """openEHR compositions of one landing batch (AQL result pages or a folder per EHR), mapped through
    the OMOCL files to OMOP rows, ready to load. Unmappable compositions are kept in quarantine."""
    from pipelines.sources.openehr import map_openehr

    return _stage(context, settings, "openehr", map_openehr)
