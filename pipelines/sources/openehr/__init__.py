"""openEHR source: AQL result sets and folders per EHR of canonical-JSON compositions, to OMOP."""

from pipelines.sources.openehr.mapper import default_mapping_dir, iter_openehr_batches, map_openehr
from pipelines.sources.openehr.reader import OpenEhrExport, read_openehr

__all__ = ["OpenEhrExport", "default_mapping_dir", "iter_openehr_batches", "map_openehr", "read_openehr"]
