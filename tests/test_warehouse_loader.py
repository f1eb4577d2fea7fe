"""The loader's own rules, on a DuckDB warehouse: the MappedBatch contract, what goes to quarantine and
why, text cut to CDM lengths, rows without a primary key, the id ceiling, the run log, and a real
mapper's batch from the shared FHIR samples."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import duckdb
import polars as pl
import pytest

from pipelines.errors import WarehouseError
from pipelines.mapping.batch import MappedBatch
from pipelines.warehouse import load_batch, load_batches, open_targets
from tests.test_warehouse_conformance import (
    HEART_RATE,
    OUTPATIENT,
    PER_MINUTE,
    first_batch,
    measurements,
    persons,
    visits,
)


def _query(path: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


def _load(path: Path, batch: MappedBatch, run_id: int | None = None):
    return load_batch(batch, open_targets(path, None, None), run_id=run_id)


def test_a_table_outside_the_cdm_is_refused(warehouse_path: Path) -> None:
    batch = MappedBatch(tables={"vital_signs": persons("anna")})
    with pytest.raises(WarehouseError, match=re.escape("'vital_signs' is not an OMOP CDM v5.4 table")):
        _load(warehouse_path, batch)


def test_columns_outside_the_contract_are_refused_by_name(warehouse_path: Path) -> None:
    extra = first_batch()
    extra.tables["measurement"] = extra.tables["measurement"].with_columns(pl.lit("x").alias("loinc_code"))
    with pytest.raises(WarehouseError, match="batch table measurement: columns loinc_code are neither"):
        _load(warehouse_path, extra)
    concept_ref = first_batch()
    concept_ref.tables["measurement"] = concept_ref.tables["measurement"].with_columns(
        pl.lit("x").alias("_ref__unit_concept_id")
    )
    with pytest.raises(WarehouseError, match="_ref__unit_concept_id"):
        _load(warehouse_path, concept_ref)
    own_key = first_batch()
    own_key.tables["person"] = own_key.tables["person"].with_columns(pl.lit(7).alias("person_id"))
    with pytest.raises(WarehouseError, match="primary key is allocated by the loader"):
        _load(warehouse_path, own_key)
    no_lineage = first_batch()
    no_lineage.tables["person"] = no_lineage.tables["person"].drop("_source_file")
    with pytest.raises(
        WarehouseError, match="batch table person: bookkeeping columns _source_file are missing"
    ):
        _load(warehouse_path, no_lineage)


def test_empty_frames_of_any_shape_add_nothing(warehouse_path: Path) -> None:
    batch = first_batch()
    batch.tables["observation"] = pl.DataFrame()
    batch.tables["condition_occurrence"] = pl.DataFrame(schema={"_key": pl.Utf8})
    report = _load(warehouse_path, batch)
    assert report.inserted == {"person": 2, "visit_occurrence": 2, "measurement": 3}


def test_bad_and_missing_values_go_to_quarantine_with_the_column_named(warehouse_path: Path) -> None:
    batch = first_batch()
    bad = measurements(
        [
            ("hr-7", "anna", None, HEART_RATE, 81.0, PER_MINUTE),
            ("hr-8", "anna", None, None, 82.0, PER_MINUTE),
        ],
        file="bundle-7.json",
    ).with_columns(
        pl.Series("measurement_date", ["2024-13-45", "2024-05-03"]),
        pl.col("measurement_concept_id").cast(pl.Int64),
    )
    batch.tables["measurement"] = pl.concat([batch.tables["measurement"], bad], how="diagonal_relaxed")
    report = _load(warehouse_path, batch)
    assert report.quarantined == {"invalid_value": 1, "missing_required_value": 1}
    assert report.inserted["measurement"] == 3
    rows = _query(
        warehouse_path,
        "SELECT record_id, position, reason_code, reason FROM passerelle.quarantine ORDER BY record_id",
    )
    assert rows == [
        ("hr-7", 200, "invalid_value", "measurement: measurement_date: the value is not a valid date"),
        (
            "hr-8",
            201,
            "missing_required_value",
            "measurement: measurement_concept_id: required by CDM v5.4 but empty",
        ),
    ]


def test_a_row_without_a_source_key_goes_to_quarantine(warehouse_path: Path) -> None:
    batch = first_batch()
    batch.tables["person"] = batch.tables["person"].with_columns(
        pl.when(pl.col("_record_id") == "ben").then(None).otherwise(pl.col("_key")).alias("_key")
    )
    report = _load(warehouse_path, batch)
    assert report.inserted == {"person": 1, "visit_occurrence": 1, "measurement": 2}
    assert report.quarantined == {"missing_key": 1, "dangling_reference": 2}
    assert _query(
        warehouse_path,
        "SELECT record_id, reason FROM passerelle.quarantine WHERE reason_code = 'missing_key'",
    ) == [("ben", "person: the mapper gave the row no source key")]


def test_a_later_row_with_the_same_source_key_wins(warehouse_path: Path) -> None:
    batch = first_batch()
    again = measurements([("hr-1", "anna", "enc-1", HEART_RATE, 75.0, PER_MINUTE)], file="bundle-1b.json")
    batch.tables["measurement"] = pl.concat([batch.tables["measurement"], again])
    report = _load(warehouse_path, batch)
    assert report.quarantined == {"duplicate_key": 1}
    values = _query(
        warehouse_path, f"SELECT value_as_number FROM measurement WHERE measurement_concept_id = {HEART_RATE}"
    )
    assert sorted(v for (v,) in values) == [64.0, 75.0]


def test_text_longer_than_its_cdm_column_is_cut_and_counted(warehouse_path: Path) -> None:
    batch = first_batch()
    batch.tables["measurement"] = batch.tables["measurement"].with_columns(
        pl.Series("measurement_source_value", ["LOINC 8867-4 " * 6, "8480-6", "8867-4"])
    )
    report = _load(warehouse_path, batch)
    assert report.truncated == {"measurement.measurement_source_value": 1}
    lengths = _query(warehouse_path, "SELECT max(length(measurement_source_value)) FROM measurement")
    assert lengths == [(50,)]


def test_a_self_reference_resolves_within_the_batch(warehouse_path: Path) -> None:
    batch = first_batch()
    follow_up = visits(("enc-3", "anna")).with_columns(
        pl.lit("fhir|Encounter/enc-1").alias("_ref__preceding_visit_occurrence_id")
    )
    batch.tables["visit_occurrence"] = pl.concat(
        [batch.tables["visit_occurrence"], follow_up], how="diagonal_relaxed"
    )
    _load(warehouse_path, batch)
    rows = _query(
        warehouse_path,
        "SELECT visit_occurrence_id, preceding_visit_occurrence_id FROM visit_occurrence ORDER BY 1",
    )
    assert rows == [(1, None), (2, None), (3, 1)]


def _death(person: str, day: dt.date) -> pl.DataFrame:
    key = f"fhir|Patient/{person}"
    return pl.DataFrame(
        {
            "_key": [f"{key}|deceased"],
            "_record_key": [key],
            "_ref__person_id": [key],
            "death_date": [day],
            "death_type_concept_id": [32817],
            "_source_format": ["fhir"],
            "_source_file": ["patients.ndjson"],
            "_position": [3],
            "_record_type": ["Patient"],
            "_record_id": [person],
        }
    )


def test_rows_without_a_primary_key_are_replaced_and_deleted_with_their_record(warehouse_path: Path) -> None:
    people = persons("anna", "ben")
    _load(
        warehouse_path,
        MappedBatch(
            tables={
                "person": people,
                "death": pl.concat([_death("anna", dt.date(2024, 6, 1)), _death("ben", dt.date(2024, 7, 9))]),
            }
        ),
    )
    corrected = people.filter(pl.col("_record_id") == "anna")
    _load(
        warehouse_path,
        MappedBatch(tables={"person": corrected, "death": _death("anna", dt.date(2024, 6, 2))}),
    )
    assert _query(warehouse_path, "SELECT person_id, death_date FROM death ORDER BY 1") == [
        (1, dt.date(2024, 6, 2)),
        (2, dt.date(2024, 7, 9)),
    ]
    deletion = pl.DataFrame(
        {"_record_key": ["fhir|Patient/ben"], "_source_format": ["fhir"], "_source_file": ["deleted.ndjson"]}
    )
    report = _load(warehouse_path, MappedBatch(deletions=deletion))
    assert report.removed == {"person": 1, "death": 1}
    assert _query(warehouse_path, "SELECT person_id FROM death") == [(1,)]
    assert _query(warehouse_path, "SELECT count(*) FROM passerelle.lineage WHERE omop_table = 'death'") == [
        (1,)
    ]


def test_ids_never_pass_2_to_the_53_and_a_failed_load_changes_nothing(warehouse_path: Path) -> None:
    _load(warehouse_path, MappedBatch(tables={"person": persons("anna")}), run_id=1)
    with duckdb.connect(str(warehouse_path)) as con:
        con.execute("UPDATE passerelle.id_map SET omop_id = 9007199254740990")
        con.execute("UPDATE person SET person_id = 9007199254740990")
    with pytest.raises(WarehouseError, match="person: ids would pass 2\\^53 - 1"):
        _load(warehouse_path, MappedBatch(tables={"person": persons("anna", "ben", "carl")}), run_id=2)
    assert _query(warehouse_path, "SELECT person_id, person_source_value FROM person") == [
        (9007199254740990, "anna")
    ]
    assert _query(warehouse_path, "SELECT run_id FROM passerelle.run_log") == [(1,)]


def test_the_run_log_holds_the_counts_and_mapper_quarantine_is_kept(warehouse_path: Path) -> None:
    batch = first_batch()
    batch.quarantine = pl.DataFrame(
        {
            "source_format": ["fhir"],
            "source_file": ["bundle-1.json"],
            "position": [12],
            "record_type": ["Observation"],
            "record_id": ["broken-1"],
            "reason_code": ["missing_subject"],
            "reason": ["The Observation names no patient."],
        }
    )
    report = _load(warehouse_path, batch, run_id=41)
    assert report.quarantined == {"missing_subject": 1}
    [(run_id, command, status, summary)] = _query(
        warehouse_path, "SELECT run_id, command, status, summary FROM passerelle.run_log"
    )
    assert (run_id, command, status) == (41, "load", "succeeded")
    assert json.loads(summary)["inserted"] == {"person": 2, "visit_occurrence": 2, "measurement": 3}
    assert _query(warehouse_path, "SELECT run_id, position, reason_code FROM passerelle.quarantine") == [
        (41, 12, "missing_subject")
    ]
    assert _load(warehouse_path, MappedBatch()).run_id == 42


def test_visits_keep_their_concepts(warehouse_path: Path) -> None:
    _load(warehouse_path, first_batch())
    assert _query(warehouse_path, "SELECT DISTINCT visit_concept_id FROM visit_occurrence") == [(OUTPATIENT,)]


def test_a_real_fhir_batch_loads_completely_and_twice_identically(shared: Path, warehouse_path: Path) -> None:
    from pipelines.sources.fhir import map_fhir
    from pipelines.vocab import load_vocabulary

    vocab = load_vocabulary()
    batch = map_fhir([shared / "samples" / "fhir" / "synthea_r4_bundles"], vocab)
    rows_in = {name: frame.height for name, frame in batch.tables.items()}
    first = load_batch(batch, open_targets(warehouse_path, None, None), vocab=vocab)
    loader_quarantine = sum(first.quarantined.values()) - batch.quarantine.height
    assert sum(first.inserted.values()) + loader_quarantine == sum(rows_in.values())
    tables = sorted(rows_in)
    snapshot = {t: _query(warehouse_path, f"SELECT * FROM {t} ORDER BY ALL") for t in tables}
    second = load_batch(batch, open_targets(warehouse_path, None, None), vocab=vocab)
    assert second.inserted == first.inserted and set(second.new_ids.values()) == {0}
    for t in tables:
        assert _query(warehouse_path, f"SELECT * FROM {t} ORDER BY ALL") == snapshot[t], t
    concepts = vocab.concept.select(pl.len()).collect().item()
    assert _query(warehouse_path, "SELECT count(*) FROM concept") == [(concepts,)]
    [(version,)] = _query(
        warehouse_path, f"SELECT vocabulary_version FROM passerelle.run_log WHERE run_id = {second.run_id}"
    )
    assert version == vocab.version


def test_a_new_version_with_fewer_rows_leaves_only_those(warehouse_path: Path) -> None:
    """A blood-pressure Observation with two components, then a version with the systolic one only."""
    diastolic = 3012888  # LOINC 8462-4

    def blood_pressure(components: list[tuple[str, int, float]], file: str) -> pl.DataFrame:
        frame = measurements(
            [("bp-5", "anna", "enc-1", concept, value, 8876) for _, concept, value in components], file=file
        )
        return frame.with_columns(
            pl.Series("_key", [f"fhir|Observation/bp-5|component/{c}" for c, _, _ in components]),
        )

    batch = first_batch()
    both = blood_pressure([("0", 3004249, 128.0), ("1", diastolic, 84.0)], "bundle-1.json")
    batch.tables["measurement"] = pl.concat([batch.tables["measurement"], both])
    _load(warehouse_path, batch)
    ids = dict(_query(warehouse_path, "SELECT value_as_number, measurement_id FROM measurement"))
    systolic_only = blood_pressure([("0", 3004249, 131.0)], "bundle-2.json")
    report = _load(warehouse_path, MappedBatch(tables={"measurement": systolic_only}))
    assert report.removed == {"measurement": 2} and report.inserted == {"measurement": 1}
    rows = _query(
        warehouse_path,
        "SELECT measurement_id, measurement_concept_id, value_as_number FROM measurement ORDER BY 1",
    )
    assert [r for r in rows if r[1] == diastolic] == []
    assert (ids[128.0], 3004249, 131.0) in rows
    assert len(rows) == 4


def test_a_record_deleted_and_brought_by_one_batch_keeps_the_rows_brought(warehouse_path: Path) -> None:
    _load(warehouse_path, first_batch())
    first_id = _query(
        warehouse_path,
        "SELECT omop_id FROM passerelle.lineage WHERE omop_table = 'measurement' AND record_id = 'hr-1'",
    )
    assert len(first_id) == 1
    batch = MappedBatch(
        tables={"measurement": measurements([("hr-1", "anna", "enc-1", HEART_RATE, 70.0, PER_MINUTE)])},
        deletions=pl.DataFrame(
            {
                "_record_key": ["fhir|Observation/hr-1"],
                "_source_format": ["fhir"],
                "_source_file": ["tx.json"],
            }
        ),
    )
    report = _load(warehouse_path, batch)
    assert report.records_deleted == 1 and report.inserted == {"measurement": 1}
    assert _query(
        warehouse_path, "SELECT measurement_id, value_as_number FROM measurement WHERE value_as_number = 70"
    ) == [(first_id[0][0], 70.0)]  # hr-1 keeps the id it got first


def _load_run(path: Path, *batches: MappedBatch, run_id: int | None = None):
    return load_batches(iter(batches), open_targets(path, None, None), run_id=run_id)


def test_a_run_of_several_batches_resolves_references_to_a_later_batch(warehouse_path: Path) -> None:
    """Bulk order: the Observations (and an Encounter) come before the Patient file that they need."""
    first = MappedBatch(
        tables={
            "measurement": measurements(
                [
                    ("hr-1", "anna", "enc-1", HEART_RATE, 72.0, PER_MINUTE),
                    ("hr-2", "ben", None, HEART_RATE, 64.0, PER_MINUTE),
                    ("hr-3", "nobody", None, HEART_RATE, 99.0, PER_MINUTE),
                    ("hr-4", "anna", "enc-nowhere", HEART_RATE, 70.0, PER_MINUTE),
                ]
            ),
            "visit_occurrence": visits(("enc-1", "anna")),
        },
        inputs={"Observation": 4, "Encounter": 1},
    )
    second = MappedBatch(tables={"person": persons("anna", "ben")}, inputs={"Patient": 2})
    report = _load_run(warehouse_path, first, second)
    assert report.inserted == {"person": 2, "visit_occurrence": 1, "measurement": 3}
    assert report.quarantined == {"dangling_reference": 1}
    assert report.nulled_references == {"measurement.visit_occurrence_id": 1}
    assert report.records_loaded == 7 and report.new_ids == {
        "person": 2,
        "visit_occurrence": 1,
        "measurement": 4,
    }
    rows = _query(
        warehouse_path,
        """SELECT m.value_as_number, p.person_source_value, v.visit_source_value FROM measurement m
           JOIN person p USING (person_id) LEFT JOIN visit_occurrence v USING (visit_occurrence_id)
           ORDER BY 1""",
    )
    assert rows == [(64.0, "ben", None), (70.0, "anna", None), (72.0, "anna", "enc-1")]
    assert _query(warehouse_path, "SELECT record_id, reason_code FROM passerelle.quarantine") == [
        ("hr-3", "dangling_reference")
    ]
    assert _query(warehouse_path, "SELECT count(*), count(DISTINCT run_id) FROM passerelle.lineage") == [
        (6, 1)
    ]
    [(summary,)] = _query(warehouse_path, "SELECT summary FROM passerelle.run_log")
    assert json.loads(summary)["inserted"] == report.inserted


def test_a_run_of_several_batches_gives_the_rows_of_one_batch(warehouse_path: Path, tmp_path: Path) -> None:
    whole = first_batch()
    _load(warehouse_path, whole)
    split = tmp_path / "split.duckdb"
    tables = whole.tables
    _load_run(
        split,
        MappedBatch(tables={"measurement": tables["measurement"]}),
        MappedBatch(tables={"visit_occurrence": tables["visit_occurrence"]}),
        MappedBatch(tables={"person": tables["person"]}),
    )
    for table in ("person", "visit_occurrence", "measurement"):
        columns = "* EXCLUDE (" + ("person_id)" if table == "person" else f"{table}_id, person_id)")
        sql = f"SELECT {columns} FROM {table} ORDER BY ALL"
        assert _query(split, sql) == _query(warehouse_path, sql), table
    keys = (
        "SELECT p.person_source_value, m.value_as_number FROM measurement m JOIN person p USING (person_id)"
    )
    assert sorted(_query(split, keys)) == sorted(_query(warehouse_path, keys))


def test_a_record_brought_again_by_a_later_batch_of_the_run_keeps_the_later_copy(
    warehouse_path: Path,
) -> None:
    again = measurements([("hr-1", "anna", "enc-1", HEART_RATE, 75.0, PER_MINUTE)], file="bundle-9.json")
    report = _load_run(warehouse_path, first_batch(), MappedBatch(tables={"measurement": again}))
    assert report.inserted == {"person": 2, "visit_occurrence": 2, "measurement": 4}
    assert report.removed == {"measurement": 1}
    assert _query(
        warehouse_path,
        f"SELECT value_as_number FROM measurement WHERE measurement_concept_id = {HEART_RATE} ORDER BY 1",
    ) == [(64.0,), (75.0,)]
    assert _query(warehouse_path, "SELECT source_file FROM passerelle.lineage WHERE record_id = 'hr-1'") == [
        ("bundle-9.json",)
    ]


def test_a_record_brought_by_one_batch_and_deleted_by_a_later_one_keeps_the_rows_brought(
    warehouse_path: Path,
) -> None:
    _load(warehouse_path, first_batch())
    first_id = _query(
        warehouse_path,
        "SELECT omop_id FROM passerelle.lineage WHERE omop_table = 'measurement' AND record_id = 'hr-1'",
    )
    brought = MappedBatch(
        tables={"measurement": measurements([("hr-1", "anna", "enc-1", HEART_RATE, 70.0, PER_MINUTE)])}
    )
    deleted = MappedBatch(
        deletions=pl.DataFrame(
            {
                "_record_key": ["fhir|Observation/hr-1"],
                "_source_format": ["fhir"],
                "_source_file": ["tx.json"],
            }
        )
    )
    report = _load_run(warehouse_path, brought, deleted)
    assert report.records_deleted == 0 and report.removed == {"measurement": 1}
    assert _query(
        warehouse_path, "SELECT measurement_id, value_as_number FROM measurement WHERE value_as_number = 70"
    ) == [(first_id[0][0], 70.0)]
