"""The vocabulary asset: the OHDSI vocabularies every code is mapped through."""

import time

import dagster as dg

from pipelines.defs.partitions import WAREHOUSE_POOL
from pipelines.defs.settings import PasserelleSettings


@dg.asset(group_name="vocabulary", kinds={"duckdb", "parquet"}, pool=WAREHOUSE_POOL)
def vocabulary(settings: PasserelleSettings) -> dg.MaterializeResult:
    """The OHDSI standardized vocabularies (concepts, "Maps to" relationships, ancestors) in the
    warehouse. Every source code is translated to a standard OMOP concept through them; researchers
    query them to build concept sets. Built once per release into a columnar cache, then reused."""
    from pipelines.vocab import load_vocabulary, write_vocabulary
    from pipelines.warehouse.duckdb_file import connect, initialize

    started = time.perf_counter()
    vocab = load_vocabulary(settings.vocab_folder)
    initialize(settings.warehouse_path)
    with connect(settings.warehouse_path) as con:
        counts = write_vocabulary(con, vocab)
    return dg.MaterializeResult(
        metadata={
            "vocabulary_version": vocab.version,
            "concepts": dg.MetadataValue.int(counts.get("concept", 0)),
            "concept_relationships": dg.MetadataValue.int(counts.get("concept_relationship", 0)),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
