"""Where things are, as one Dagster resource configured from environment variables.

PASSERELLE_LANDING (new batches arrive here, one sub-folder per batch), PASSERELLE_STAGING (mapped
batches wait here for the load), PASSERELLE_WAREHOUSE (the DuckDB file), PASSERELLE_VOCAB (an Athena
vocabulary folder; empty = the bundled starter vocabulary), PASSERELLE_PARQUET and
PASSERELLE_POSTGRES (optional exports), PASSERELLE_QUALITY (DQ results), PASSERELLE_TZ (zone of
times without an offset).
"""

import os
from pathlib import Path

import dagster as dg


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


class PasserelleSettings(dg.ConfigurableResource):
    """Folders and targets of one Passerelle deployment."""

    landing: str = _env("PASSERELLE_LANDING", "data/landing")
    staging: str = _env("PASSERELLE_STAGING", "data/staging")
    warehouse: str = _env("PASSERELLE_WAREHOUSE", "data/omop.duckdb")
    vocab: str = _env("PASSERELLE_VOCAB")
    parquet: str = _env("PASSERELLE_PARQUET")
    postgres: str = _env("PASSERELLE_POSTGRES")
    quality: str = _env("PASSERELLE_QUALITY", "data/quality")
    time_zone: str = _env("PASSERELLE_TZ", "Europe/Paris")

    @property
    def vocab_folder(self) -> Path | None:
        return Path(self.vocab) if self.vocab else None

    def batch_folder(self, batch: str) -> Path:
        return Path(self.landing) / batch

    def staged(self, batch: str, source: str) -> Path:
        return Path(self.staging) / batch / source
