"""Dagster metadata a data engineer reads without opening logs — counts only, never patient data."""

import dagster as dg
import polars as pl

from pipelines.mapping.batch import MappedBatch


def markdown_table(rows: list[tuple], header: tuple[str, ...]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def batch_metadata(batch: MappedBatch, coverage: pl.DataFrame, seconds: float) -> dict[str, object]:
    """Inputs, rows, quarantine by reason, coverage and the top unmapped codes of a mapped batch.

    ``coverage`` is ``pipelines.mapping.concepts.batch_coverage`` of the batch.
    """
    quarantined = (
        batch.quarantine.group_by("reason_code").len().sort("len", descending=True).rows()
        if batch.quarantine.height
        else []
    )
    total = int(coverage["rows"].sum()) if coverage.height else 0
    mapped = int(coverage.filter("mapped")["rows"].sum()) if coverage.height else 0
    unmapped = (
        coverage.filter(~coverage["mapped"])
        .sort("rows", descending=True)
        .head(20)
        .select("source_vocabulary_id", "source_code", "target_table", "rows")
        .rows()
    )
    return {
        "input_records": dg.MetadataValue.int(sum(batch.inputs.values())),
        "inputs_by_type": markdown_table(sorted(batch.inputs.items()), ("record type", "records")),
        "rows_by_table": markdown_table(
            sorted((name, frame.height) for name, frame in batch.tables.items()), ("OMOP table", "rows")
        ),
        "filtered": markdown_table(sorted(batch.filtered.items()), ("rule", "records")),
        "quarantined": dg.MetadataValue.int(batch.quarantine.height),
        "quarantine_by_reason": markdown_table(quarantined, ("reason", "records")),
        "mapping_coverage": dg.MetadataValue.float(round(mapped / total, 4) if total else 1.0),
        "top_unmapped_codes": markdown_table(unmapped, ("vocabulary", "source code", "OMOP table", "rows")),
        "seconds": round(seconds, 2),
    }
