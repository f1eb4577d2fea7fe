"""The PostgreSQL target (the database ATLAS/WebAPI reads): the CDM tables of the warehouse, refreshed.

The schema comes from the one CDM spec rendered for PostgreSQL (tables, primary keys, indexes; the
foreign keys are left to the data-quality checks, as OHDSI's own DDL keeps them in a separate optional
script: they would refuse clinical rows whenever the vocabulary is loaded later). Every table is
emptied and bulk-loaded through ADBC (COPY in binary form from Arrow batches), all in one
transaction: readers see the previous export until the commit, and a failure leaves it in place.

The URL is a libpq URL; ``?schema=NAME`` (Passerelle's own parameter, default ``cdm``) picks the
database schema.
"""

from __future__ import annotations

import re
from functools import cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import duckdb

from pipelines.cdm.ddl import statements
from pipelines.cdm.spec import Schema, Table, cdm_schema
from pipelines.errors import WarehouseError
from pipelines.warehouse.cdm_tables import duckdb_type, quoted, vocabulary_table_names
from pipelines.warehouse.targets import ExportManifest

DEFAULT_SCHEMA = "cdm"
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BATCH_ROWS = 100_000


class PostgresDatabase:
    def __init__(self, url: str) -> None:
        self.url, self.schema = _split_schema(url)
        parts = urlsplit(self.url)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        self.name, self.location = "postgres", f"{where} schema {self.schema}"  # no user, no password
        self.description = f"PostgreSQL {self.location}"

    def store(self, warehouse: duckdb.DuckDBPyConnection, manifest: ExportManifest) -> dict[str, int]:
        import adbc_driver_postgresql.dbapi as adbc

        try:
            connection = adbc.connect(self.url)
        except adbc.Error as error:
            raise WarehouseError(f"{self.description}: cannot connect ({_first_line(error)})") from error
        rows: dict[str, int] = {}
        try:
            with connection.cursor() as cur:
                self._ensure_tables(cur)
                reusable = self._unchanged_vocabulary(cur, warehouse, manifest)
                tables = [t for t in cdm_schema().tables if t.name not in reusable]
                cur.execute(f"TRUNCATE TABLE {', '.join(f'{self.schema}.{t.name}' for t in tables)}")
                rows.update(reusable)
                for table in tables:
                    rows[table.name] = warehouse.execute(
                        f"SELECT count(*) FROM main.{table.name}"
                    ).fetchall()[0][0]
                    if rows[table.name]:
                        cur.adbc_ingest(
                            table.name,
                            _arrow_batches(warehouse, table),
                            mode="append",
                            db_schema_name=self.schema,
                        )
            connection.commit()
        except adbc.Error as error:
            connection.rollback()
            raise WarehouseError(f"{self.description}: export failed ({_first_line(error)})") from error
        finally:
            connection.close()
        return rows

    def _unchanged_vocabulary(
        self, cur, warehouse: duckdb.DuckDBPyConnection, manifest: ExportManifest
    ) -> dict[str, int]:
        """Vocabulary tables the database already holds (same release, same row counts): kept as they
        are, since a full Athena vocabulary takes far longer to reload than the clinical tables."""
        if manifest.vocabulary_version is None:
            return {}
        cur.execute(
            f"SELECT max(vocabulary_version) FROM {self.schema}.vocabulary WHERE vocabulary_id = 'None'"
        )
        if cur.fetchall()[0][0] != manifest.vocabulary_version:
            return {}
        same = {}
        for name in vocabulary_table_names():
            count = warehouse.execute(f"SELECT count(*) FROM main.{name}").fetchall()[0][0]
            cur.execute(f"SELECT count(*) FROM {self.schema}.{name}")
            if cur.fetchall()[0][0] == count:
                same[name] = count
        return same

    def _ensure_tables(self, cur) -> None:
        """Create the CDM tables that are missing; refuse tables whose columns are not the CDM's."""
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
        cur.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            f"WHERE table_schema = '{self.schema}' ORDER BY table_name, ordinal_position"
        )
        found: dict[str, list[str]] = {}
        for table_name, column_name in cur.fetchall():
            found.setdefault(table_name, []).append(column_name)
        schema = cdm_schema()
        missing = [t for t in schema.tables if t.name not in found]
        for table in schema.tables:
            if table.name in found and found[table.name] != table.column_names:
                raise WarehouseError(
                    f"{self.description}: table {table.name} does not have exactly the CDM v5.4 columns; "
                    "drop it (or use another schema) and export again"
                )
        for sql in _ddl(self.schema, tuple(t.name for t in missing)):
            cur.execute(sql)


@cache
def _ddl(db_schema: str, tables: tuple[str, ...]) -> tuple[str, ...]:
    """Tables, primary keys and indexes of ``tables`` for PostgreSQL (rendered once per process)."""
    if not tables:
        return ()
    schema = cdm_schema()
    subset = Schema(version=schema.version, tables=tuple(schema.table(name) for name in tables))
    parts = ("tables", "primary_keys", "indexes")
    return tuple(statements(subset, "postgresql", db_schema=db_schema, parts=parts))


def _arrow_batches(warehouse: duckdb.DuckDBPyConnection, table: Table):
    """The table's rows as Arrow batches in CDM types, streamed (never the whole table in memory)."""
    columns = ", ".join(
        f"CAST({quoted(c.name)} AS {duckdb_type(c)}) AS {quoted(c.name)}" for c in table.columns
    )
    return warehouse.sql(f"SELECT {columns} FROM main.{table.name}").to_arrow_reader(_BATCH_ROWS)


def _split_schema(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise WarehouseError("--postgres takes a URL like postgresql://user@host:5432/database?schema=cdm")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), DEFAULT_SCHEMA)
    if not _NAME.match(schema):
        raise WarehouseError(f"PostgreSQL schema {schema!r}: use lowercase letters, digits and _ only")
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit(parts._replace(query=rest)), schema


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]
