"""Reading the OHDSI vocabulary files, as Athena delivers them and as CDM exports write them.

Athena: tab-separated, no quoting at all (concept names contain stray ``"``), dates ``YYYYMMDD``.
CDM exports (e.g. the Eunomia data sets): comma-separated, RFC 4180 quoting, ISO dates. The
delimiter is read from the header line, the date format per value, so both load through one path.
Each table is streamed from CSV to a typed Parquet file; nothing holds a whole table in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipelines.cdm.spec import Table, cdm_schema
from pipelines.errors import PasserelleError

_DTYPES = {"integer": pl.Int32, "bigint": pl.Int64, "float": pl.Float64, "date": pl.Date}


class VocabularyFileError(PasserelleError):
    """A vocabulary file cannot be read: the message names the file, the line and the reason."""


@dataclass(frozen=True)
class TableFile:
    """One vocabulary table in a download folder; ``path`` is None when the file is missing."""

    table: str
    path: Path | None


def vocabulary_tables() -> list[Table]:
    """The CDM v5.4 vocabulary tables (concept, concept_relationship, ..., drug_strength)."""
    return cdm_schema().group("vocabulary")


def find_files(folder: Path) -> list[TableFile]:
    """Which vocabulary tables the folder has (file names matched case-insensitively: CONCEPT.csv)."""
    if not folder.is_dir():
        raise PasserelleError(f"{folder}: no such vocabulary folder")
    by_name = {p.name.lower(): p for p in folder.iterdir() if p.is_file()}
    return [TableFile(t.name, by_name.get(f"{t.name}.csv")) for t in vocabulary_tables()]


def polars_schema(table: Table) -> dict[str, pl.DataType]:
    return {c.name: _DTYPES.get(c.type, pl.Utf8) for c in table.columns}


def empty_frame(table: Table) -> pl.DataFrame:
    return pl.DataFrame(schema=polars_schema(table))


def convert_to_parquet(source: Path, table: Table, target: Path) -> int:
    """Stream one vocabulary CSV into a typed Parquet file; returns the number of rows.

    Raises VocabularyFileError naming the file, the line and the column of the first value that does
    not fit the CDM type (or the missing columns), so a truncated or foreign file is caught here.
    """
    header, separator = _header(source)
    missing = [c.name for c in table.columns if c.required and c.name not in header]
    if missing:
        raise VocabularyFileError(
            f"{source}: not a {table.name.upper()} table, missing column(s) {', '.join(missing)}"
        )
    raw = _scan(source, header, separator)
    date_format = _date_format(raw, table, header)
    typed = raw.select(_typed(table, header, date_format, strict=True))
    try:
        typed.sink_parquet(target, compression="zstd", statistics=True)
    except pl.exceptions.PolarsError:
        target.unlink(missing_ok=True)
        raise _first_bad_value(source, table, header, separator, date_format) from None
    return pl.scan_parquet(target).select(pl.len()).collect().item()


def _date_format(raw: pl.LazyFrame, table: Table, header: list[str]) -> str:
    """Athena writes 20991231, CDM exports 2099-12-31: one format per file, told by its first date."""
    dates = [c.name for c in table.columns if c.type == "date" and c.name in header]
    if not dates:
        return "%Y%m%d"
    first = raw.select(pl.col(dates[0]).drop_nulls().first()).collect().item()
    return "%Y-%m-%d" if first and "-" in first else "%Y%m%d"


def _header(source: Path) -> tuple[list[str], str]:
    with source.open("r", encoding="utf-8-sig", errors="replace") as handle:
        line = handle.readline().rstrip("\r\n")
    if not line:
        raise VocabularyFileError(f"{source}: empty file (not even a header line)")
    separator = "\t" if "\t" in line else ","
    return [name.strip().strip('"').lower() for name in line.split(separator)], separator


def _scan(source: Path, header: list[str], separator: str) -> pl.LazyFrame:
    # Athena files are never quoted and carry stray quotes in names: quoting must be off for them.
    return pl.scan_csv(
        source,
        separator=separator,
        quote_char=None if separator == "\t" else '"',
        has_header=True,
        schema={name: pl.Utf8 for name in header},  # by position: the file's own header may be upper-case
        encoding="utf8-lossy",
        raise_if_empty=False,
        truncate_ragged_lines=False,
    )


def _typed(table: Table, header: list[str], date_format: str, *, strict: bool) -> list[pl.Expr]:
    """Typed CDM columns from the all-text scan (empty fields are already null)."""
    out = []
    for column in table.columns:
        if column.name not in header:  # an optional column the export left out
            out.append(pl.lit(None, dtype=_DTYPES.get(column.type, pl.Utf8)).alias(column.name))
            continue
        value = pl.col(column.name)
        if column.name == header[-1]:  # the last field of a CRLF file keeps its \r
            value = value.str.strip_chars_end("\r")
        value = pl.when(value != "").then(value)  # a quoted "" of a CDM export means no value too
        if column.type == "date":
            value = value.str.strptime(pl.Date, date_format, strict=strict)
        elif column.type in _DTYPES:
            value = value.cast(_DTYPES[column.type], strict=strict)
        out.append(value.alias(column.name))
    return out


def _first_bad_value(
    source: Path, table: Table, header: list[str], separator: str, date_format: str
) -> VocabularyFileError:
    raw = _scan(source, header, separator).with_row_index("_line", offset=2)
    loose = raw.select(
        "_line",
        *[pl.col(c.name).alias(f"_raw_{c.name}") for c in table.columns if c.name in header],
        *_typed(table, header, date_format, strict=False),
    )
    for column in table.columns:
        if column.name not in header or column.type not in _DTYPES:
            continue
        bad = (
            loose.filter(pl.col(column.name).is_null() & (pl.col(f"_raw_{column.name}").fill_null("") != ""))
            .select("_line")
            .head(1)
            .collect()
        )
        if bad.height:
            return VocabularyFileError(
                f"{source}: line {bad.item()}: column {column.name} is not a valid {column.type}"
            )
    return VocabularyFileError(f"{source}: cannot be read as a {table.name.upper()} table")
