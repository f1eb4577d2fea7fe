"""FHIR R4 source: read files of any shape (Bundles, single resources, Bulk NDJSON) and map them.

``map_fhir`` is the entry the run uses; ``read_fhir`` gives the staged frames alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.mapping.batch import MappedBatch
from pipelines.sources.fhir.reader import StagedFhir, read_fhir

if TYPE_CHECKING:
    from pipelines.vocab import Vocabulary

__all__ = ["StagedFhir", "map_fhir", "read_fhir"]


def map_fhir(paths: list[Path], vocab: Vocabulary) -> MappedBatch:
    """Read FHIR files or folders (recursively) and map them to OMOP rows, with the accounting:
    every input record is mapped, filtered (by rule, counted) or quarantined (with a reason)."""
    from pipelines.mapping.fhir.engine import map_staged

    return map_staged(read_fhir(paths), vocab)
