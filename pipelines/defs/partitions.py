"""One partition per landing batch (a sub-folder of the landing zone), added by the landing sensor."""

import dagster as dg

landing_batches = dg.DynamicPartitionsDefinition(name="landing_batches")

# Every asset that writes the DuckDB file is in this pool; dagster_home/dagster.yaml limits pools to
# one step at a time, so parsing and mapping run in parallel while only one step writes.
WAREHOUSE_POOL = "duckdb_writer"
