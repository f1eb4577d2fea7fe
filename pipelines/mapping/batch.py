"""The contract between the mappers (FHIR, openEHR) and the warehouse loader.

A mapper turns one batch of source files into a ``MappedBatch``: OMOP rows per CDM table, plus the
records it kept aside (quarantine), the ones it deliberately filtered, and the records that the source
says were deleted. The loader (pipelines/warehouse/) owns ids, references, lineage and the transaction.

Row frames carry the CDM columns of their table *except* the table's own primary key, which the
loader allocates through the persistent id map, plus these bookkeeping columns (all Utf8 unless said):

``_key``           stable source key of this row; the id map turns it into the row's OMOP id, the same
                   on every run (e.g. ``fhir|Observation/bp-1|component/0``).
``_record_key``    key of the source record the row came from (a resource or a composition). When a
                   record comes again (new version) all its previous rows are replaced; when it is
                   deleted, they are removed.
``_ref__<column>`` source key of the row that CDM foreign-key column points at, e.g.
                   ``_ref__person_id = "fhir|Patient/123"``; the loader resolves it to the id and
                   quarantines rows whose reference cannot be resolved (dangling reference).
``_source_format`` ``fhir`` or ``openehr``.
``_source_file``   path of the input file.
``_position``      Int64: entry index in a Bundle, line number in NDJSON, row in an AQL page.
``_record_type``   resource type or archetype id.
``_record_id``     logical id of the resource or composition uid.
``_record_version`` version id / last-updated, when the source has one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

LINEAGE_COLUMNS = (
    "_source_format",
    "_source_file",
    "_position",
    "_record_type",
    "_record_id",
    "_record_version",
)
REF_PREFIX = "_ref__"

QUARANTINE_SCHEMA = {
    "source_format": pl.Utf8,
    "source_file": pl.Utf8,
    "position": pl.Int64,
    "record_type": pl.Utf8,
    "record_id": pl.Utf8,
    "reason_code": pl.Utf8,  # machine-readable, e.g. "malformed_json", "missing_subject"
    "reason": pl.Utf8,  # one sentence a person understands; never clinical values or identifiers
}
DELETION_SCHEMA = {"_record_key": pl.Utf8, "_source_format": pl.Utf8, "_source_file": pl.Utf8}


def empty_quarantine() -> pl.DataFrame:
    return pl.DataFrame(schema=QUARANTINE_SCHEMA)


def empty_deletions() -> pl.DataFrame:
    return pl.DataFrame(schema=DELETION_SCHEMA)


@dataclass
class MappedBatch:
    """What one batch of source files became. Accounting: every input record is mapped, filtered
    or quarantined, and ``inputs`` counts them by record type."""

    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    quarantine: pl.DataFrame = field(default_factory=empty_quarantine)
    deletions: pl.DataFrame = field(default_factory=empty_deletions)
    inputs: dict[str, int] = field(default_factory=dict)  # input records by type
    mapped: dict[str, int] = field(default_factory=dict)  # input records that gave >= 1 row, by type
    filtered: dict[str, int] = field(default_factory=dict)  # by reason, e.g. "Claim: no mapping"

    def merge(self, other: MappedBatch) -> MappedBatch:
        """Concatenate two batches (e.g. FHIR and openEHR of one run)."""
        tables = dict(self.tables)
        for name, frame in other.tables.items():
            tables[name] = (
                pl.concat([tables[name], frame], how="diagonal_relaxed") if name in tables else frame
            )
        return MappedBatch(
            tables=tables,
            quarantine=pl.concat([self.quarantine, other.quarantine], how="diagonal_relaxed"),
            deletions=pl.concat([self.deletions, other.deletions], how="diagonal_relaxed"),
            inputs=_add(self.inputs, other.inputs),
            mapped=_add(self.mapped, other.mapped),
            filtered=_add(self.filtered, other.filtered),
        )


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


def write_batch(batch: MappedBatch, folder: Path) -> None:
    """Stage a batch on disk (Parquet per table + counts), so a later step or process can load it.

    Written to a temporary sibling folder first and renamed: a crash never leaves half a batch.
    """
    folder = Path(folder)
    temporary = folder.with_name(folder.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    (temporary / "tables").mkdir(parents=True)
    for name, frame in batch.tables.items():
        frame.write_parquet(temporary / "tables" / f"{name}.parquet")
    batch.quarantine.write_parquet(temporary / "quarantine.parquet")
    batch.deletions.write_parquet(temporary / "deletions.parquet")
    counts = {"inputs": batch.inputs, "mapped": batch.mapped, "filtered": batch.filtered}
    (temporary / "counts.json").write_text(json.dumps(counts, indent=1, sort_keys=True))
    shutil.rmtree(folder, ignore_errors=True)
    temporary.rename(folder)


def read_batch(folder: Path) -> MappedBatch:
    """The batch ``write_batch`` staged in ``folder``."""
    folder = Path(folder)
    counts = json.loads((folder / "counts.json").read_text())
    return MappedBatch(
        tables={p.stem: pl.read_parquet(p) for p in sorted((folder / "tables").glob("*.parquet"))},
        quarantine=pl.read_parquet(folder / "quarantine.parquet"),
        deletions=pl.read_parquet(folder / "deletions.parquet"),
        inputs=counts["inputs"],
        mapped=counts["mapped"],
        filtered=counts["filtered"],
    )
