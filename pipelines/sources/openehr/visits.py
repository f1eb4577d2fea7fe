"""Visits of openEHR compositions: a case, an ADMIN_ENTRY stay, or one derived from the context.

A composition's visit is its case (the context's case identifier; all compositions of an EHR with
that case share it), else its own ADMIN_ENTRY visit (hospitalisation, episode), else one derived
visit per composition whose concept the context setting chooses (``_engine/settings.yaml``).
"""

from __future__ import annotations

import polars as pl

from pipelines.cdm.spec import cdm_schema
from pipelines.sources.openehr.tables import SOURCE, SOURCE_VALUE_LENGTH


def visit_rows(candidates: pl.DataFrame, tables: dict, settings: dict) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Visit rows, and the visit key of each composition that has clinical rows.

    A composition's visit is its case (context case identifier; all compositions of a case share
    it), else its own ADMIN_ENTRY visit (hospitalisation, episode), else one derived from its context.
    """
    with_rows = pl.concat(
        [
            frame.select("composition_uid")
            for name, frame in tables.items()
            if "visit_occurrence_id" in cdm_schema().table(name).column_names  # a death is in no visit
        ]
        or [pl.DataFrame(schema={"composition_uid": pl.Utf8})]
    ).unique()
    contexts = candidates.select(
        "composition_uid",
        "ehr_id",
        "setting_code",
        "context_start",
        "context_end",
        "earliest_time",
        "latest_time",
        "case_id",
        "source_file",
        "position",
        "composition_version",
    ).unique("composition_uid", keep="first", maintain_order=True)  # a visit's lineage: its first composition
    real = (
        candidates.filter(pl.col("omocl_type") == "Visit")
        .group_by("composition_uid", maintain_order=True)
        .agg(
            pl.col("concept_const").drop_nulls().first().alias("real_concept"),
            pl.col("start").min().alias("real_start"),
            pl.col("end").max().alias("real_end"),
            pl.col("archetype").first().alias("real_archetype"),
        )
    )
    members = (
        contexts.join(real, on="composition_uid", how="left")
        .filter(
            pl.col("composition_uid").is_in(with_rows["composition_uid"].implode())
            | pl.col("real_start").is_not_null()
        )
        .with_columns(
            pl.when(pl.col("case_id").is_not_null())
            .then(pl.lit(f"{SOURCE}|visit/") + pl.col("ehr_id") + "/case/" + pl.col("case_id"))
            .otherwise(pl.lit(f"{SOURCE}|visit/") + pl.col("composition_uid"))
            .alias("visit_key"),
            pl.min_horizontal("context_start", "earliest_time").alias("member_start"),
            pl.max_horizontal("context_end", "context_start", "latest_time").alias("member_end"),
        )
    )
    setting_concepts = {code: row["concept"] for code, row in settings["settings"]["settings"].items()}
    unknown = settings["settings"]["unknown_setting"]
    visits = (
        members.group_by("visit_key", maintain_order=True)
        .agg(
            pl.col("ehr_id").first(),
            pl.col("real_concept").drop_nulls().first(),
            pl.col("setting_code").drop_nulls().first(),
            pl.col("case_id").first(),
            pl.min_horizontal(pl.col("real_start").min(), pl.col("member_start").min()).alias("visit_start"),
            pl.max_horizontal(
                pl.col("real_end").max(), pl.col("member_end").max(), pl.col("real_start").max()
            ).alias("visit_end"),
            pl.col("source_file").first(),
            pl.col("position").first(),
            pl.col("composition_uid").first(),
            pl.col("composition_version").first(),
            pl.col("real_archetype").drop_nulls().first(),
        )
        .filter(pl.col("visit_start").is_not_null())
    )
    derived = pl.col("real_concept").is_null()
    frame = visits.select(
        _key="visit_key",
        _record_key="visit_key",
        _source_format=pl.lit(SOURCE),
        _source_file="source_file",
        _position="position",
        _record_type=pl.coalesce("real_archetype", pl.lit("EVENT_CONTEXT")),
        _record_id="composition_uid",
        _record_version="composition_version",
        _ref__person_id=pl.lit(f"{SOURCE}|ehr/") + pl.col("ehr_id"),
        visit_concept_id=pl.coalesce(
            "real_concept",
            pl.col("setting_code").replace_strict(setting_concepts, default=unknown, return_dtype=pl.Int64),
        ),
        visit_start_date=pl.col("visit_start").dt.date(),
        visit_start_datetime="visit_start",
        visit_end_date=pl.col("visit_end").dt.date(),
        visit_end_datetime="visit_end",
        visit_type_concept_id=pl.lit(settings["demographics"]["type_concept_id"]),
        visit_source_value=pl.coalesce(
            pl.col("case_id").str.slice(0, SOURCE_VALUE_LENGTH),
            pl.when(derived).then(pl.lit("derived:setting/") + pl.col("setting_code").fill_null("none")),
        ),
    )
    visit_of = members.filter(pl.col("composition_uid").is_in(with_rows["composition_uid"].implode())).select(
        "composition_uid", _ref__visit_occurrence_id="visit_key"
    )
    return frame, visit_of
