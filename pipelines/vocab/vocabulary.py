"""A loaded OHDSI vocabulary: its tables as lazy Polars frames over the Parquet cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from pipelines.project_files import data_dir
from pipelines.vocab.aliases import project_concept_maps
from pipelines.vocab.athena import empty_frame, vocabulary_tables
from pipelines.vocab.cache import LOOKUP_FILE, ensure_cache, read_manifest
from pipelines.vocab.local_maps import read_local_maps
from pipelines.vocab.resolution import KEY, LOOKUP_SCHEMA, key_hash


@dataclass
class Vocabulary:
    """The vocabulary tables (``.concept``, ``.concept_relationship``, ...) and the release string."""

    cache_dir: Path
    source: Path
    version: str
    tables: dict[str, dict]  # per table: status (loaded, empty, missing), rows, file
    built: bool  # True when this load built the cache, False when it reused it
    local_maps_dir: Path | None = None
    _memo: dict[str, pl.DataFrame] = field(default_factory=dict, repr=False, compare=False)

    def table(self, name: str) -> pl.LazyFrame:
        path = self.cache_dir / f"{name}.parquet"
        if path.exists():
            return pl.scan_parquet(path)
        spec = next(t for t in vocabulary_tables() if t.name == name)
        return empty_frame(spec).lazy()

    concept = property(lambda self: self.table("concept"))
    concept_relationship = property(lambda self: self.table("concept_relationship"))
    concept_ancestor = property(lambda self: self.table("concept_ancestor"))
    concept_synonym = property(lambda self: self.table("concept_synonym"))
    vocabulary = property(lambda self: self.table("vocabulary"))
    domain = property(lambda self: self.table("domain"))
    concept_class = property(lambda self: self.table("concept_class"))
    relationship = property(lambda self: self.table("relationship"))
    drug_strength = property(lambda self: self.table("drug_strength"))
    source_to_concept_map = property(lambda self: self.table("source_to_concept_map"))

    def vocabulary_ids(self) -> set[str]:
        """The vocabulary_ids codes can resolve in: those with concepts, those the VOCABULARY table lists
        and the source vocabularies of the site's and the project's mapping rows."""
        if "vocabulary_ids" not in self._memo:
            ids = pl.concat(
                [
                    self.lookup().lazy().select("vocabulary_id").unique(),
                    self.vocabulary.select("vocabulary_id"),
                ]
            ).unique()
            self._memo["vocabulary_ids"] = ids.collect()
        return set(self._memo["vocabulary_ids"]["vocabulary_id"].drop_nulls())

    def lookup(self) -> pl.DataFrame:
        """The code → standard concept lookup (see pipelines/vocab/resolution.py), with the site's
        ``mappings/local`` rows and the project's ``vocab/aliases/concept_maps.csv`` rows taking precedence
        over the vocabulary's own "Maps to". Read once per Vocabulary object and kept in memory."""
        if "lookup" not in self._memo:
            self._memo["lookup"] = self._with_overrides(pl.read_parquet(self.cache_dir / LOOKUP_FILE))
        return self._memo["lookup"]

    def indexed_lookup(self) -> pl.DataFrame:
        """``lookup()`` with a ``_key`` column (``key_hash`` of vocabulary_id and code), sorted by it, so
        resolution finds a code by binary search. Built once per Vocabulary object."""
        if "indexed_lookup" not in self._memo:
            lookup = self.lookup()
            indexed = lookup.with_columns(key_hash(pl.col("vocabulary_id"), pl.col("concept_code"))).sort(KEY)
            self._memo["indexed_lookup"] = indexed
            self._memo["lookup"] = indexed.drop(KEY)  # same buffers: one copy of the lookup in memory
        return self._memo["indexed_lookup"]

    def _with_overrides(self, lookup: pl.DataFrame) -> pl.DataFrame:
        project = project_concept_maps().select(
            "source_vocabulary_id",
            "source_code",
            pl.lit(0, dtype=pl.Int32).alias("source_concept_id"),
            "target_concept_id",
        )
        local = read_local_maps(self.local_maps_dir or data_dir("mappings") / "local")
        cdm_rows = (
            self.source_to_concept_map.filter(pl.col("invalid_reason").is_null())
            .select("source_vocabulary_id", "source_code", "source_concept_id", "target_concept_id")
            .collect()
        )
        # Precedence: the site's files, then the vocabulary's own STCM table, then the project's rows.
        overrides = (
            pl.concat(
                [
                    local.with_columns(_rank=pl.lit(0)),
                    cdm_rows.with_columns(_rank=pl.lit(1)),
                    project.with_columns(_rank=pl.lit(2)),
                ],
                how="vertical_relaxed",
            )
            .with_columns(pl.col("_rank").min().over("source_vocabulary_id", "source_code").alias("_best"))
            .filter(pl.col("_rank") == pl.col("_best"))
            .drop("_rank", "_best")
        )
        if overrides.is_empty():
            return lookup
        domains = (
            self.concept.select("concept_id", "domain_id")
            .join(overrides.lazy().select(concept_id="target_concept_id"), on="concept_id", how="semi")
            .collect()
        )
        override_rows = (
            overrides.rename(
                {
                    "source_vocabulary_id": "vocabulary_id",
                    "source_code": "concept_code",
                    "target_concept_id": "concept_id",
                }
            )
            .join(domains, on="concept_id", how="left")
            .with_columns(value_as_concept_id=pl.lit(None, dtype=pl.Int32))
            .select(list(LOOKUP_SCHEMA))
            .cast(LOOKUP_SCHEMA)  # type: ignore[arg-type]
        )
        kept = lookup.join(
            override_rows.select("vocabulary_id", "concept_code"),
            on=["vocabulary_id", "concept_code"],
            how="anti",
        )
        return pl.concat([kept, override_rows])


def load_vocabulary(folder: Path | None = None, *, local_maps: Path | None = None) -> Vocabulary:
    """Load an OHDSI vocabulary folder (Athena download or CDM export); None = the bundled starter.

    The first load of given file contents builds the Parquet cache; later loads reuse it.
    ``local_maps`` is the folder of site mappings (default ``mappings/local``).
    """
    source = (folder or data_dir("vocab") / "starter").resolve()
    cache_dir, built = ensure_cache(source)
    manifest = read_manifest(cache_dir)
    return Vocabulary(
        cache_dir=cache_dir,
        source=source,
        version=manifest["release"],
        tables=manifest["tables"],
        built=built,
        local_maps_dir=local_maps,
    )
