"""condition_era and drug_era on a hand-made CDM: 30 vs 31 days apart, missing end dates, days_supply
vs end date vs neither, two drugs sharing an ingredient, a combination drug, concept 0."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from _derive_cdm import d, insert, records, rows

from pipelines.derive import derive_all
from pipelines.warehouse.duckdb_file import connect, initialize

T2DM, ASTHMA = 201826, 317009  # SNOMED standard conditions
LISINOPRIL, ACETAMINOPHEN, OXYCODONE = 1308216, 1125315, 1124957  # RxNorm ingredients
LISINOPRIL_10, LISINOPRIL_20 = 19080128, 19080129  # RxNorm clinical drugs
ACETAMINOPHEN_325, ACETAMINOPHEN_OXYCODONE = 1127433, 40231925
ACE_INHIBITORS = 21601783  # ATC 4th level "ACE inhibitors, plain": an ancestor that is no ingredient


@pytest.fixture
def cdm(warehouse_path: Path) -> duckdb.DuckDBPyConnection:
    initialize(warehouse_path)
    con = connect(warehouse_path)
    # a CDM from a lenient ETL may leave drug_exposure_end_date empty (v5.4 requires it)
    con.execute("ALTER TABLE drug_exposure ALTER COLUMN drug_exposure_end_date DROP NOT NULL")
    insert(
        con,
        "concept",
        records(
            "concept_id concept_name vocabulary_id concept_class_id standard_concept concept_code",
            [
                (LISINOPRIL, "lisinopril", "RxNorm", "Ingredient", "S", "29046"),
                (ACETAMINOPHEN, "acetaminophen", "RxNorm", "Ingredient", "S", "161"),
                (OXYCODONE, "oxycodone", "RxNorm", "Ingredient", "S", "7804"),
                (LISINOPRIL_10, "lisinopril 10 MG Oral Tablet", "RxNorm", "Clinical Drug", "S", "314076"),
                (LISINOPRIL_20, "lisinopril 20 MG Oral Tablet", "RxNorm", "Clinical Drug", "S", "314077"),
                (
                    ACETAMINOPHEN_325,
                    "acetaminophen 325 MG Oral Tablet",
                    "RxNorm",
                    "Clinical Drug",
                    "S",
                    "313782",
                ),
                (
                    ACETAMINOPHEN_OXYCODONE,
                    "acetaminophen 325 MG / oxycodone 5 MG",
                    "RxNorm",
                    "Clinical Drug",
                    "S",
                    "1049221",
                ),
                (ACE_INHIBITORS, "ACE inhibitors, plain", "ATC", "ATC 4th", "C", "C09AA"),
            ],
        ),
    )
    insert(
        con,
        "concept_ancestor",
        records(
            "ancestor_concept_id descendant_concept_id",
            [
                (LISINOPRIL, LISINOPRIL_10),
                (LISINOPRIL, LISINOPRIL_20),
                (ACE_INHIBITORS, LISINOPRIL_10),
                (ACETAMINOPHEN, ACETAMINOPHEN_325),
                (ACETAMINOPHEN, ACETAMINOPHEN_OXYCODONE),
                (OXYCODONE, ACETAMINOPHEN_OXYCODONE),
            ],
        ),
    )
    insert(
        con,
        "condition_occurrence",
        records(
            "person_id condition_concept_id condition_start_date condition_end_date",
            [
                (10, T2DM, d("2020-01-01"), d("2020-01-10")),
                (10, T2DM, d("2020-02-09"), None),  # 30 days after 2020-01-10: same era; ends 2020-02-10
                (10, T2DM, d("2020-03-12"), None),  # 31 days after 2020-02-10: a new era
                (10, ASTHMA, d("2020-01-05"), d("2020-01-06")),
                (10, 0, d("2020-01-05"), None),  # unmapped: no era
            ],
        ),
    )
    insert(
        con,
        "drug_exposure",
        records(
            "person_id drug_concept_id drug_exposure_start_date drug_exposure_end_date days_supply",
            [
                (20, LISINOPRIL_10, d("2020-01-01"), d("2020-01-30"), None),  # end date given
                (20, LISINOPRIL_20, d("2020-01-20"), None, 30),  # same ingredient, overlaps: ends 02-19
                (20, LISINOPRIL_10, d("2020-03-20"), None, None),  # 30 days on: same era; ends 03-21
                (20, LISINOPRIL_10, d("2020-04-21"), None, 0),  # 31 days on: new era; ends 04-22
                (20, ACETAMINOPHEN_OXYCODONE, d("2020-01-05"), d("2020-01-10"), 5),  # two ingredients
                (20, ACETAMINOPHEN_325, d("2020-01-08"), d("2020-01-12"), None),  # shares acetaminophen
                (20, 0, d("2020-01-01"), d("2020-01-02"), None),  # unmapped drug: no era
                (20, LISINOPRIL_10, d("2020-06-01"), d("2020-06-30"), -5),  # negative supply: left out
                # recorded at ingredient level, no self row in CONCEPT_ANCESTOR
                (21, LISINOPRIL, d("2021-01-01"), d("2021-01-31"), None),
            ],
        ),
    )
    yield con
    con.close()


def test_condition_eras_merge_within_30_days_and_split_at_31(cdm):
    counts = derive_all(cdm, extraction_date=d("2025-01-01"))

    assert rows(
        cdm,
        "SELECT person_id, condition_concept_id, condition_era_start_date,"
        " condition_era_end_date, condition_occurrence_count FROM condition_era"
        " ORDER BY condition_era_id",
    ) == [
        (10, T2DM, d("2020-01-01"), d("2020-02-10"), 2),
        (10, T2DM, d("2020-03-12"), d("2020-03-13"), 1),
        (10, ASTHMA, d("2020-01-05"), d("2020-01-06"), 1),
    ]
    assert counts["condition_era"] == 3


def test_drug_eras_follow_the_ohdsi_non_stockpile_rule(cdm):
    counts = derive_all(cdm, extraction_date=d("2025-01-01"))

    assert rows(
        cdm,
        "SELECT person_id, drug_concept_id, drug_era_start_date, drug_era_end_date,"
        " drug_exposure_count, gap_days FROM drug_era ORDER BY person_id, drug_concept_id,"
        " drug_era_start_date",
    ) == [
        (20, OXYCODONE, d("2020-01-05"), d("2020-01-10"), 1, 0),
        (20, ACETAMINOPHEN, d("2020-01-05"), d("2020-01-12"), 2, 0),
        # 2020-01-01..2020-02-19 (49 days) + 2020-03-20..2020-03-21 (1 day) in an 80-day era
        (20, LISINOPRIL, d("2020-01-01"), d("2020-03-21"), 3, 30),
        (20, LISINOPRIL, d("2020-04-21"), d("2020-04-22"), 1, 0),
        (21, LISINOPRIL, d("2021-01-01"), d("2021-01-31"), 1, 0),
    ]
    assert counts["drug_era"] == 5


def test_era_ids_are_numbered_by_person_concept_and_start(cdm):
    derive_all(cdm, extraction_date=d("2025-01-01"))

    assert rows(cdm, "SELECT list(drug_concept_id ORDER BY drug_era_id) FROM drug_era") == [
        ([OXYCODONE, ACETAMINOPHEN, LISINOPRIL, LISINOPRIL, LISINOPRIL],)
    ]


def test_rebuilding_one_person_leaves_the_other_persons_eras_and_ids(cdm):
    derive_all(cdm, extraction_date=d("2025-01-01"))
    before = rows(cdm, "SELECT * FROM drug_era WHERE person_id = 20 ORDER BY drug_era_id")
    insert(
        cdm,
        "drug_exposure",
        records(
            "person_id drug_concept_id drug_exposure_start_date drug_exposure_end_date",
            [(21, LISINOPRIL_10, d("2021-02-15"), d("2021-03-01"))],  # 15 days after 2021-01-31
        ),
    )

    counts = derive_all(cdm, person_ids=[21], extraction_date=d("2025-01-01"))

    assert counts["drug_era"] == 1
    assert rows(cdm, "SELECT * FROM drug_era WHERE person_id = 20 ORDER BY drug_era_id") == before
    assert rows(
        cdm,
        "SELECT drug_era_id, drug_concept_id, drug_era_start_date, drug_era_end_date, drug_exposure_count,"
        " gap_days FROM drug_era WHERE person_id = 21",
    ) == [(5, LISINOPRIL, d("2021-01-01"), d("2021-03-01"), 2, 15)]


def test_an_empty_person_list_rebuilds_no_person_rows(cdm):
    derive_all(cdm, extraction_date=d("2025-01-01"))

    counts = derive_all(cdm, person_ids=[], extraction_date=d("2025-01-01"))

    assert counts == {"death": 0, "observation_period": 0, "condition_era": 0, "drug_era": 0, "cdm_source": 1}
    assert rows(cdm, "SELECT count(*) FROM drug_era") == [(5,)]
