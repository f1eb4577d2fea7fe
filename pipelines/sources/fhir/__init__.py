"""FHIR R4 source: read files of any shape (Bundles, single resources, Bulk NDJSON) and map them.

``map_fhir`` maps everything as one batch; ``iter_fhir_batches`` maps it in batches of bounded size,
for inputs larger than memory; ``read_fhir`` gives the staged frames alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.mapping.batch import MappedBatch
from pipelines.sources.fhir.reader import StagedFhir, iter_staged, read_fhir

if TYPE_CHECKING:
    from pipelines.vocab import Vocabulary

__all__ = ["StagedFhir", "iter_fhir_batches", "map_fhir", "read_fhir"]


def map_fhir(paths: list[Path], vocab: Vocabulary) -> MappedBatch:
    """Read FHIR files or folders (recursively) and map them to OMOP rows, with the accounting:
    every input record is mapped, filtered (by rule, counted) or quarantined (with a reason)."""
    from pipelines.mapping.fhir.engine import map_staged

    return map_staged(read_fhir(paths), vocab)


def iter_fhir_batches(
    paths: list[Path], vocab: Vocabulary, *, max_resources: int = 250_000
) -> Iterator[MappedBatch]:
    """Map FHIR files in batches of about max_resources input records, so memory stays flat however
    large the input. Never splits a Bundle or a .json file; splits NDJSON files between lines.
    Each batch carries its own accounting; summed over the batches it equals map_fhir's.
    Rows may reference records of another batch (e.g. a Bulk Observation before its Patient file):
    the loader resolves those through the id map at the end of the run. A conditional reference
    (``Patient?identifier=...``) resolves to a resource of the same or an earlier batch, or of a
    Bulk NDJSON file of a type with identifiers (read ahead for them: see ``iter_staged``).

    One difference from ``map_fhir``: the same resource read again in a later batch is mapped in
    both (the loader keeps the later copy, as ``map_fhir`` does), where ``map_fhir`` counts the
    earlier copy as filtered."""
    from pipelines.mapping.fhir.engine import map_staged

    for staged in iter_staged(paths, max_records=max_resources):
        # Only map_staged's argument holds the staged frames, so they go when it returns, not after
        # the consumer has loaded the batch (a generator's locals live until its next step).
        held = [staged]
        del staged
        yield map_staged(held.pop(), vocab)
