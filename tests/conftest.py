"""Shared fixtures: the shared reference data, temporary warehouses, a real PostgreSQL server."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.testing import TemporaryPostgres

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """../shared (third-party reference data and samples); tests that need it skip without it."""
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside the repository")
    return SHARED


@pytest.fixture
def warehouse_path(tmp_path: Path) -> Path:
    return tmp_path / "omop.duckdb"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A real PostgreSQL server for the session (initdb + pg_ctl on a free loopback port)."""
    server = TemporaryPostgres()
    if not server.available:
        pytest.skip("no PostgreSQL server binaries on this machine (.ci/run installs them)")
    with server as url:
        yield url
