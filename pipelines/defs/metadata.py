"""Dagster metadata a data engineer reads without opening logs — counts only, never patient data."""

import dagster as dg
import polars as pl

from pipelines.mapping.batch import MappedBatch


def markdown_table(rows: list[tuple], header: tuple[str, ...]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def batch_metadata(batch: MappedBatch, seconds: float) -> dict[str, object]:
    """Inputs, rows, quarantine by reason, coverage and the top unmapped codes of a mapped batch."""
    quarantined = (
        batch.quarantine.group_by("reason_code").len().sort("len", descending=True).rows()
        if batch.quarantine.height
        else []
    )
    metadata: dict[str, object] = {
        "input_records": dg.MetadataValue.int(sum(batch.inputs.values())),
        "inputs_by_type": markdown_table(sorted(batch.inputs.items()), ("record type", "records")),
        "rows_by_table": markdown_table(
            sorted((name, frame.height) for name, frame in batch.tables.items()), ("OMOP table", "rows")
        ),
        "filtered": markdown_table(sorted(batch.filtered.items()), ("rule", "records")),
        "quarantined": dg.MetadataValue.int(batch.quarantine.height),
        "quarantine_by_reason": markdown_table(quarantined, ("reason", "records")),
        "seconds": round(seconds, 2),
    }
    unmapped = top_unmapped(batch)
    if unmapped is not None:
        metadata["top_unmapped_codes"] = markdown_table(
            unmapped.rows(), ("OMOP table", "source value", "rows")
        )
    return metadata


def top_unmapped(batch: MappedBatch, limit: int = 20) -> pl.DataFrame | None:
    """Source codes without a standard concept, most frequent first. Codes, not patient values."""
    frames = []
    for table, frame in batch.tables.items():
        stem = table.removesuffix("_occurrence").removesuffix("_exposure")
        concept, source = f"{stem}_concept_id", f"{stem}_source_value"
        if concept in frame.columns and source in frame.columns:
            frames.append(
                frame.filter(pl.col(concept) == 0)
                .group_by(source)
                .len()
                .select(pl.lit(table).alias("table"), pl.col(source).alias("source_value"), "len")
            )
    if not frames:
        return None
    return pl.concat(frames).sort("len", descending=True).head(limit)
