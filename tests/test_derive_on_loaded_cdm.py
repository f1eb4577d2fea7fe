"""derive on a CDM made by Passerelle's own FHIR mapper and warehouse loader from the shared samples
(Synthea bundles and the Bulk Data export), with the starter vocabulary loaded into the warehouse."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pytest
from _derive_cdm import expected_periods, rows

from pipelines.derive import derive_all, load_rules
from pipelines.warehouse.duckdb_file import connect

EXTRACTION = dt.date(2021, 4, 1)
DERIVED = {
    "observation_period": "observation_period_id",
    "condition_era": "condition_era_id",
    "drug_era": "drug_era_id",
    "death": "person_id, death_date",
}


@pytest.fixture(scope="module")
def loaded_cdm(shared: Path, tmp_path_factory) -> Path:
    from pipelines.sources.fhir import map_fhir
    from pipelines.vocab import load_vocabulary
    from pipelines.warehouse import load_batch, open_targets

    vocab = load_vocabulary()
    samples = shared / "samples" / "fhir"
    batch = map_fhir([samples / "synthea_r4_bundles", samples / "ndjson_bulk_export"], vocab)
    path = tmp_path_factory.mktemp("loaded") / "omop.duckdb"
    load_batch(batch, open_targets(path, None, None), vocab=vocab)
    return path


@pytest.fixture
def cdm(loaded_cdm: Path, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    copy = tmp_path / "omop.duckdb"
    copy.write_bytes(loaded_cdm.read_bytes())
    con = connect(copy)
    yield con
    con.close()


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    return {table: rows(con, f"SELECT * FROM {table} ORDER BY {order}") for table, order in DERIVED.items()}


def test_periods_of_the_loaded_cdm_follow_the_rule_event_by_event(cdm):
    derive_all(cdm, extraction_date=EXTRACTION)

    events = []
    for table, (start, end) in load_rules().observation_period.events.items():
        events += rows(cdm, f"SELECT person_id, {start}, {end or 'NULL::DATE'} FROM {table}")
    deaths = dict(rows(cdm, "SELECT person_id, death_date FROM death"))
    expected = expected_periods(events, deaths, EXTRACTION)
    assert (
        rows(
            cdm,
            "SELECT person_id, observation_period_start_date, observation_period_end_date"
            " FROM observation_period ORDER BY person_id, observation_period_start_date",
        )
        == expected
    )
    persons_with_events = {person_id for person_id, *_ in events}
    assert len(persons_with_events) > 3  # the bundles' patients and the Bulk export's
    assert rows(cdm, "SELECT count(DISTINCT person_id) FROM observation_period") == [
        (len(persons_with_events),)
    ]


def test_rebuilding_twice_gives_identical_tables(cdm):
    derive_all(cdm, extraction_date=EXTRACTION)
    first = _snapshot(cdm)

    derive_all(cdm, extraction_date=EXTRACTION)

    assert _snapshot(cdm) == first
    assert len(first["observation_period"]) > 0 and len(first["drug_era"]) > 0


def test_rebuilding_every_person_one_by_one_equals_a_full_rebuild(cdm):
    derive_all(cdm, extraction_date=EXTRACTION)
    full = {table: rows(cdm, query) for table, query in _WITHOUT_IDS.items()}
    persons = [person_id for (person_id,) in rows(cdm, "SELECT person_id FROM person ORDER BY person_id")]

    for person_id in reversed(persons):
        derive_all(cdm, person_ids=[person_id], extraction_date=EXTRACTION)

    assert {table: rows(cdm, query) for table, query in _WITHOUT_IDS.items()} == full
    for table, id_column in DERIVED.items():
        assert rows(cdm, f"SELECT count(DISTINCT ({id_column})) = count(*) FROM {table}") == [(True,)]


_WITHOUT_IDS = {
    "observation_period": "SELECT * EXCLUDE (observation_period_id) FROM observation_period ORDER BY ALL",
    "condition_era": "SELECT * EXCLUDE (condition_era_id) FROM condition_era ORDER BY ALL",
    "drug_era": "SELECT * EXCLUDE (drug_era_id) FROM drug_era ORDER BY ALL",
    "death": "SELECT * FROM death ORDER BY ALL",
}
