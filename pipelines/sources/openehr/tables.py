"""Candidate rows of the OMOCL engine to CDM v5.4 table frames (MappedBatch contract).

Codes are resolved with the shared ``resolve_concepts``/``resolve_units`` (the same step FHIR codes
take); the standard concept's domain picks the table (``_engine/domains.yaml``), else the OMOCL
type does. Persons come from the EHRs, visits from ADMIN_ENTRY visit mappings, case identifiers,
or one derived visit per composition context (its setting chooses the visit concept).
"""

from __future__ import annotations

import polars as pl

from pipelines.mapping.batch import QUARANTINE_SCHEMA
from pipelines.mapping.omocl.grammar import ROW_TABLES

SOURCE = "openehr"
_SOURCE_VALUE_LENGTH = 50
_CONCEPT_PARTS = ("concept", "qualifier", "route", "status", "site")


def clinical_tables(clinical: pl.DataFrame, vocab, settings: dict, resolve_concepts, resolve_units) -> dict:
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
    frame = _main_concept(frame, vocab, resolve_concepts)
    for part in _CONCEPT_PARTS[1:]:
        frame = _first_concept(frame, part, vocab, resolve_concepts)
    frame = _first_concept(frame, "value", vocab, resolve_concepts)
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


def _main_concept(frame: pl.DataFrame, vocab, resolve_concepts) -> pl.DataFrame:
    """concept_id, source_concept_id, domain: a constant from the file, else the code through the
    vocabulary ("Maps to"; one-to-many fans out and the key gets the target concept)."""
    constant = frame.filter(pl.col("concept_const").is_not_null())
    coded = frame.filter(pl.col("concept_const").is_null())
    domains = vocab.concept.select(
        pl.col("concept_id").cast(pl.Int64).alias("concept_const"), pl.col("domain_id").alias("domain")
    ).collect()
    constant = constant.join(domains, on="concept_const", how="left").with_columns(
        pl.col("concept_const").alias("concept_id"),
        pl.lit(0, pl.Int64).alias("source_concept_id"),
        pl.lit(None, pl.Int64).alias("c_value_as_concept_id"),
        pl.coalesce("concept_code", "concept_text").alias("source_value"),
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


def _first_concept(frame: pl.DataFrame, part: str, vocab, resolve_concepts) -> pl.DataFrame:
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


def _text(column: str) -> pl.Expr:
    return pl.col(column).cast(pl.Utf8).str.slice(0, _SOURCE_VALUE_LENGTH)


def _value_source() -> pl.Expr:
    return _text("value_code").fill_null(
        pl.when(pl.col("value_type").is_in(["DV_TEXT", "DV_CODED_TEXT"])).then(_text("value_text"))
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
        measurement_source_value=_text("source_value"),
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
        observation_source_value=_text("source_value"),
        observation_source_concept_id="source_concept_id",
        unit_source_value="unit_source_value",
        qualifier_source_value=_text("qualifier_code"),
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
        condition_source_value=_text("source_value"),
        condition_source_concept_id="source_concept_id",
        condition_status_source_value=_text("status_code"),
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
        drug_source_value=_text("source_value"),
        drug_source_concept_id="source_concept_id",
        route_source_value=_text("route_code"),
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
        procedure_source_value=_text("source_value"),
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
        unique_device_id=_text("unique_device_id"),
        production_id=_text("production_id"),
        quantity=pl.col("quantity").round().cast(pl.Int64),
        device_source_value=_text("source_value"),
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
        specimen_source_id=_text("specimen_source_id"),
        specimen_source_value=_text("source_value"),
        unit_source_value="unit_source_value",
    )


def _death(f: pl.DataFrame) -> pl.DataFrame:
    return f.select(
        *_lineage(),
        death_date=pl.col("start").dt.date(),
        death_datetime="start",
        death_type_concept_id="type_concept_id",
        cause_concept_id=pl.when(pl.col("concept_const").is_null()).then("concept_id"),
        cause_source_value=pl.when(pl.col("concept_const").is_null()).then(_text("source_value")),
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


def visit_rows(
    candidates: pl.DataFrame, tables: dict, export, settings: dict
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Visit rows, and the visit key of each composition that has clinical rows.

    A composition's visit is its case (context case identifier; all compositions of a case share
    it), else its own ADMIN_ENTRY visit (hospitalisation, episode), else one derived from its context.
    """
    with_rows = pl.concat(
        [t.select("composition_uid") for t in tables.values()]
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
    ).unique("composition_uid", keep="first")
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
            pl.col("case_id").str.slice(0, _SOURCE_VALUE_LENGTH),
            pl.when(derived).then(pl.lit("derived:setting/") + pl.col("setting_code").fill_null("none")),
        ),
    )
    visit_of = members.filter(pl.col("composition_uid").is_in(with_rows["composition_uid"].implode())).select(
        "composition_uid", _ref__visit_occurrence_id="visit_key"
    )
    return frame, visit_of


def person_rows(
    candidates: pl.DataFrame, export, settings: dict, vocab, resolve_concepts
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
    ehrs = export.ehrs.join(facts, on="ehr_id", how="left")
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
        person_source_value=pl.col("ehr_id").str.slice(0, _SOURCE_VALUE_LENGTH),
        gender_source_value=_text("gender_code"),
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
