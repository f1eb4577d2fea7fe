"""Dagster definitions, one module per domain: thin assets over the library's plain functions."""
