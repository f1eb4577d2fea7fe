"""death deduplication, the cdm_source row, and the all-or-nothing transaction of derive_all."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest
from _derive_cdm import d, insert, records, rows

from pipelines.derive import derive_all
from pipelines.errors import SchemaError
from pipelines.warehouse.duckdb_file import connect, initialize

MYOCARDIAL_INFARCTION = 4329847
EHR, DEATH_CERTIFICATE = 32817, 32815  # Type Concept vocabulary
DEATHS = "SELECT person_id, death_date, cause_concept_id, death_type_concept_id FROM death ORDER BY person_id"


@pytest.fixture
def cdm(warehouse_path: Path) -> duckdb.DuckDBPyConnection:
    initialize(warehouse_path)
    con = connect(warehouse_path)
    insert(
        con,
        "death",
        records(
            "person_id death_date cause_concept_id death_type_concept_id",
            [
                (1, d("2020-07-01"), MYOCARDIAL_INFARCTION, DEATH_CERTIFICATE),  # later: not kept
                (1, d("2020-06-10"), None, EHR),
                (1, d("2020-06-10"), MYOCARDIAL_INFARCTION, EHR),  # earliest, with a cause: kept
                (2, d("2019-03-03"), 0, EHR),
            ],
        ),
    )
    insert(con, "visit_occurrence", [{"person_id": 1, "visit_start_date": d("2020-05-01")}])
    yield con
    con.close()


def test_death_keeps_one_row_per_person_the_earliest_with_a_cause(cdm):
    counts = derive_all(cdm, extraction_date=d("2025-01-01"))

    assert rows(cdm, DEATHS) == [
        (1, d("2020-06-10"), MYOCARDIAL_INFARCTION, EHR),
        (2, d("2019-03-03"), 0, EHR),
    ]
    assert counts["death"] == 2


def test_cdm_source_says_cdm_5_4_and_the_vocabulary_release(cdm):
    insert(
        cdm,
        "vocabulary",
        [{"vocabulary_id": "None", "vocabulary_name": "OMOP Standardized Vocabularies",
          "vocabulary_version": "v5.0 30-AUG-24"}],
    )  # fmt: skip

    derive_all(cdm, extraction_date=d("2025-01-01"))

    assert rows(
        cdm,
        "SELECT cdm_source_name, cdm_source_abbreviation, source_release_date, cdm_release_date,"
        " cdm_version, cdm_version_concept_id, vocabulary_version FROM cdm_source",
    ) == [
        (
            "Passerelle OMOP CDM",
            "Passerelle",
            d("2025-01-01"),
            dt.date.today(),
            "v5.4",
            756265,
            "v5.0 30-AUG-24",
        )
    ]


def test_cdm_source_keeps_the_sites_names(cdm):
    insert(
        cdm,
        "cdm_source",
        [{"cdm_source_name": "Hôpital Nord research CDM", "cdm_source_abbreviation": "HN-CDM",
          "cdm_holder": "Hôpital Nord", "source_description": "EHR 2015-2024",
          "vocabulary_version": "v5.0 31-AUG-23", "cdm_version_concept_id": 0}],
    )  # fmt: skip

    counts = derive_all(cdm, extraction_date=d("2025-02-01"))

    assert rows(
        cdm,
        "SELECT cdm_source_name, cdm_source_abbreviation, cdm_holder, source_description,"
        " source_release_date, cdm_version_concept_id, vocabulary_version FROM cdm_source",
    ) == [
        ("Hôpital Nord research CDM", "HN-CDM", "Hôpital Nord", "EHR 2015-2024", d("2025-02-01"), 756265,
         "v5.0 31-AUG-23")
    ]  # fmt: skip
    assert counts["cdm_source"] == 1


def test_a_failing_rebuild_leaves_every_table_as_it_was(cdm):
    derive_all(cdm, extraction_date=d("2025-01-01"))
    insert(cdm, "death", [{"person_id": 2, "death_date": d("2019-01-01")}])
    insert(cdm, "visit_occurrence", [{"person_id": 3, "visit_start_date": d("2021-01-01")}])
    before = {t: rows(cdm, f"SELECT * FROM {t} ORDER BY ALL") for t in ("death", "observation_period")}
    # a CDM whose concept_ancestor is not v5.4 breaks the drug_era step, after death and
    # observation_period were already rewritten in the transaction
    cdm.execute("ALTER TABLE concept_ancestor RENAME COLUMN ancestor_concept_id TO ancestor_id")

    with pytest.raises(SchemaError, match="cannot rebuild drug_era"):
        derive_all(cdm, extraction_date=d("2025-01-01"))

    assert {t: rows(cdm, f"SELECT * FROM {t} ORDER BY ALL") for t in before} == before
    assert len(before["death"]) == 3


def test_inside_the_callers_transaction_a_rollback_undoes_the_rebuild(cdm):
    cdm.execute("BEGIN TRANSACTION")
    derive_all(cdm, extraction_date=d("2025-01-01"))
    assert rows(cdm, "SELECT count(*) FROM observation_period") == [(1,)]
    cdm.execute("ROLLBACK")

    assert rows(cdm, "SELECT count(*) FROM observation_period") == [(0,)]
    assert rows(cdm, "SELECT count(*) FROM death") == [(4,)]


def test_a_database_without_the_cdm_tables_is_refused(tmp_path):
    with duckdb.connect(str(tmp_path / "other.duckdb")) as con:
        con.execute("CREATE TABLE patients (id INTEGER)")
        with pytest.raises(SchemaError, match="no CDM table death, observation_period"):
            derive_all(con)
