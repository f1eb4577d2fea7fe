"""The site's own mappings (``mappings/local/``): SOURCE_TO_CONCEPT_MAP rows, or Usagi exports.

They take precedence over the vocabulary's "Maps to": a site maps its local lab codes, or overrides
a mapping it disagrees with, by dropping a CSV here. Two formats are accepted:

- the CDM ``SOURCE_TO_CONCEPT_MAP`` table (what Usagi's "Export source_to_concept_map" writes):
  ``source_code, source_concept_id, source_vocabulary_id, ..., target_concept_id, ..., invalid_reason``;
- a Usagi save file (``sourceCode, ..., mappingStatus, ..., conceptId, ...``) named
  ``<source_vocabulary_id>.usagi.csv``; only rows with mappingStatus APPROVED are used.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipelines.errors import PasserelleError

LOCAL_MAP_SCHEMA = {
    "source_vocabulary_id": pl.Utf8,
    "source_code": pl.Utf8,
    "source_concept_id": pl.Int32,
    "target_concept_id": pl.Int32,
}
_USAGI_SUFFIX = ".usagi.csv"


def read_local_maps(folder: Path) -> pl.DataFrame:
    """All mapping rows of the folder's CSV files (``LOCAL_MAP_SCHEMA``); empty when there are none."""
    frames = [_read_file(path) for path in sorted(folder.glob("*.csv"))] if folder.is_dir() else []
    if not frames:
        return pl.DataFrame(schema=LOCAL_MAP_SCHEMA)
    return pl.concat(frames).unique(
        ["source_vocabulary_id", "source_code", "target_concept_id"], keep="first"
    )


def _read_file(path: Path) -> pl.DataFrame:
    try:
        raw = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
    except pl.exceptions.PolarsError as error:
        raise PasserelleError(f"{path}: not a readable CSV ({error})") from error
    raw = raw.with_row_index("_line", offset=2)
    columns = {c.lower(): c for c in raw.columns}
    if {"source_code", "source_vocabulary_id", "target_concept_id"} <= columns.keys():
        valid = pl.col(columns["invalid_reason"]).fill_null("") == "" if "invalid_reason" in columns else True
        rows = raw.filter(valid).select(
            "_line",
            source_vocabulary_id=pl.col(columns["source_vocabulary_id"]),
            source_code=pl.col(columns["source_code"]),
            source_concept_id=pl.col(columns["source_concept_id"])
            if "source_concept_id" in columns
            else None,
            target_concept_id=pl.col(columns["target_concept_id"]),
        )
    elif {"sourcecode", "conceptid"} <= columns.keys() and path.name.lower().endswith(_USAGI_SUFFIX):
        approved = (
            pl.col(columns["mappingstatus"]).fill_null("").str.to_uppercase() == "APPROVED"
            if "mappingstatus" in columns
            else True
        )
        rows = raw.filter(approved).select(
            "_line",
            source_vocabulary_id=pl.lit(path.name[: -len(_USAGI_SUFFIX)]),
            source_code=pl.col(columns["sourcecode"]),
            source_concept_id=pl.lit(None, dtype=pl.Utf8),
            target_concept_id=pl.col(columns["conceptid"]),
        )
    else:
        raise PasserelleError(
            f"{path}: not a SOURCE_TO_CONCEPT_MAP export (source_code, source_vocabulary_id, "
            f"target_concept_id) nor a Usagi file named <vocabulary>{_USAGI_SUFFIX} (sourceCode, conceptId)"
        )
    typed = rows.with_columns(
        pl.col("source_concept_id").cast(pl.Int32, strict=False).fill_null(0),
        pl.col("target_concept_id").cast(pl.Int32, strict=False),
    )
    bad = typed.filter(pl.col("target_concept_id").is_null() | pl.col("source_code").is_null())
    if bad.height:
        raise PasserelleError(
            f"{path}: line {bad['_line'][0]}: source code and an integer target concept id are required"
        )
    return typed.drop("_line")
