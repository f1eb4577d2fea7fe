"""Clinical candidate rows of the OMOCL engine to CDM v5.4 table frames (MappedBatch contract).

Codes are resolved with the shared ``resolve_concepts``/``resolve_units`` (the same step FHIR codes
take); the standard concept's domain picks the table (``_engine/domains.yaml``), else the OMOCL
type does. Persons (persons.py) and visits (visits.py) are built beside these.
"""

from __future__ import annotations

import polars as pl

from pipelines.mapping.concepts import resolve_concepts, resolve_units
from pipelines.mapping.omocl.grammar import ROW_TABLES
from pipelines.vocab import Vocabulary

SOURCE = "openehr"
SOURCE_VALUE_LENGTH = 50  # CDM varchar(50) of *_source_value
_CONCEPT_PARTS = ("concept", "qualifier", "route", "status", "site")


def clinical_tables(clinical: pl.DataFrame, vocab: Vocabulary, settings: dict) -> dict[str, pl.DataFrame]:
    """CDM frames by table (with a ``composition_uid`` column the caller turns into the visit ref)."""
    if clinical.height == 0:
        return {}
    type_concept = settings["demographics"]["type_concept_id"]
    frame = clinical.with_row_index("_candidate").with_columns(
        pl.concat_str(
            pl.lit(f"{SOURCE}|"),
            "composition_uid",
            pl.lit("|"),
            "focus_path",
            pl.lit("|"),
            "omocl_file",
            pl.lit("."),
            "mapping_index",
        ).alias("_key"),
        (pl.lit(f"{SOURCE}|") + pl.col("composition_uid")).alias("_record_key"),
    )
    frame = _main_concept(frame, vocab)
    for part in _CONCEPT_PARTS[1:]:
        frame = _first_concept(frame, part, vocab)
    frame = _first_concept(frame, "value", vocab)
    booleans = {str(k).lower(): v for k, v in settings["value_concepts"]["booleans"].items()}
    frame = frame.with_columns(
        pl.coalesce(
            "value_const",
            pl.when(pl.col("value_concept_id") > 0).then("value_concept_id"),
            pl.col("value_boolean").cast(pl.Utf8).str.to_lowercase().replace_strict(booleans, default=None),
            "c_value_as_concept_id",
        ).alias("value_as_concept_id"),
        pl.col("operator")
        .replace_strict(settings["value_concepts"]["operators"], default=None)
        .cast(pl.Int64)
        .alias("operator_from_status"),
    )
    frame = resolve_units(frame, vocab, unit="unit", prefix="unit_")
    frame = frame.with_columns(
        pl.coalesce("unit_const", "unit_concept_id").alias("unit_concept_id"),
        pl.coalesce("operator_const", "operator_from_status").alias("operator_concept_id"),
        pl.coalesce("start", "context_start", "earliest_time").alias("start"),
        pl.lit(type_concept).alias("type_concept_id"),
        pl.col("domain").replace_strict(settings["domains"], default=None).alias("routed"),
    )
    frame = frame.with_columns(
        pl.when(pl.col("omocl_type") == "Death")
        .then(pl.lit("death"))
        .otherwise(pl.coalesce("routed", pl.col("omocl_type").replace_strict(ROW_TABLES, default=None)))
        .alias("table")
    )
    tables = {}
    for (table,), rows in frame.partition_by("table", as_dict=True, maintain_order=True).items():
        tables[table] = _BUILDERS[table](rows).with_columns(_bookkeeping()).drop("ehr_id")
    return tables


def _main_concept(frame: pl.DataFrame, vocab: Vocabulary) -> pl.DataFrame:
    """concept_id, source_concept_id, domain: a constant from the file, else the code through the
    vocabulary ("Maps to"; one-to-many fans out and the key gets the target concept)."""
    constant = frame.filter(pl.col("concept_const").is_not_null())
    coded = frame.filter(pl.col("concept_const").is_null())
    domains = vocab.concept.select(
        pl.col("concept_id").cast(pl.Int64).alias("concept_const"), pl.col("domain_id").alias("domain")
    ).collect()
    # A constant concept is what the mapping file says this archetype node denotes: it is also the
    # source concept, and the node (archetype and at-code) is the source value when no code was coded.
    node = pl.concat_str(
        pl.col("archetype").str.replace(r"^openEHR-EHR-[A-Z_]+\.", ""),
        pl.lit("/"),
        pl.col("focus_path").str.extract(r"(at\d+(?:\.\d+)*)[^a-z]*$"),
    )
    constant = constant.join(domains, on="concept_const", how="left").with_columns(
        pl.col("concept_const").alias("concept_id"),
        pl.col("concept_const").alias("source_concept_id"),
        pl.lit(None, pl.Int64).alias("c_value_as_concept_id"),
        pl.coalesce("concept_code", "concept_text", node).alias("source_value"),
    )
    coded = resolve_concepts(
        coded, vocab, system="concept_system", code="concept_code", prefix="c_"
    ).with_columns(
        pl.col("c_concept_id").cast(pl.Int64).alias("concept_id"),
        pl.col("c_source_concept_id").cast(pl.Int64).alias("source_concept_id"),
        pl.col("c_domain_id").alias("domain"),
        pl.col("c_value_as_concept_id").cast(pl.Int64),
        pl.coalesce("concept_code", "concept_text").alias("source_value"),
    )
    coded = coded.drop([c for c in coded.columns if c.startswith("c_") and c != "c_value_as_concept_id"])
    both = pl.concat([constant, coded], how="diagonal_relaxed").sort("_candidate")
    fanned = pl.col("_key").count().over("_key") > 1
    return both.with_columns(
        pl.when(fanned)
        .then(pl.col("_key") + "|" + pl.col("concept_id").cast(pl.Utf8))
        .otherwise("_key")
        .alias("_key")
    )


def _first_concept(frame: pl.DataFrame, part: str, vocab: Vocabulary) -> pl.DataFrame:
    """``{part}_concept_id`` from a constant or the first standard concept of the code (no fan-out:
    a qualifier or value holds one concept)."""
    system, code = f"{part}_system", f"{part}_code"
    codes = frame.select(system, code).unique().drop_nulls(code)
    if codes.height:
        resolved = (
            resolve_concepts(codes, vocab, system=system, code=code, prefix="r_")
            .group_by(system, code, maintain_order=True)
            .agg(
                pl.col("r_concept_id").first().cast(pl.Int64),
                pl.col("r_source_concept_id").first().cast(pl.Int64),
            )
        )
        frame = frame.join(resolved, on=[system, code], how="left", nulls_equal=True, maintain_order="left")
    else:
        frame = frame.with_columns(
            pl.lit(None, pl.Int64).alias("r_concept_id"), pl.lit(None, pl.Int64).alias("r_source_concept_id")
        )
    const = f"{part}_const" if f"{part}_const" in frame.columns else None
    return frame.with_columns(
        pl.coalesce(*([const] if const else []), "r_concept_id").alias(f"{part}_concept_id"),
        pl.col("r_source_concept_id").alias(f"{part}_source_concept_id"),
    ).drop("r_concept_id", "r_source_concept_id")


def _bookkeeping() -> list[pl.Expr]:
    return [
        pl.lit(SOURCE).alias("_source_format"),
        (pl.lit(f"{SOURCE}|ehr/") + pl.col("ehr_id")).alias("_ref__person_id"),
    ]


def _lineage() -> list[pl.Expr]:
    return [
        "_key",
        "_record_key",
        "composition_uid",
        "ehr_id",
        pl.col("source_file").alias("_source_file"),
        pl.col("position").alias("_position"),
        pl.col("archetype").alias("_record_type"),
        pl.col("composition_uid").alias("_record_id"),
        pl.col("composition_version").alias("_record_version"),
    ]


def source_text(column: str) -> pl.Expr:
    """A source value as the CDM holds it (varchar(50))."""
    return pl.col(column).cast(pl.Utf8).str.slice(0, SOURCE_VALUE_LENGTH)


def _value_source() -> pl.Expr:
    return source_text("value_code").fill_null(
        pl.when(pl.col("value_type").is_in(["DV_TEXT", "DV_CODED_TEXT"])).then(source_text("value_text"))
    )


def _measurement(f: pl.DataFrame) -> pl.DataFrame:
    return f.select(
        *_lineage(),
        measurement_concept_id="concept_id",
        measurement_date=pl.col("start").dt.date(),
        measurement_datetime="start",
        measurement_type_concept_id="type_concept_id",
        operator_concept_id="operator_concept_id",
        value_as_number="value_number",
        value_as_concept_id="value_as_concept_id",
        unit_concept_id="unit_concept_id",
        range_low="range_low",
        range_high="range_high",
        measurement_source_value=source_text("source_value"),
        measurement_source_concept_id="source_concept_id",
        unit_source_value="unit_source_value",
        value_source_value=_value_source(),
    )


def _observation(f: pl.DataFrame) -> pl.DataFrame:
    return f.select(
        *_lineage(),
        observation_concept_id="concept_id",
        observation_date=pl.col("start").dt.date(),
        observation_datetime="start",
        observation_type_concept_id="type_concept_id",
        value_as_number="value_number",
        value_as_string=pl.when(pl.col("value_type") == "DV_TEXT").then(
            pl.col("value_text").str.slice(0, 60)
        ),
        value_as_concept_id="value_as_concept_id",
        qualifier_concept_id="qualifier_concept_id",
        unit_concept_id="unit_concept_id",
        observation_source_value=source_text("source_value"),
        observation_source_concept_id="source_concept_id",
        unit_source_value="unit_source_value",
        qualifier_source_value=source_text("qualifier_code"),
        value_source_value=_value_source(),
    )


def _condition(f: pl.DataFrame) -> pl.DataFrame:
    return f.select(
        *_lineage(),
        condition_concept_id="concept_id",
        condition_start_date=pl.col("start").dt.date(),
        condition_start_datetime="start",
        condition_end_date=pl.col("end").dt.date(),
        condition_end_datetime="end",
        condition_type_concept_id="type_concept_id",
        condition_status_concept_id="status_concept_id",
        condition_source_value=source_text("source_value"),
        condition_source_concept_id="source_concept_id",
        condition_status_source_value=source_text("status_code"),
    )


def _drug(f: pl.DataFrame) -> pl.DataFrame:
    end = pl.coalesce("end", "start")  # end is required; without one the exposure is the start day
    return f.select(
        *_lineage(),
        drug_concept_id="concept_id",
        drug_exposure_start_date=pl.col("start").dt.date(),
        drug_exposure_start_datetime="start",
        drug_exposure_end_date=end.dt.date(),
        drug_exposure_end_datetime=end,
        drug_type_concept_id="type_concept_id",
        quantity="quantity",
        route_concept_id="route_concept_id",
        drug_source_value=source_text("source_value"),
        drug_source_concept_id="source_concept_id",
        route_source_value=source_text("route_code"),
    )


def _procedure(f: pl.DataFrame) -> pl.DataFrame:
    return f.select(
        *_lineage(),
        procedure_concept_id="concept_id",
        procedure_date=pl.col("start").dt.date(),
        procedure_datetime="start",
        procedure_end_date=pl.col("end").dt.date(),
        procedure_end_datetime="end",
        procedure_type_concept_id="type_concept_id",
        quantity=pl.col("quantity").round().cast(pl.Int64),
        procedure_source_value=source_text("source_value"),
        procedure_source_concept_id="source_concept_id",
    )


def _device(f: pl.DataFrame) -> pl.DataFrame:
    return f.select(
        *_lineage(),
        device_concept_id="concept_id",
        device_exposure_start_date=pl.col("start").dt.date(),
        device_exposure_start_datetime="start",
        device_exposure_end_date=pl.col("end").dt.date(),
        device_exposure_end_datetime="end",
        device_type_concept_id="type_concept_id",
        unique_device_id=source_text("unique_device_id"),
        production_id=source_text("production_id"),
        quantity=pl.col("quantity").round().cast(pl.Int64),
        device_source_value=source_text("source_value"),
        device_source_concept_id="source_concept_id",
        unit_concept_id="unit_concept_id",
        unit_source_value="unit_source_value",
    )


def _specimen(f: pl.DataFrame) -> pl.DataFrame:
    return f.select(
        *_lineage(),
        specimen_concept_id="concept_id",
        specimen_type_concept_id="type_concept_id",
        specimen_date=pl.col("start").dt.date(),
        specimen_datetime="start",
        quantity="quantity",
        unit_concept_id="unit_concept_id",
        anatomic_site_concept_id="site_concept_id",
        specimen_source_id=source_text("specimen_source_id"),
        specimen_source_value=source_text("source_value"),
        unit_source_value="unit_source_value",
    )


def _death(f: pl.DataFrame) -> pl.DataFrame:
    return f.select(
        *_lineage(),
        death_date=pl.col("start").dt.date(),
        death_datetime="start",
        death_type_concept_id="type_concept_id",
        cause_concept_id=pl.when(pl.col("concept_const").is_null()).then("concept_id"),
        cause_source_value=pl.when(pl.col("concept_const").is_null()).then(source_text("source_value")),
        cause_source_concept_id=pl.when(pl.col("concept_const").is_null()).then("source_concept_id"),
    )


_BUILDERS = {
    "measurement": _measurement,
    "observation": _observation,
    "condition_occurrence": _condition,
    "drug_exposure": _drug,
    "procedure_occurrence": _procedure,
    "device_exposure": _device,
    "specimen": _specimen,
    "death": _death,
}
