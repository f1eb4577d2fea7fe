"""Where things are, as one Dagster resource; unset fields fall back to environment variables.

PASSERELLE_LANDING (new batches arrive here, one sub-folder per batch), PASSERELLE_STAGING (mapped
batches wait here for the load), PASSERELLE_WAREHOUSE (the DuckDB file), PASSERELLE_VOCAB (an Athena
vocabulary folder; unset = the bundled starter vocabulary), PASSERELLE_PARQUET and PASSERELLE_POSTGRES
(optional exports), PASSERELLE_QUALITY (DQ results). Times without an offset are read in the zone of
PASSERELLE_TIME_ZONE (default UTC), by the readers themselves, the same with or without Dagster.
The environment is read when a step runs, not when the code location loads.
"""

import os
from pathlib import Path

import dagster as dg

_DEFAULTS = {
    "landing": ("PASSERELLE_LANDING", "data/landing"),
    "staging": ("PASSERELLE_STAGING", "data/staging"),
    "warehouse": ("PASSERELLE_WAREHOUSE", "data/omop.duckdb"),
    "vocab": ("PASSERELLE_VOCAB", ""),
    "parquet": ("PASSERELLE_PARQUET", ""),
    "postgres": ("PASSERELLE_POSTGRES", ""),
    "quality": ("PASSERELLE_QUALITY", "data/quality"),
}


class PasserelleSettings(dg.ConfigurableResource):
    """Folders and targets of one Passerelle deployment."""

    landing: str | None = None
    staging: str | None = None
    warehouse: str | None = None
    vocab: str | None = None
    parquet: str | None = None
    postgres: str | None = None
    quality: str | None = None

    def get(self, name: str) -> str:
        value = getattr(self, name)
        if value is not None:
            return value
        variable, default = _DEFAULTS[name]
        return os.environ.get(variable, default)

    @property
    def landing_folder(self) -> Path:
        return Path(self.get("landing"))

    @property
    def warehouse_path(self) -> Path:
        return Path(self.get("warehouse"))

    @property
    def quality_folder(self) -> Path:
        return Path(self.get("quality"))

    @property
    def vocab_folder(self) -> Path | None:
        return Path(self.get("vocab")) if self.get("vocab") else None

    @property
    def parquet_folder(self) -> Path | None:
        return Path(self.get("parquet")) if self.get("parquet") else None

    @property
    def postgres_url(self) -> str | None:
        return self.get("postgres") or None

    def batch_folder(self, batch: str) -> Path:
        return self.landing_folder / batch

    def staged(self, batch: str, source: str) -> Path:
        return Path(self.get("staging")) / batch / source
