"""What the OMOCL engine found, kept on disk between reading and mapping so that a batched run's
memory stays flat whatever the size of the export.

Every flush writes one Parquet file per kind of ``Found`` frame, its rows sorted by the bucket of
their EHR (a hash of the ehr_id). A batch is a range of buckets, hence whole EHRs: the reader skips
the row groups outside the range by their statistics. Rows keep their reading order within a bucket
(the order a person's and a visit's first values are taken in).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import polars as pl

from pipelines.sources.openehr.collect import Found

BUCKETS = 4096  # a batch is at least one bucket: 287 k compositions (100 k patients) are 70 a bucket
_ROW_GROUP = 4096


def bucket(column: str = "ehr_id") -> pl.Expr:
    """The bucket of each EHR (stable within a process, which is all a spill lives for)."""
    return (pl.col(column).hash(seed=0) % BUCKETS).cast(pl.UInt32).alias("bucket")


class Spill:
    """Flushed ``Found`` frames in ``folder``, read back by range of buckets.

    Up to ``held`` compositions stay in memory and reach the disk only if more come: an export that
    makes one batch is never written and read back (10 k patients, 28,586 compositions in one batch
    of at most 50,000: 0.5-0.7 CPU s of Parquet writing and reading saved)."""

    def __init__(self, folder: Path, held: int = 0) -> None:
        self.folder = folder
        self.runs = 0
        self.kinds = [f.name for f in fields(Found)]
        self.held = held
        self.holding: list[Found] = []  # sorted by bucket, as they would be written
        self.compositions = 0

    def write(self, found: Found) -> None:
        self.holding.append(
            Found(
                **{
                    kind: getattr(found, kind).with_columns(bucket()).sort("bucket", maintain_order=True)
                    for kind in self.kinds
                }
            )
        )
        self.compositions += found.compositions.height
        if self.runs or self.compositions > self.held:
            for held in self.holding:
                for kind in self.kinds:
                    getattr(held, kind).write_parquet(
                        self._file(kind, self.runs), compression="lz4", row_group_size=_ROW_GROUP
                    )
                self.runs += 1
            self.holding.clear()

    def compositions_per_bucket(self, kept: pl.Expr) -> dict[int, int]:
        """How many compositions that stay (``kept``: a predicate) each bucket holds."""
        counts = self._scan("compositions").filter(kept).group_by("bucket").len().collect()
        return dict(counts.iter_rows())

    def read(self, low: int, high: int) -> Found:
        """The rows of the EHRs whose bucket is in [low, high)."""
        within = pl.col("bucket").is_between(low, high, closed="left")
        return Found(*(self._scan(kind).filter(within).drop("bucket").collect() for kind in self.kinds))

    def _scan(self, kind: str) -> pl.LazyFrame:
        if not self.runs:
            return pl.concat([getattr(held, kind).lazy() for held in self.holding], how="vertical")
        return pl.scan_parquet([self._file(kind, run) for run in range(self.runs)])

    def _file(self, kind: str, run: int) -> Path:
        return self.folder / f"{kind}-{run:05d}.parquet"


def bucket_ranges(counts: dict[int, int], max_compositions: int) -> list[tuple[int, int]]:
    """Consecutive ranges of buckets covering them all, each of at most ``max_compositions``
    compositions unless one bucket alone holds more; never an empty range unless all are."""
    ranges = []
    low, size = 0, 0
    for number in range(BUCKETS):
        count = counts.get(number, 0)
        if size and size + count > max_compositions:
            ranges.append((low, number))
            low, size = number, 0
        size += count
    ranges.append((low, BUCKETS))
    return ranges
