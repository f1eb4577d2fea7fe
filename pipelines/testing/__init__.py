"""Helpers for tests of Passerelle and of the sites that build on it (shipped with the package)."""

from pipelines.testing.postgres import TemporaryPostgres

__all__ = ["TemporaryPostgres"]
