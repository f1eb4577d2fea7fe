"""The OMOP CDM v5.4 schema: its one canonical spec (``omop_ddl/``) and its rendering per dialect."""

from pipelines.cdm.ddl import DIALECTS, render_ddl
from pipelines.cdm.spec import Column, Index, Schema, Table, cdm_schema, side_schema

__all__ = ["DIALECTS", "Column", "Index", "Schema", "Table", "cdm_schema", "render_ddl", "side_schema"]
