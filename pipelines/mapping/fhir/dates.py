"""FHIR ``date``/``dateTime``/``instant`` strings to OMOP dates and datetimes, vectorised.

Rules (docs/fhir.md): a partial date takes the first day of its period (``2019`` -> 2019-01-01,
``2019-03`` -> 2019-03-01) and keeps its precision for the columns that can say it (year/month/day of
birth); a time with an offset is converted to UTC; a time without an offset (FHIR allows none, some
exports write them) is read as UTC, the configured zone. A string that is not a real date
(``2019-02-30``, ``2019-13-01``, ``25:00``) is *impossible*: the record is quarantined, never
loaded with a guessed date.
"""

from __future__ import annotations

import polars as pl

_SHAPE = (
    r"^(?<year>\d{4})(?:-(?<month>\d{2})(?:-(?<day>\d{2})"
    r"(?:T(?<hour>\d{2}):(?<minute>\d{2})(?::(?<second>\d{2})(?:\.\d+)?)?"
    r"(?<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def fhir_date(text: pl.Expr) -> pl.Expr:
    """The calendar date (partial dates -> first day of the period); null if absent or impossible."""
    parts = text.str.extract_groups(_SHAPE)
    padded = pl.format(
        "{}-{}-{}",
        parts.struct.field("year"),
        parts.struct.field("month").fill_null("01"),
        parts.struct.field("day").fill_null("01"),
    )
    return padded.str.to_date("%Y-%m-%d", strict=False)


def fhir_datetime(text: pl.Expr) -> pl.Expr:
    """The instant in UTC (naive); null when absent, impossible, or only a date without a time."""
    parts = text.str.extract_groups(_SHAPE)
    field = parts.struct.field
    hour = field("hour").cast(pl.Int64, strict=False)
    minute = field("minute").cast(pl.Int64, strict=False)
    second = field("second").cast(pl.Int64, strict=False).fill_null(0)
    zone = field("zone")
    offset_minutes = (
        pl.when(zone.is_null() | (zone == "Z"))
        .then(pl.lit(0, dtype=pl.Int64))
        .otherwise(
            pl.when(zone.str.starts_with("-")).then(-1).otherwise(1)
            * (zone.str.slice(1, 2).cast(pl.Int64) * 60 + zone.str.slice(4, 2).cast(pl.Int64))
        )
    )
    valid_time = (hour < 24) & (minute < 60) & (second < 61)
    local = fhir_date(text).cast(pl.Datetime("us")) + pl.duration(hours=hour, minutes=minute, seconds=second)
    return pl.when(valid_time).then(local - pl.duration(minutes=offset_minutes))


def impossible(text: pl.Expr) -> pl.Expr:
    """True where a date string is present but names no real date or time."""
    has_time = text.str.contains("T", literal=True)
    return text.is_not_null() & (fhir_date(text).is_null() | (has_time & fhir_datetime(text).is_null()))


def precision(text: pl.Expr) -> pl.Expr:
    """How much of the date the source gave: 'year', 'month' or 'day' (for year/month/day of birth)."""
    parts = text.str.extract_groups(_SHAPE)
    return (
        pl.when(parts.struct.field("day").is_not_null())
        .then(pl.lit("day"))
        .when(parts.struct.field("month").is_not_null())
        .then(pl.lit("month"))
        .when(parts.struct.field("year").is_not_null())
        .then(pl.lit("year"))
    )
