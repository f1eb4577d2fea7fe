"""Turn FHIR references into the canonical source keys the loader resolves (``fhir|Patient/123``).

Every form a server writes ends up as the same key, vectorised over a whole column:

- ``urn:uuid:...`` (and any fullUrl, absolute or not) -> the entry of the same Bundle with that fullUrl;
- relative ``Patient/123`` and absolute ``https://server/fhir/Patient/123/_history/2`` -> ``Patient/123``;
- contained ``#med1`` -> ``<key of the containing resource>#med1``;
- conditional ``Practitioner?identifier=system|value``, or a logical reference that only carries an
  ``identifier`` -> the resource of this batch with that identifier.

A reference that names nothing in this batch still gets a key (``fhir|`` + the reference as written),
so the loader can find it among earlier loads or quarantine the row as a dangling reference.
"""

from __future__ import annotations

import polars as pl

_LITERAL = r"([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})$"


def reference_keys(
    frame: pl.DataFrame,
    reference: pl.Expr,
    *,
    full_urls: pl.DataFrame,
    identifiers: pl.DataFrame,
    target_type: str | None = None,
) -> pl.Series:
    """The canonical key of ``reference`` (an expression giving a FHIR Reference struct) on every row
    of ``frame``, which must carry ``_scope`` and ``_record_key``. Null where there is no reference."""
    refs = frame.select(
        pl.col("_scope"),
        pl.col("_record_key"),
        reference.struct.field("reference").alias("ref"),
        reference.struct.field("type").alias("ref_type"),
        reference.struct.field("identifier").struct.field("system").alias("id_system"),
        reference.struct.field("identifier").struct.field("value").alias("id_value"),
    )
    kind = pl.coalesce(pl.col("ref_type"), pl.lit(target_type, dtype=pl.Utf8))
    logical = (
        pl.when(pl.col("id_system").is_not_null())
        .then(pl.format("{}?identifier={}|{}", kind, "id_system", "id_value"))
        .otherwise(pl.format("{}?identifier={}", kind, "id_value"))
    )
    refs = refs.with_columns(
        pl.when(pl.col("ref").str.contains("?", literal=True))
        .then(pl.col("ref"))
        .when(pl.col("ref").is_null() & pl.col("id_value").is_not_null())
        .then(logical)
        .alias("conditional")
    )
    refs = refs.join(
        full_urls.rename({"url": "ref", "key": "by_full_url"}),
        on=["_scope", "ref"],
        how="left",
        maintain_order="left",
    ).join(identifiers.rename({"key": "by_identifier"}), on="conditional", how="left", maintain_order="left")
    ref = pl.col("ref")
    literal = ref.str.split("/_history/").list.first().str.extract(_LITERAL, 1)
    key = pl.coalesce(
        pl.col("by_full_url"),
        pl.when(ref.str.starts_with("#")).then(pl.col("_record_key") + ref),
        pl.col("by_identifier"),
        pl.when(pl.col("conditional").is_not_null()).then("fhir|" + pl.col("conditional")),
        pl.when(ref.str.starts_with("urn:")).then("fhir|" + ref),
        "fhir|" + literal,
        "fhir|" + ref,
    )
    return refs.select(key.alias("key")).to_series()
