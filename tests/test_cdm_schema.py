"""The CDM spec in omop_ddl/ is OMOP CDM v5.4: checked against the official field-level specification."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pipelines.cdm import cdm_schema


def _official_fields(shared: Path) -> list[dict[str, str]]:
    path = shared / "reference/ohdsi/cdm/OMOP_CDMv5.4_Field_Level.csv"
    with path.open(newline="", encoding="utf-8-sig") as handle:  # CRLF, a trailing blank line
        return [row for row in csv.DictReader(handle) if row["cdmTableName"]]


@pytest.fixture(scope="module")
def official(shared: Path) -> list[dict[str, str]]:
    return _official_fields(shared)


def _official_tables(official: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    tables: dict[str, list[dict[str, str]]] = {}
    for row in official:
        tables.setdefault(row["cdmTableName"].lower(), []).append(row)
    return tables


def test_all_39_tables_in_official_order(official):
    assert cdm_schema().table_names == list(_official_tables(official))
    assert len(cdm_schema().tables) == 39


def test_columns_in_official_order(official):
    for name, rows in _official_tables(official).items():
        expected = [r["cdmFieldName"].strip('"') for r in rows]  # note_nlp."offset" is quoted there
        assert cdm_schema().table(name).column_names == expected, name


def test_types_match_the_specification(official):
    for row in official:
        column = cdm_schema().table(row["cdmTableName"]).column(row["cdmFieldName"].strip('"'))
        official_type = row["cdmDatatype"].lower()  # one 'Integer' in visit_occurrence
        if column.type == "bigint":  # our 64-bit surrogate keys are the spec's integer ids
            assert official_type == "integer", column
            assert column.name.endswith(("_id", "_id_1", "_id_2")) and "concept_id" not in column.name
        else:
            assert column.type == official_type, (row["cdmTableName"], column.name)


def test_concept_ids_stay_integer_and_surrogate_ids_are_bigint():
    for table in cdm_schema().tables:
        for column in table.columns:
            if column.name.endswith("concept_id") or "concept_id_" in column.name:
                assert column.type == "integer", (table.name, column.name)
    assert cdm_schema().table("person").column("person_id").type == "bigint"
    assert cdm_schema().table("measurement").column("measurement_event_id").type == "bigint"
    assert cdm_schema().table("fact_relationship").column("fact_id_2").type == "bigint"


def test_required_flags_match(official):
    for row in official:
        column = cdm_schema().table(row["cdmTableName"]).column(row["cdmFieldName"].strip('"'))
        assert column.required == (row["isRequired"] == "Yes"), (row["cdmTableName"], column.name)


def test_primary_and_foreign_keys_match(official):
    for row in official:
        column = cdm_schema().table(row["cdmTableName"]).column(row["cdmFieldName"].strip('"'))
        assert column.primary_key == (row["isPrimaryKey"] == "Yes"), (row["cdmTableName"], column.name)
        if row["isForeignKey"] == "Yes" and row["isPrimaryKey"] != "Yes":
            expected = (row["fkTableName"].lower(), row["fkFieldName"].lower())
            assert column.references == expected, (row["cdmTableName"], column.name)
        elif row["isPrimaryKey"] != "Yes":
            assert column.references is None, (row["cdmTableName"], column.name)


def test_every_index_names_existing_columns():
    schema = cdm_schema()
    names = [index.name for table in schema.tables for index in table.indexes]
    assert len(names) == len(set(names))
    for table in schema.tables:
        for index in table.indexes:
            assert set(index.columns) <= set(table.column_names), index
    assert [i.columns for i in schema.table("concept").indexes][:2] == [("concept_id",), ("concept_code",)]
