"""The warehouse: where OMOP rows land (DuckDB file by default), with the id map and lineage."""
