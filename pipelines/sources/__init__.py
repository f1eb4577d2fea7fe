"""Readers: turn source files (FHIR, openEHR) into typed Polars frames with lineage."""
