"""Persons of openEHR EHRs: one per EHR with a known year of birth, the others quarantined.

CDM v5.4 requires ``year_of_birth`` and OHDSI keeps no placeholder persons (docs/openehr.md).
"""

from __future__ import annotations

import polars as pl

from pipelines.mapping.batch import QUARANTINE_SCHEMA
from pipelines.sources.openehr.tables import SOURCE, SOURCE_VALUE_LENGTH, source_text


def person_rows(
    candidates: pl.DataFrame, ehrs: pl.DataFrame, settings: dict
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """One person per EHR with a known year of birth; the other EHRs are quarantined ("no birth year")."""
    demographics = settings["demographics"]
    people = candidates.filter(pl.col("omocl_type") == "Person")
    genders = {k.lower(): v for k, v in demographics["gender"].items()}
    facts = (
        people.with_columns(
            pl.coalesce(
                "gender_const",
                (
                    pl.col("gender_system").str.to_lowercase()
                    + "::"
                    + pl.col("gender_code").str.to_lowercase()
                ).replace_strict(genders, default=None, return_dtype=pl.Int64),
            ).alias("gender_concept_id"),
            pl.coalesce(pl.col("birth").dt.year().cast(pl.Int64), "birth_year").alias("year"),
        )
        .group_by("ehr_id", maintain_order=True)
        .agg(
            pl.col("year").drop_nulls().first(),
            pl.col("birth").drop_nulls().first(),
            pl.col("gender_concept_id").filter(pl.col("gender_concept_id") > 0).first(),
            pl.col("gender_code").drop_nulls().first(),
            pl.col("ethnicity_const").drop_nulls().first(),
        )
    )
    ehrs = ehrs.join(facts, on="ehr_id", how="left")
    known = ehrs.filter(pl.col("year").is_not_null())
    persons = known.select(
        _key=pl.lit(f"{SOURCE}|ehr/") + pl.col("ehr_id"),
        _record_key=pl.lit(f"{SOURCE}|ehr/") + pl.col("ehr_id"),
        _source_format=pl.lit(SOURCE),
        _source_file="source_file",
        _record_type=pl.lit("EHR"),
        _record_id="ehr_id",
        gender_concept_id=pl.col("gender_concept_id").fill_null(0),
        year_of_birth="year",
        month_of_birth=pl.col("birth").dt.month(),
        day_of_birth=pl.col("birth").dt.day(),
        birth_datetime="birth",
        race_concept_id=pl.lit(0),
        ethnicity_concept_id=pl.col("ethnicity_const").fill_null(0),
        person_source_value=pl.col("ehr_id").str.slice(0, SOURCE_VALUE_LENGTH),
        gender_source_value=source_text("gender_code"),
    )
    quarantine = ehrs.filter(pl.col("year").is_null()).select(
        source_format=pl.lit(SOURCE),
        source_file="source_file",
        position=pl.lit(None, pl.Int64),
        record_type=pl.lit("EHR"),
        record_id="ehr_id",
        reason_code=pl.lit("no_birth_year"),
        reason=pl.lit(
            "no year of birth in the EHR (person data, birth or age archetypes): the CDM person needs one; "
            "its clinical rows reference a person another source or a later batch must provide"
        ),
    )
    return persons, quarantine.cast(QUARANTINE_SCHEMA)
