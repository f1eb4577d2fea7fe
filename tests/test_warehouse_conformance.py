"""One conformance suite for the three targets (DuckDB file, Parquet folder, PostgreSQL).

Every test loads hand-built MappedBatches (persons, visits, heart-rate and blood-pressure
measurements with their real OMOP concept ids) through ``load_batch`` and reads the result back from
the target under test, the way an OHDSI tool would. What a target cannot do is marked in the
parameter list with its reason, not hidden.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipelines.cdm.spec import cdm_schema
from pipelines.mapping.batch import MappedBatch
from pipelines.warehouse import Target, load_batch, open_targets

MALE, FEMALE = 8507, 8532  # Gender
OUTPATIENT = 9202  # Visit
EHR = 32817  # Type Concept "EHR"
HEART_RATE, SYSTOLIC_BP = 3027018, 3004249  # LOINC 8867-4, 8480-6
PER_MINUTE, MM_HG = 8541, 8876  # UCUM /min, mm[Hg]


@dataclass
class Backend:
    name: str
    targets: list[Target]
    warehouse: Path  # the DuckDB system of record (id map, lineage, quarantine)
    read_table: Callable[[str], pl.DataFrame]
    read_columns: Callable[[], dict[str, list[str]]]  # {table name: column names in order}
    read_primary_key: Callable[[str], list[str]]  # declared primary-key columns of a table

    def read(self, table: str) -> pl.DataFrame:
        frame = self.read_table(table)
        key = cdm_schema().table(table).column_names[0]
        return frame.sort(key)

    def side(self, sql: str) -> pl.DataFrame:
        with duckdb.connect(str(self.warehouse), read_only=True) as con:
            return con.sql(sql).pl()


def _duckdb_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "omop.duckdb"

    def read(table: str) -> pl.DataFrame:
        with duckdb.connect(str(path), read_only=True) as con:
            return con.sql(f"SELECT * FROM main.{table}").pl()

    def columns() -> dict[str, list[str]]:
        with duckdb.connect(str(path), read_only=True) as con:
            found = con.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
            ).fetchall()
        return _group(found)

    def primary_key(table: str) -> list[str]:
        with duckdb.connect(str(path), read_only=True) as con:
            found = con.execute(
                "SELECT constraint_column_names FROM duckdb_constraints() "
                "WHERE schema_name = 'main' AND table_name = ? AND constraint_type = 'PRIMARY KEY'",
                [table],
            ).fetchall()
        return list(found[0][0]) if found else []

    return Backend("duckdb", open_targets(path, None, None), path, read, columns, primary_key)


def _parquet_backend(tmp_path: Path) -> Backend:
    folder = tmp_path / "cdm"

    def read(table: str) -> pl.DataFrame:
        return pl.read_parquet(folder / table / "*.parquet")

    def columns() -> dict[str, list[str]]:
        return {
            table.name: pl.read_parquet_schema(folder / table.name / "part-0.parquet").names()
            for table in cdm_schema().tables
        }

    def primary_key(table: str) -> list[str]:
        raise NotImplementedError("Parquet has no key constraints")

    targets = open_targets(None, folder, None)
    return Backend("parquet", targets, targets[0].path, read, columns, primary_key)


def _postgres_backend(tmp_path: Path, url: str) -> Backend:
    import adbc_driver_postgresql.dbapi as adbc

    schema = f"cdm_{uuid.uuid4().hex[:8]}"

    def query(sql: str) -> pl.DataFrame:
        with adbc.connect(url) as con, con.cursor() as cur:
            cur.execute(sql)
            return pl.from_arrow(cur.fetch_arrow_table())

    def read(table: str) -> pl.DataFrame:
        return query(f"SELECT * FROM {schema}.{table}")

    def columns() -> dict[str, list[str]]:
        found = query(
            "SELECT table_name, column_name FROM information_schema.columns "
            f"WHERE table_schema = '{schema}' ORDER BY table_name, ordinal_position"
        )
        return _group(found.rows())

    def primary_key(table: str) -> list[str]:
        found = query(
            "SELECT k.column_name FROM information_schema.table_constraints c "
            "JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name) "
            f"WHERE c.table_schema = '{schema}' AND c.table_name = '{table}' "
            "AND c.constraint_type = 'PRIMARY KEY' ORDER BY k.ordinal_position"
        )
        return found["column_name"].to_list()

    path = tmp_path / "omop.duckdb"
    targets = open_targets(path, None, f"{url}?schema={schema}")
    return Backend("postgres", targets, path, read, columns, primary_key)


def _group(rows: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for table, column in rows:
        grouped.setdefault(table, []).append(column)
    return grouped


def _make_backend(kind: str, tmp_path: Path, request) -> Backend:
    if kind == "duckdb":
        return _duckdb_backend(tmp_path)
    if kind == "parquet":
        return _parquet_backend(tmp_path)
    return _postgres_backend(tmp_path, request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["duckdb", "parquet", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request, tmp_path: Path) -> Backend:
    return _make_backend(request.param, tmp_path, request)


def _lineage(n: int, record_type: str, file: str = "bundle-1.json", first: int = 0) -> dict[str, list]:
    return {
        "_source_format": ["fhir"] * n,
        "_source_file": [file] * n,
        "_position": list(range(first, first + n)),
        "_record_type": [record_type] * n,
        "_record_version": ["1"] * n,
    }


def persons(*ids: str, file: str = "bundle-1.json") -> pl.DataFrame:
    keys = [f"fhir|Patient/{i}" for i in ids]
    return pl.DataFrame(
        {
            "_key": keys,
            "_record_key": keys,
            "_record_id": list(ids),
            "gender_concept_id": [MALE if n % 2 == 0 else FEMALE for n in range(len(ids))],
            "year_of_birth": [1950 + 7 * n for n in range(len(ids))],
            "birth_datetime": [dt.datetime(1950 + 7 * n, 3, 14, 8, 30) for n in range(len(ids))],
            "race_concept_id": [0] * len(ids),
            "ethnicity_concept_id": [0] * len(ids),
            "person_source_value": list(ids),
            **_lineage(len(ids), "Patient", file),
        }
    )


def visits(*pairs: tuple[str, str], file: str = "bundle-1.json") -> pl.DataFrame:
    keys = [f"fhir|Encounter/{v}" for v, _ in pairs]
    return pl.DataFrame(
        {
            "_key": keys,
            "_record_key": keys,
            "_record_id": [v for v, _ in pairs],
            "_ref__person_id": [f"fhir|Patient/{p}" for _, p in pairs],
            "visit_concept_id": [OUTPATIENT] * len(pairs),
            "visit_start_date": [dt.date(2024, 5, 2)] * len(pairs),
            "visit_end_date": [dt.date(2024, 5, 2)] * len(pairs),
            "visit_type_concept_id": [EHR] * len(pairs),
            "visit_source_value": [v for v, _ in pairs],
            **_lineage(len(pairs), "Encounter", file, first=100),
        }
    )


def measurements(rows: list[tuple], file: str = "bundle-1.json") -> pl.DataFrame:
    """rows: (observation id, patient id, visit id or None, concept, value, unit concept)."""
    keys = [f"fhir|Observation/{r[0]}" for r in rows]
    return pl.DataFrame(
        {
            "_key": keys,
            "_record_key": keys,
            "_record_id": [r[0] for r in rows],
            "_ref__person_id": [f"fhir|Patient/{r[1]}" for r in rows],
            "_ref__visit_occurrence_id": [f"fhir|Encounter/{r[2]}" if r[2] else None for r in rows],
            "measurement_concept_id": [r[3] for r in rows],
            "measurement_date": [dt.date(2024, 5, 2)] * len(rows),
            "measurement_datetime": [dt.datetime(2024, 5, 2, 9, 15)] * len(rows),
            "measurement_type_concept_id": [EHR] * len(rows),
            "value_as_number": [r[4] for r in rows],
            "unit_concept_id": [r[5] for r in rows],
            "measurement_source_value": ["8867-4" if r[3] == HEART_RATE else "8480-6" for r in rows],
            **_lineage(len(rows), "Observation", file, first=200),
        },
        schema_overrides={"value_as_number": pl.Float64},
    )


def first_batch() -> MappedBatch:
    return MappedBatch(
        tables={
            "person": persons("anna", "ben"),
            "visit_occurrence": visits(("enc-1", "anna"), ("enc-2", "ben")),
            "measurement": measurements(
                [
                    ("hr-1", "anna", "enc-1", HEART_RATE, 72.0, PER_MINUTE),
                    ("bp-1", "anna", "enc-1", SYSTOLIC_BP, 128.0, MM_HG),
                    ("hr-2", "ben", "enc-2", HEART_RATE, 64.0, PER_MINUTE),
                ]
            ),
        }
    )


def _ids_by(frame: pl.DataFrame, key: str, id_column: str) -> dict:
    return dict(zip(frame[key].to_list(), frame[id_column].to_list(), strict=True))


def test_tables_have_exactly_the_cdm_columns(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=1)
    assert backend.read_columns() == {t.name: t.column_names for t in cdm_schema().tables}
    person = backend.read("person")
    assert person.schema["person_id"] == pl.Int64
    assert person.schema["gender_concept_id"] == pl.Int32
    assert person.schema["birth_datetime"] == pl.Datetime("us")
    assert backend.read("measurement").schema["measurement_date"] == pl.Date


def test_rows_arrive_with_their_ids_and_resolved_references(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=1)
    person = backend.read("person")
    assert person.select("person_id", "person_source_value", "gender_concept_id").rows() == [
        (1, "anna", MALE),
        (2, "ben", FEMALE),
    ]
    visit = backend.read("visit_occurrence")
    assert visit.select("visit_occurrence_id", "person_id", "visit_concept_id").rows() == [
        (1, 1, OUTPATIENT),
        (2, 2, OUTPATIENT),
    ]
    measurement = backend.read("measurement")
    assert measurement.select(
        "person_id", "visit_occurrence_id", "measurement_concept_id", "value_as_number", "unit_concept_id"
    ).sort("person_id", "measurement_concept_id").rows() == [
        (1, 1, SYSTOLIC_BP, 128.0, MM_HG),
        (1, 1, HEART_RATE, 72.0, PER_MINUTE),
        (2, 2, HEART_RATE, 64.0, PER_MINUTE),
    ]


def test_ids_are_stable_across_runs_and_new_keys_get_the_next_id(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=1)
    before = _ids_by(backend.read("person"), "person_source_value", "person_id")
    later = MappedBatch(tables={"person": persons("carl", "anna", file="bundle-2.json")})
    report = load_batch(later, backend.targets, run_id=2)
    after = _ids_by(backend.read("person"), "person_source_value", "person_id")
    assert after == {"anna": before["anna"], "ben": before["ben"], "carl": 3}
    assert report.new_ids == {"person": 1}


def test_loading_the_same_batch_twice_changes_nothing(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=1)
    first = {t: backend.read(t) for t in ("person", "visit_occurrence", "measurement")}
    ids = backend.side("SELECT * FROM passerelle.id_map ORDER BY omop_table, omop_id")
    report = load_batch(first_batch(), backend.targets, run_id=2)
    for table, frame in first.items():
        assert backend.read(table).equals(frame), table
    assert backend.side("SELECT * FROM passerelle.id_map ORDER BY omop_table, omop_id").equals(ids)
    assert report.new_ids == {"person": 0, "visit_occurrence": 0, "measurement": 0}
    assert report.removed == report.inserted == {"person": 2, "visit_occurrence": 2, "measurement": 3}


def test_a_new_version_of_a_record_replaces_its_rows_only(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=1)
    before = backend.read("measurement")
    corrected = MappedBatch(
        tables={
            "measurement": measurements(
                [("hr-1", "anna", "enc-1", HEART_RATE, 78.0, PER_MINUTE)], file="bundle-2.json"
            )
        }
    )
    report = load_batch(corrected, backend.targets, run_id=2)
    after = backend.read("measurement")
    assert after.height == 3
    changed = after.filter(pl.col("value_as_number") == 78.0)
    old = before.filter(pl.col("value_as_number") == 72.0)
    assert changed["measurement_id"].to_list() == old["measurement_id"].to_list()
    untouched = before.filter(pl.col("value_as_number") != 72.0)
    assert after.filter(pl.col("value_as_number") != 78.0).equals(untouched)
    assert report.removed == {"measurement": 1} and report.inserted == {"measurement": 1}


def test_deleted_records_lose_their_rows_and_others_keep_theirs(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=1)
    before = backend.read("measurement")
    deletion = MappedBatch(
        deletions=pl.DataFrame(
            {
                "_record_key": ["fhir|Observation/bp-1", "fhir|Observation/never-loaded"],
                "_source_format": ["fhir", "fhir"],
                "_source_file": ["Observation-deleted.ndjson"] * 2,
            }
        )
    )
    report = load_batch(deletion, backend.targets, run_id=2)
    after = backend.read("measurement")
    assert after.equals(before.filter(pl.col("measurement_concept_id") != SYSTOLIC_BP))
    assert report.records_deleted == 1 and report.removed == {"measurement": 1}
    left = backend.side("SELECT count(*) AS n FROM passerelle.lineage WHERE record_key LIKE '%bp-1'")
    assert left["n"][0] == 0


def test_rows_pointing_at_a_deleted_person_leave_the_cdm_for_quarantine(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=1)
    deletion = MappedBatch(
        deletions=pl.DataFrame(
            {
                "_record_key": ["fhir|Patient/ben"],
                "_source_format": ["fhir"],
                "_source_file": ["deleted.ndjson"],
            }
        )
    )
    with duckdb.connect(str(backend.warehouse)) as con:  # as `passerelle derive` leaves it
        con.execute(
            "INSERT INTO observation_period VALUES (7, 2, DATE '2024-05-02', DATE '2024-07-01', 32817)"
        )
    report = load_batch(deletion, backend.targets, run_id=2)
    assert backend.read("person")["person_source_value"].to_list() == ["anna"]
    assert backend.read("observation_period").is_empty()
    assert backend.read("visit_occurrence")["visit_source_value"].to_list() == ["enc-1"]
    assert backend.read("measurement")["person_id"].to_list() == [1, 1]
    assert report.orphaned == {"observation_period": 1, "visit_occurrence": 1, "measurement": 1}
    assert report.quarantined == {"orphaned_reference": 2}
    kept = backend.side("SELECT run_id, record_id, reason_code, reason FROM passerelle.quarantine ORDER BY 2")
    assert kept.rows() == [
        (
            2,
            "enc-2",
            "orphaned_reference",
            "visit_occurrence: person_id: the person record it refers to was deleted",
        ),
        (
            2,
            "hr-2",
            "orphaned_reference",
            "measurement: person_id: the person record it refers to was deleted",
        ),
    ]


def test_references_resolve_to_rows_loaded_by_an_earlier_run(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=1)
    follow_up = MappedBatch(
        tables={
            "measurement": measurements(
                [("hr-3", "ben", "enc-2", HEART_RATE, 70.0, PER_MINUTE)], file="bundle-2.json"
            )
        }
    )
    load_batch(follow_up, backend.targets, run_id=2)
    row = backend.read("measurement").filter(pl.col("value_as_number") == 70.0)
    assert row.select("measurement_id", "person_id", "visit_occurrence_id").rows() == [(4, 2, 2)]


def test_dangling_required_reference_goes_to_quarantine_and_optional_becomes_null(backend: Backend) -> None:
    batch = first_batch()
    batch.tables["measurement"] = pl.concat(
        [
            batch.tables["measurement"],
            measurements(
                [
                    ("hr-9", "nobody", None, HEART_RATE, 90.0, PER_MINUTE),
                    ("hr-10", "ben", "enc-unknown", HEART_RATE, 66.0, PER_MINUTE),
                ],
                file="bundle-9.json",
            ),
        ]
    )
    report = load_batch(batch, backend.targets, run_id=1)
    measurement = backend.read("measurement")
    assert 90.0 not in measurement["value_as_number"].to_list()
    orphan = measurement.filter(pl.col("value_as_number") == 66.0)
    assert orphan.select("person_id", "visit_occurrence_id").rows() == [(2, None)]
    assert report.quarantined == {"dangling_reference": 1}
    assert report.nulled_references == {"measurement.visit_occurrence_id": 1}
    quarantine = backend.side("SELECT * FROM passerelle.quarantine")
    assert quarantine.select("source_file", "position", "record_type", "record_id", "reason_code").rows() == [
        ("bundle-9.json", 200, "Observation", "hr-9", "dangling_reference")
    ]
    reason = quarantine["reason"][0]
    assert "person" in reason and "nobody" not in reason


def test_every_row_leads_back_to_its_file_and_position(backend: Backend) -> None:
    load_batch(first_batch(), backend.targets, run_id=7)
    lineage = backend.side("SELECT * FROM passerelle.lineage WHERE omop_table = 'measurement'")
    measurement = backend.read("measurement").join(
        lineage, left_on="measurement_id", right_on="omop_id", how="left"
    )
    assert measurement.select(
        "measurement_source_value", "source_file", "position", "record_id", "run_id"
    ).sort("position").rows() == [
        ("8867-4", "bundle-1.json", 200, "hr-1", 7),
        ("8480-6", "bundle-1.json", 201, "bp-1", 7),
        ("8867-4", "bundle-1.json", 202, "hr-2", 7),
    ]


@pytest.mark.parametrize(
    "kind",
    [
        "duckdb",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param(
            "parquet",
            marks=pytest.mark.xfail(
                reason="notimpl: Parquet files carry no key constraints",
                raises=NotImplementedError,
                strict=True,
            ),
        ),
    ],
)
def test_primary_keys_are_declared(kind: str, tmp_path: Path, request) -> None:
    backend = _make_backend(kind, tmp_path, request)
    load_batch(first_batch(), backend.targets, run_id=1)
    assert backend.read_primary_key("measurement") == ["measurement_id"]
    assert backend.read_primary_key("death") == []


_SAMPLE_VALUES = {
    "bigint": "CAST(9007199254740991 AS BIGINT)",  # 2^53 - 1: the largest id R reads exactly
    "integer": "CAST(2000000001 AS INTEGER)",
    "float": "CAST(37.25 AS DOUBLE)",
    "date": "DATE '2024-02-29'",
    "datetime": "TIMESTAMP '2024-02-29 23:59:58.123456'",
    "boolean": "TRUE",
}


def _sample_value(column) -> str:
    if column.type in _SAMPLE_VALUES:
        return _SAMPLE_VALUES[column.type]
    return "'" + ("Zürich ✓ " * 30)[: column.varchar_length or 200] + "'"  # full CDM length, non-ASCII


@pytest.mark.parametrize("kind", ["parquet", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_every_cdm_table_round_trips_with_its_types(kind: str, tmp_path: Path, request) -> None:
    """Any row DuckDB holds (loaded, derived or vocabulary) comes out of the export unchanged."""
    backend = _make_backend(kind, tmp_path, request)
    load_batch(MappedBatch(), backend.targets, run_id=1, export=False)
    with duckdb.connect(str(backend.warehouse)) as con:
        for table in cdm_schema().tables:
            values = ", ".join(_sample_value(c) for c in table.columns)
            con.execute(f"INSERT INTO main.{table.name} VALUES ({values})")
        expected = {t.name: con.sql(f"SELECT * FROM main.{t.name}").pl() for t in cdm_schema().tables}
    load_batch(MappedBatch(), backend.targets, run_id=2)
    for name, frame in expected.items():
        assert backend.read(name).equals(frame), name
