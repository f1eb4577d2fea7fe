"""The warehouse: where OMOP rows land (DuckDB file by default), with the id map and lineage.

``load_batch`` writes a MappedBatch into the DuckDB system of record in one transaction and refreshes
the export targets (Parquet folder, PostgreSQL); ``open_targets`` builds the target list from the
command-line choices; ``export_cdm`` refreshes exports again later (e.g. after the derived tables).
"""

from pipelines.warehouse.load import LoadReport, load_batch, load_batches
from pipelines.warehouse.targets import ExportManifest, Target, export_cdm, open_targets

__all__ = [
    "ExportManifest",
    "LoadReport",
    "Target",
    "export_cdm",
    "load_batch",
    "load_batches",
    "open_targets",
]
