"""The code → standard concept lookup, computed once per vocabulary and cached beside its tables.

One row per (vocabulary_id, concept_code, target): the source concept, every standard concept it
"Maps to" (one-to-many stays many, as OHDSI intends), the target's domain and the "Maps to value"
concept. A deprecated or upgraded concept without a valid "Maps to" follows its replacement
("Concept replaced by", "Concept same_as to", "Concept alt_to to", up to three steps). A valid standard
concept without a "Maps to" row maps to itself. Targets absent from CONCEPT are dropped (a partial
vocabulary, like the Eunomia shards, has relationships whose ends it does not carry).
"""

from __future__ import annotations

import polars as pl

LOOKUP_SCHEMA = {
    "vocabulary_id": pl.Utf8,
    "concept_code": pl.Utf8,
    "source_concept_id": pl.Int32,
    "concept_id": pl.Int32,
    "domain_id": pl.Utf8,
    "value_as_concept_id": pl.Int32,
}
KEY = "_key"
_REPLACEMENTS = ("Concept replaced by", "Concept same_as to", "Concept alt_to to")
_REPLACEMENT_STEPS = 3


def key_hash(vocabulary_id: pl.Expr, code: pl.Expr) -> pl.Expr:
    """A 64-bit hash of (vocabulary, code), to find codes by integer search instead of string joins.

    Polars hashes are stable within one process only: never store them. Matches are always confirmed
    by comparing the strings, so a collision costs a fallback, never a wrong concept.
    """
    return (vocabulary_id.hash(seed=1) ^ code.hash(seed=2)).alias(KEY)


def build_lookup(concept: pl.LazyFrame, concept_relationship: pl.LazyFrame) -> pl.LazyFrame:
    """The lookup as a lazy query over CONCEPT and CONCEPT_RELATIONSHIP (``LOOKUP_SCHEMA``)."""
    valid = concept_relationship.filter(pl.col("invalid_reason").is_null())
    known = concept.select("concept_id", "domain_id", "standard_concept", "invalid_reason")

    def relation(name: str | tuple[str, ...]) -> pl.LazyFrame:
        names = [name] if isinstance(name, str) else list(name)
        return valid.filter(pl.col("relationship_id").is_in(pl.Series(names).implode())).select(
            "concept_id_1", "concept_id_2"
        )

    maps_to = relation("Maps to").join(known.select(concept_id_2="concept_id"), on="concept_id_2", how="semi")
    has_map = maps_to.select(pl.col("concept_id_1").unique())
    replaced = (
        relation(_REPLACEMENTS)
        .join(known.select(concept_id_2="concept_id"), on="concept_id_2", how="semi")
        .group_by("concept_id_1")
        .agg(pl.col("concept_id_2").min())  # one replacement per concept, deterministic
    )

    # Source concept per (vocabulary_id, code): valid first, then standard, then lowest id.
    source = (
        concept.select("vocabulary_id", "concept_code", "concept_id", "standard_concept", "invalid_reason")
        .sort(
            pl.col("invalid_reason").is_not_null(),
            pl.col("standard_concept").fill_null("~"),
            "concept_id",
        )
        .unique(["vocabulary_id", "concept_code"], keep="first")
        .select("vocabulary_id", "concept_code", source_concept_id="concept_id", effective="concept_id")
    )
    # Follow replacements while the concept has no valid Maps to of its own.
    for _ in range(_REPLACEMENT_STEPS):
        source = (
            source.join(
                has_map.select(effective="concept_id_1", _mapped=pl.lit(True)), on="effective", how="left"
            )
            .join(replaced.select(effective="concept_id_1", _next="concept_id_2"), on="effective", how="left")
            .with_columns(
                effective=pl.when(pl.col("_mapped").is_null() & pl.col("_next").is_not_null())
                .then(pl.col("_next"))
                .otherwise(pl.col("effective"))
            )
            .drop("_mapped", "_next")
        )

    standard_self = known.filter(
        (pl.col("standard_concept") == "S") & pl.col("invalid_reason").is_null()
    ).select(concept_id_1="concept_id", concept_id_2="concept_id")
    targets = pl.concat([maps_to, standard_self.join(has_map, on="concept_id_1", how="anti")]).unique()
    value = (
        relation("Maps to value")
        .join(known.select(concept_id_2="concept_id"), on="concept_id_2", how="semi")
        .group_by("concept_id_1")
        .agg(value_as_concept_id=pl.col("concept_id_2").min())
    )
    return (
        source.join(
            targets.rename({"concept_id_1": "effective", "concept_id_2": "concept_id"}),
            on="effective",
            how="left",
        )
        .join(known.select("concept_id", "domain_id"), on="concept_id", how="left")
        .join(value.rename({"concept_id_1": "effective"}), on="effective", how="left")
        .select(
            "vocabulary_id",
            "concept_code",
            "source_concept_id",
            pl.col("concept_id").fill_null(0),
            "domain_id",
            "value_as_concept_id",
        )
        .cast(LOOKUP_SCHEMA)  # type: ignore[arg-type]
        .sort("vocabulary_id", "concept_code", "concept_id")
    )
