"""The CDM DDL, rendered for every dialect from one spec, and executed on real DuckDB and PostgreSQL."""

from __future__ import annotations

import duckdb
import pytest
import sqlglot

from pipelines.cdm import DIALECTS, cdm_schema, render_ddl
from pipelines.cdm.ddl import statements
from pipelines.errors import PasserelleError

# dialect: (measurement.value_as_number type, person.person_id type, concept_id type, varchar(max) type)
EXPECTED_TYPES = {
    "duckdb": ("DOUBLE", "BIGINT", "INT", "TEXT"),
    "postgresql": ("DOUBLE PRECISION", "BIGINT", "INT", "TEXT"),
    "spark": ("DOUBLE", "BIGINT", "INT", "STRING"),
    "bigquery": ("FLOAT64", "INT64", "INT64", "STRING"),
    "snowflake": ("DOUBLE", "BIGINT", "INT", "VARCHAR"),
    "tsql": ("FLOAT", "BIGINT", "INTEGER", "VARCHAR(MAX)"),
}
SQLGLOT_NAMES = {"postgresql": "postgres"}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_each_dialect_renders_valid_sql_with_the_right_types(dialect):
    read = SQLGLOT_NAMES.get(dialect, dialect)
    tables = {}
    for sql in statements(cdm_schema(), dialect, parts=("tables",)):
        create = sqlglot.parse_one(sql, read=read)
        tables[create.this.this.name] = {
            c.name: c.args["kind"].sql(read)
            for c in create.this.expressions
            if isinstance(c, sqlglot.exp.ColumnDef)
        }
    assert len(tables) == 39
    value_type, id_type, concept_type, text_type = EXPECTED_TYPES[dialect]
    assert tables["measurement"]["value_as_number"] == value_type
    assert tables["person"]["person_id"] == id_type
    assert tables["person"]["gender_concept_id"] == concept_type
    assert tables["note"]["note_text"] == text_type
    # DuckDB ignores VARCHAR lengths (it renders TEXT(50) and reads it back as TEXT); others keep them
    assert tables["note_nlp"]["offset"] in ("VARCHAR(50)", "STRING(50)", "TEXT")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_statement_parses_back(dialect):
    read = SQLGLOT_NAMES.get(dialect, dialect)
    for sql in statements(cdm_schema(), dialect):
        assert sqlglot.parse_one(sql, read=read) is not None


def test_keys_and_indexes_per_dialect():
    counts = {d: render_ddl(cdm_schema(), d) for d in DIALECTS}
    assert counts["postgresql"].count("PRIMARY KEY") == 28  # tables with a primary key in v5.4
    assert counts["postgresql"].count("FOREIGN KEY") == 176
    assert counts["postgresql"].count("CREATE INDEX") == 70
    assert counts["tsql"].count("FOREIGN KEY") == 176
    assert counts["bigquery"].count("NOT ENFORCED") == 28 + 176
    assert counts["bigquery"].count("CREATE INDEX") == 0
    assert counts["spark"].count("PRIMARY KEY") == 0
    assert "-- none: Spark SQL has neither key constraints nor indexes" in counts["spark"]
    assert counts["duckdb"].count("PRIMARY KEY") == 28  # inline
    assert counts["duckdb"].count("FOREIGN KEY") == 0


def test_quoted_reserved_column():
    assert '"offset"' in render_ddl(cdm_schema(), "postgresql")
    assert "`offset`" in render_ddl(cdm_schema(), "bigquery")


def test_unknown_dialect_is_a_user_error():
    with pytest.raises(PasserelleError, match="choose one of"):
        render_ddl(cdm_schema(), "oracle")


def test_duckdb_ddl_executes_with_keys_and_indexes(tmp_path):
    con = duckdb.connect(str(tmp_path / "ddl.duckdb"))
    for sql in statements(cdm_schema(), "duckdb"):
        con.execute(sql)
    con.execute(
        "INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date,"
        " measurement_type_concept_id, value_as_number) "
        " VALUES (1, 1, 3004249, DATE '2024-01-02', 32817, 12.5)"
    )
    assert con.execute("SELECT value_as_number FROM measurement").fetchone()[0] == 12.5  # fractions kept
    with pytest.raises(duckdb.ConstraintException):
        con.execute(
            "INSERT INTO measurement (measurement_id, person_id, measurement_concept_id,"
            " measurement_date, measurement_type_concept_id) VALUES (1, 2, 0, DATE '2024-01-02', 32817)"
        )
    indexes = con.execute("SELECT count(*) FROM duckdb_indexes()").fetchone()[0]
    assert indexes == 70


@pytest.mark.postgres
def test_postgresql_ddl_executes_on_a_real_server(postgres_url):
    import adbc_driver_postgresql.dbapi as pg

    with pg.connect(postgres_url) as con, con.cursor() as cur:
        cur.execute("CREATE SCHEMA cdm_ddl_test")
        cur.execute("SET search_path TO cdm_ddl_test")
        for sql in statements(cdm_schema(), "postgresql"):
            cur.execute(sql)
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'cdm_ddl_test'")
        assert cur.fetchone()[0] == 39
        cur.execute(
            "SELECT count(*) FROM information_schema.table_constraints WHERE table_schema = 'cdm_ddl_test'"
            " AND constraint_type = 'FOREIGN KEY'"
        )
        assert cur.fetchone()[0] == 176
        cur.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = 'cdm_ddl_test'"
            " AND table_name = 'measurement' AND column_name = 'value_as_number'"
        )
        assert cur.fetchone()[0] == "double precision"
        cur.execute("DROP SCHEMA cdm_ddl_test CASCADE")
        con.commit()
