"""observation_period on a hand-made CDM: gaps of 547 vs 548 days, back-to-back events, long stays,
death before and after the last event, the extraction-date cap, partial rebuilds."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
from pathlib import Path

import duckdb
import pytest
from _derive_cdm import d, expected_periods, insert, records, rows

from pipelines.derive import derive_all, load_rules
from pipelines.errors import PasserelleError
from pipelines.warehouse.duckdb_file import connect, initialize

EXTRACTION = d("2025-01-01")
PERIODS = (
    "SELECT person_id, observation_period_start_date, observation_period_end_date, period_type_concept_id"
    " FROM observation_period ORDER BY person_id, observation_period_start_date"
)


@pytest.fixture
def cdm(warehouse_path: Path) -> duckdb.DuckDBPyConnection:
    initialize(warehouse_path)
    con = connect(warehouse_path)
    # 1: a gap of exactly 547 days (2020-01-03 -> 2021-07-03) keeps one period
    insert(
        con,
        "visit_occurrence",
        [{"person_id": 1, "visit_start_date": d("2020-01-01"), "visit_end_date": d("2020-01-03")}],
    )
    insert(con, "measurement", [{"person_id": 1, "measurement_date": d("2021-07-03")}])
    # 2: a gap of exactly 548 days (2020-01-03 -> 2021-07-04) splits
    insert(
        con,
        "visit_occurrence",
        [{"person_id": 2, "visit_start_date": d("2020-01-01"), "visit_end_date": d("2020-01-03")}],
    )
    insert(con, "observation", [{"person_id": 2, "observation_date": d("2021-07-04")}])
    # 3: back-to-back visits, and a long stay that covers a later-starting event: the gap counts
    #    from the latest end seen, not from the latest start
    insert(
        con,
        "visit_occurrence",
        [
            {"person_id": 3, "visit_start_date": d("2019-01-01"), "visit_end_date": d("2019-01-10")},
            {"person_id": 3, "visit_start_date": d("2019-01-11"), "visit_end_date": d("2021-01-01")},
        ],
    )
    insert(
        con,
        "condition_occurrence",
        [{"person_id": 3, "condition_start_date": d("2019-02-01"), "condition_end_date": None}],
    )
    insert(con, "procedure_occurrence", [{"person_id": 3, "procedure_date": d("2022-06-01")}])
    # 4: death 2020-06-10 before the last event (drug until 2020-06-30): death + 60 days comes first
    insert(con, "condition_occurrence", [{"person_id": 4, "condition_start_date": d("2020-05-01")}])
    insert(
        con,
        "drug_exposure",
        [
            {
                "person_id": 4,
                "drug_exposure_start_date": d("2020-06-01"),
                "drug_exposure_end_date": d("2020-06-30"),
            }
        ],
    )
    insert(con, "death", [{"person_id": 4, "death_date": d("2020-06-10")}])
    # 5: death 22 days after the last event: last event + 60 days comes first
    insert(
        con,
        "visit_occurrence",
        [{"person_id": 5, "visit_start_date": d("2020-01-10"), "visit_end_date": d("2020-01-10")}],
    )
    insert(con, "death", [{"person_id": 5, "death_date": d("2020-02-01")}])
    # 6: the extraction date stops the extension
    insert(
        con,
        "device_exposure",
        [{"person_id": 6, "device_exposure_start_date": d("2024-12-20"), "device_exposure_end_date": None}],
    )
    # 7: a person without any event gets no period
    insert(con, "person", [{"person_id": 7, "year_of_birth": 1950}])
    yield con
    con.close()


def test_gaps_extension_and_caps_give_the_ohdsi_ehr_periods(cdm):
    counts = derive_all(cdm, extraction_date=EXTRACTION)

    assert rows(cdm, PERIODS) == [
        (1, d("2020-01-01"), d("2021-09-01"), 32882),
        (2, d("2020-01-01"), d("2020-03-03"), 32882),
        (2, d("2021-07-04"), d("2021-09-02"), 32882),
        (3, d("2019-01-01"), d("2022-07-31"), 32882),
        (4, d("2020-05-01"), d("2020-08-09"), 32882),
        (5, d("2020-01-10"), d("2020-03-10"), 32882),
        (6, d("2024-12-20"), d("2025-01-01"), 32882),
    ]
    assert counts["observation_period"] == 7


def test_periods_never_overlap_nor_touch_and_every_person_with_events_has_one(cdm):
    derive_all(cdm, extraction_date=EXTRACTION)

    touching = rows(
        cdm,
        """
        SELECT count(*) FROM (
            SELECT observation_period_start_date - lag(observation_period_end_date)
                       OVER (PARTITION BY person_id ORDER BY observation_period_start_date) AS apart
            FROM observation_period)
        WHERE apart <= 1""",
    )
    assert touching == [(0,)]
    assert rows(cdm, "SELECT list(DISTINCT person_id ORDER BY person_id) FROM observation_period") == [
        ([1, 2, 3, 4, 5, 6],)
    ]


def test_ids_are_numbered_by_person_and_start_and_stable_across_rebuilds(cdm):
    derive_all(cdm, extraction_date=EXTRACTION)
    first = rows(cdm, "SELECT * FROM observation_period ORDER BY observation_period_id")
    derive_all(cdm, extraction_date=EXTRACTION)

    assert rows(cdm, "SELECT * FROM observation_period ORDER BY observation_period_id") == first
    assert [r[0] for r in first] == [1, 2, 3, 4, 5, 6, 7]


def test_rebuilding_some_persons_keeps_the_others_rows_and_ids(cdm):
    derive_all(cdm, extraction_date=EXTRACTION)
    insert(cdm, "measurement", [{"person_id": 2, "measurement_date": d("2019-12-01")}])
    insert(cdm, "measurement", [{"person_id": 1, "measurement_date": d("2023-01-01")}])  # not rebuilt

    counts = derive_all(cdm, person_ids=[2], extraction_date=EXTRACTION)

    assert counts["observation_period"] == 2
    assert rows(
        cdm,
        "SELECT observation_period_id, person_id, observation_period_start_date,"
        " observation_period_end_date FROM observation_period"
        " WHERE person_id IN (1, 2) ORDER BY observation_period_id",
    ) == [
        (1, 1, d("2020-01-01"), d("2021-09-01")),
        (8, 2, d("2019-12-01"), d("2020-03-03")),
        (9, 2, d("2021-07-04"), d("2021-09-02")),
    ]


def test_the_rule_parameters_come_from_the_rules_file(cdm):
    rules = load_rules()
    stricter = dataclasses.replace(
        rules,
        observation_period=dataclasses.replace(
            rules.observation_period, end_extension_days=0, death_extension_days=0, split_gap_days=365
        ),
    )
    derive_all(cdm, extraction_date=EXTRACTION, rules=stricter)

    assert rows(cdm, PERIODS) == [
        (1, d("2020-01-01"), d("2020-01-03"), 32882),
        (1, d("2021-07-03"), d("2021-07-03"), 32882),
        (2, d("2020-01-01"), d("2020-01-03"), 32882),
        (2, d("2021-07-04"), d("2021-07-04"), 32882),
        (3, d("2019-01-01"), d("2021-01-01"), 32882),
        (3, d("2022-06-01"), d("2022-06-01"), 32882),
        # stopped at death, but never before the person's own last event
        (4, d("2020-05-01"), d("2020-06-30"), 32882),
        (5, d("2020-01-10"), d("2020-01-10"), 32882),
        (6, d("2024-12-20"), d("2024-12-20"), 32882),
    ]


def test_an_extension_as_long_as_the_gap_is_refused(tmp_path):
    text = (Path(__file__).parents[1] / "omop_ddl" / "derivation_rules.yaml").read_text()
    bad = tmp_path / "rules.yaml"
    bad.write_text(text.replace("end_extension_days: 60", "end_extension_days: 547"))

    with pytest.raises(PasserelleError, match="end_extension_days must be smaller than split_gap_days"):
        load_rules(bad)


def test_random_event_histories_give_the_same_periods_as_the_event_by_event_rule(warehouse_path):
    """400 persons with events scattered so that gaps just under and over 548 days, long stays,
    deaths before and after the last event and the extraction cap all occur."""
    generator = random.Random(7)
    events, deaths = [], {}
    for person_id in range(1, 401):
        day = d("2010-01-01") + dt.timedelta(days=generator.randrange(0, 3000))
        for _ in range(generator.randrange(1, 12)):
            day += dt.timedelta(days=generator.choice([0, 1, 30, 546, 547, 548, 549, 900]))
            length = generator.choice([None, 0, 3, 700])
            events.append((person_id, day, None if length is None else day + dt.timedelta(days=length)))
        if generator.random() < 0.3:
            deaths[person_id] = day + dt.timedelta(days=generator.randrange(-400, 120))
    initialize(warehouse_path)
    with connect(warehouse_path) as con:
        insert(
            con, "condition_occurrence", records("person_id condition_start_date condition_end_date", events)
        )
        insert(con, "death", records("person_id death_date", list(deaths.items())))
        extraction = d("2022-06-30")

        derive_all(con, extraction_date=extraction)

        assert rows(con, PERIODS.replace(", period_type_concept_id", "")) == expected_periods(
            events, deaths, extraction
        )
