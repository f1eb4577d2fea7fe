"""FHIR end to end into a real DuckDB warehouse: ids stable across runs, lineage, DELETE entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.sources.fhir import map_fhir
from pipelines.vocab import Vocabulary, load_vocabulary
from pipelines.warehouse import load_batch, open_targets
from pipelines.warehouse.duckdb_file import connect


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return load_vocabulary()


def _load(paths: list[Path], vocab: Vocabulary, warehouse: Path, run_id: int):
    return load_batch(map_fhir(paths, vocab), open_targets(warehouse, None, None), run_id=run_id)


def test_synthea_bundle_loads_with_lineage_and_the_same_ids_on_a_rerun(
    shared: Path, vocab: Vocabulary, warehouse_path: Path
) -> None:
    path = next((shared / "samples/fhir/synthea_r4_bundles").glob("Elisha_Bradtke_*.json"))
    entries = json.loads(path.read_text())["entry"]
    observations = [e for e in entries if e["resource"]["resourceType"] == "Observation"]
    report = _load([path], vocab, warehouse_path, 1)
    assert report.quarantined == {}
    con = connect(warehouse_path)
    try:
        persons = con.execute("select person_id, year_of_birth from person").fetchall()
        visits = con.execute("select count(*) from visit_occurrence where person_id = ?", [persons[0][0]])
        assert len(persons) == 1 and visits.fetchone()[0] == sum(
            e["resource"]["resourceType"] == "Encounter" for e in entries
        )
        # Every Observation reached measurement or observation, and leads back to its bundle entry.
        traced = con.execute(
            "select count(distinct record_id) from passerelle.lineage "
            "where record_type = 'Observation' and source_file = ?",
            [str(path)],
        ).fetchone()[0]
        assert traced == len(observations)
        first = sorted(con.execute("select omop_table, omop_id from passerelle.lineage").fetchall())
    finally:
        con.close()
    _load([path], vocab, warehouse_path, 2)
    con = connect(warehouse_path)
    try:
        again = sorted(
            con.execute("select omop_table, omop_id from passerelle.lineage where run_id = 2").fetchall()
        )
        assert again == first
        assert con.execute("select count(*) from person").fetchone()[0] == 1
    finally:
        con.close()


def test_transaction_bundle_delete_removes_what_it_names(
    shared: Path, vocab: Vocabulary, tmp_path: Path, warehouse_path: Path
) -> None:
    earlier = tmp_path / "Patient-234.json"
    earlier.write_text(json.dumps({"resourceType": "Patient", "id": "234", "birthDate": "1950-06-01"}))
    _load([earlier], vocab, warehouse_path, 1)
    report = _load(
        [shared / "samples/fhir/hl7_r4_examples/Bundle-bundle-transaction.json"], vocab, warehouse_path, 2
    )
    assert report.records_deleted == 1
    con = connect(warehouse_path)
    try:
        years = sorted(row[0] for row in con.execute("select year_of_birth from person").fetchall())
        assert 1950 not in years  # Patient/234 is gone; the bundle's POST/PUT patients are in
        ids = {r[0] for r in con.execute("select person_source_value from person").fetchall()}
        assert {"123", "123a"} <= ids and "234" not in ids
    finally:
        con.close()


def test_dangling_subject_is_quarantined_by_the_loader_and_the_rest_loads(
    vocab: Vocabulary, tmp_path: Path, warehouse_path: Path
) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}
    lines = [patient] + [
        {
            "resourceType": "Observation",
            "id": f"o{i}",
            "status": "final",
            "subject": {"reference": f"Patient/{who}"},
            "effectiveDateTime": "2022-01-02",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mmHg"},
        }
        for i, who in enumerate(["p1", "nobody"])
    ]
    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    report = _load([path], vocab, warehouse_path, 1)
    assert report.quarantined == {"dangling_reference": 1}
    con = connect(warehouse_path)
    try:
        assert con.execute("select count(*) from measurement").fetchone()[0] == 1
        row = con.execute("select record_id, position from passerelle.quarantine").fetchall()
        assert row == [("o1", 3)]
    finally:
        con.close()
