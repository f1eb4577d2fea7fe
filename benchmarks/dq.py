"""Benchmark: the whole default DQD suite on a synthetic CDM (default 100 k persons, ~6 M rows).

The CDM is generated in DuckDB SQL (seeded; DuckDB's parallel random() can still vary a few rows
between runs, which the timing does not notice). Concepts come from
the DQD catalogue itself (the measurement concepts with plausible units, the gender-specific
conditions), so the concept-level checks have rows to count, and a few percent of rows carry the
problems the checks look for (unmapped codes, wrong units, events before birth, dangling visits).

    .venv/bin/python benchmarks/dq.py [--persons 100000] [--events-per-person 60] [--keep PATH]
    .venv/bin/python benchmarks/dq.py --warehouse PATH [--repeat 3]

Prints rows per table, the wall and CPU seconds of ``run_dqd`` (all 2,374 default checks, JSON and
HTML written) and its status counts, then one JSON line with the figures. ``--warehouse`` times an
existing CDM instead (a warehouse of ``passerelle run``, opened read-only), ``--repeat`` times each.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.quality import load_catalogue, run_dqd
from pipelines.warehouse.duckdb_file import connect, initialize


def build(path: Path, persons: int, events: int) -> dict[str, int]:
    """A CDM with ``persons`` persons and about ``events`` clinical rows per person."""
    initialize(path)
    catalogue = load_catalogue("5.4")
    units = {
        int(c.concept_id): int(c.parameters["units"].split(",")[0])
        for c in catalogue.checks
        if c.name == "plausibleUnitConceptIds" and c.parameters.get("units")
    }
    gendered = {
        int(c.concept_id): 8507 if c.parameters["gender"] == "Male" else 8532
        for c in catalogue.checks
        if c.name == "plausibleGender" and c.table == "condition_occurrence"
    }
    with connect(path) as con:
        con.execute("SELECT setseed(0.42)")
        con.execute(
            "CREATE TEMP TABLE m_concepts AS SELECT * FROM (VALUES "
            + ",".join(f"({c},{u})" for c, u in units.items())
            + ") AS v(concept_id, unit_concept_id)"
        )
        con.execute(
            "CREATE TEMP TABLE c_concepts AS SELECT * FROM (VALUES "
            + ",".join(f"({c},{g})" for c, g in gendered.items())
            + ",(201826,NULL),(320128,NULL),(255573,NULL)) AS v(concept_id, gender)"
        )
        n_m = len(units)
        n_c = len(gendered) + 3
        script = f"""
        INSERT INTO concept (concept_id, concept_name, domain_id, vocabulary_id, concept_class_id,
            standard_concept, concept_code, valid_start_date, valid_end_date)
        SELECT concept_id, 'measurement ' || concept_id, 'Measurement', 'LOINC', 'Lab Test', 'S',
            CAST(concept_id AS VARCHAR), DATE '1970-01-01', DATE '2099-12-31' FROM m_concepts
        UNION ALL SELECT concept_id, 'condition ' || concept_id, 'Condition', 'SNOMED', 'Clinical Finding',
            'S', CAST(concept_id AS VARCHAR), DATE '1970-01-01', DATE '2099-12-31' FROM c_concepts
        UNION ALL SELECT * FROM (VALUES
            (0, 'No matching concept', 'Metadata', 'None', 'Undefined', NULL, '0', DATE '1970-01-01',
             DATE '2099-12-31'),
            (8507, 'MALE', 'Gender', 'Gender', 'Gender', 'S', 'M', DATE '1970-01-01', DATE '2099-12-31'),
            (8532, 'FEMALE', 'Gender', 'Gender', 'Gender', 'S', 'F', DATE '1970-01-01', DATE '2099-12-31'),
            (8527, 'White', 'Race', 'Race', 'Race', 'S', '5', DATE '1970-01-01', DATE '2099-12-31'),
            (38003564, 'Not Hispanic or Latino', 'Ethnicity', 'Ethnicity', 'Ethnicity', 'S', 'NH',
             DATE '1970-01-01', DATE '2099-12-31'),
            (9201, 'Inpatient Visit', 'Visit', 'Visit', 'Visit', 'S', 'IP', DATE '1970-01-01',
             DATE '2099-12-31'),
            (9202, 'Outpatient Visit', 'Visit', 'Visit', 'Visit', 'S', 'OP', DATE '1970-01-01',
             DATE '2099-12-31'),
            (32817, 'EHR', 'Type Concept', 'Type Concept', 'Type Concept', 'S', 'OMOP4976890',
             DATE '1970-01-01', DATE '2099-12-31'),
            (1503297, 'metformin', 'Drug', 'RxNorm', 'Ingredient', 'S', '6809', DATE '1970-01-01',
             DATE '2099-12-31'),
            (1567956, 'Type 2 diabetes mellitus', 'Condition', 'ICD10CM', '3-char nonbill code', NULL, 'E11',
             DATE '1970-01-01', DATE '2099-12-31'));

        INSERT INTO person (person_id, gender_concept_id, year_of_birth, month_of_birth, day_of_birth,
            race_concept_id, ethnicity_concept_id, person_source_value)
        SELECT i, CASE WHEN random() < 0.5 THEN 8507 ELSE 8532 END, 1930 + CAST(random() * 80 AS INT),
            1 + CAST(random() * 11 AS INT), 1 + CAST(random() * 27 AS INT), 8527, 38003564, 'P' || i
        FROM range(1, {persons} + 1) AS r(i);

        INSERT INTO observation_period
        SELECT person_id, person_id, DATE '2010-01-01' + CAST(random() * 1000 AS INT),
            DATE '2016-01-01' + CAST(random() * 2000 AS INT), 32817 FROM person WHERE random() < 0.98;

        INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date,
            visit_end_date, visit_type_concept_id, visit_source_value)
        SELECT i, 1 + (i % {persons}), CASE WHEN random() < 0.1 THEN 9201 ELSE 9202 END, d, d + 2, 32817, 'V'
        FROM (SELECT i, DATE '2012-01-01' + CAST(random() * 4000 AS INT) AS d
              FROM range(1, {persons} * {events // 6} + 1) AS r(i));

        INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id,
            condition_start_date, condition_end_date, condition_type_concept_id, visit_occurrence_id,
            condition_source_value, condition_source_concept_id)
        SELECT i, v.person_id,
            CASE WHEN random() < 0.03 THEN 0 WHEN random() < 0.02 THEN 1567956 ELSE c.concept_id END,
            v.visit_start_date + CASE WHEN random() < 0.01 THEN 30 ELSE 0 END, v.visit_end_date, 32817,
            v.visit_occurrence_id, 'C' || (i % 500), 0
        FROM (SELECT i, 1 + (i * 31) % ({persons} * {events // 6}) AS vid
              FROM range(1, {persons} * {events // 6} + 1) AS r(i)) AS x
        JOIN visit_occurrence AS v ON v.visit_occurrence_id = x.vid
        JOIN (SELECT concept_id, row_number() OVER (ORDER BY concept_id) - 1 AS k FROM c_concepts) AS c
            ON c.k = (x.i * 7919) % {n_c};

        INSERT INTO measurement (measurement_id, person_id, measurement_concept_id, measurement_date,
            measurement_type_concept_id, value_as_number, unit_concept_id, unit_source_value,
            visit_occurrence_id, measurement_source_value)
        SELECT i, 1 + (i % {persons}), m.concept_id, DATE '2012-01-01' + CAST(random() * 4000 AS INT), 32817,
            round(random() * 200, 1), CASE WHEN random() < 0.04 THEN 9529 ELSE m.unit_concept_id END, 'u',
            CASE WHEN random() < 0.005 THEN -1 ELSE 1 + (i % ({persons} * {events // 6})) END,
            'M' || (i % 1000)
        FROM range(1, {persons} * {events // 2} + 1) AS r(i)
        JOIN (SELECT concept_id, unit_concept_id, row_number() OVER (ORDER BY concept_id) - 1 AS k
              FROM m_concepts) AS m ON m.k = i % {n_m};

        INSERT INTO drug_exposure (drug_exposure_id, person_id, drug_concept_id, drug_exposure_start_date,
            drug_exposure_end_date, drug_type_concept_id, quantity, days_supply, drug_source_value)
        SELECT i, 1 + (i % {persons}), 1503297, d, d + 30, 32817, 60, 30, 'metformin'
        FROM (SELECT i, DATE '2012-01-01' + CAST(random() * 4000 AS INT) AS d
              FROM range(1, {persons} * {events // 6} + 1) AS r(i));

        INSERT INTO death (person_id, death_date, death_type_concept_id)
        SELECT person_id, DATE '2022-06-01', 32817 FROM person WHERE person_id % 50 = 0;

        INSERT INTO condition_era
        SELECT row_number() OVER (), person_id, condition_concept_id, min(condition_start_date),
            max(condition_end_date), count(*)
        FROM condition_occurrence GROUP BY person_id, condition_concept_id;

        INSERT INTO cdm_source (cdm_source_name, cdm_source_abbreviation, cdm_holder, source_release_date,
            cdm_release_date, cdm_version, cdm_version_concept_id, vocabulary_version)
        VALUES ('Synthetic DQ benchmark', 'DQBENCH', 'Passerelle', DATE '2024-01-01', DATE '2024-01-02',
            '5.4', 756265, 'synthetic');
        """
        for statement in script.split(";\n"):
            if statement.strip():
                con.execute(statement)
        tables = ["person", "observation_period", "visit_occurrence", "condition_occurrence", "measurement",
                  "drug_exposure", "death", "condition_era", "concept"]  # fmt: skip
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--events-per-person", type=int, default=60)
    parser.add_argument("--keep", type=Path, help="write the CDM here instead of a temporary file")
    parser.add_argument("--warehouse", type=Path, help="time this existing CDM instead of building one")
    parser.add_argument("--repeat", type=int, default=1, help="time run_dqd this many times")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.warehouse or args.keep or Path(tmp) / "bench.duckdb"
        if args.warehouse is None:
            started = time.perf_counter()
            counts = build(path, args.persons, args.events_per_person)
            built = time.perf_counter() - started
        else:
            counts, built = _counts(path), 0.0
        total = sum(v for k, v in counts.items() if k != "concept")
        for table, rows in counts.items():
            print(f"{table:>22} {rows:>12,}")
        print(f"{total:,} CDM rows" + ("" if args.warehouse else f", built in {built:.1f} s"))
        timings = []
        with connect(path, read_only=True) as con:
            for _ in range(args.repeat):
                started, cpu = time.perf_counter(), _cpu_seconds()
                results = run_dqd(con, out_dir=Path(tmp) / "dq")
                timings.append((time.perf_counter() - started, _cpu_seconds() - cpu))
        seconds, cpu_seconds = min(timings)
        overview = results.overview()
        print(
            f"run_dqd: {overview['countTotal']} checks in {seconds:.2f} s wall, {cpu_seconds:.2f} CPU s"
            f" (best of {len(timings)}: {', '.join(f'{w:.2f}/{c:.2f}' for w, c in timings)}); "
            f"{overview['countThresholdFailed']} failed, {overview['countErrorFailed']} errors, "
            f"{sum(r.not_applicable for r in results.results)} not applicable"
        )
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        figures = {
            "persons": counts["person"],
            "cdm_rows": total,
            "checks": overview["countTotal"],
            "dq_seconds": round(seconds, 2),
            "dq_cpu_seconds": round(cpu_seconds, 2),
            "failed": overview["countThresholdFailed"],
            "errors": overview["countErrorFailed"],
            "peak_rss_mb": round(peak_mb),
        }
        print(json.dumps(figures))


def _counts(path: Path) -> dict[str, int]:
    """Rows of the CDM's non-empty tables (vocabulary tables included), person first."""
    with connect(path, read_only=True) as con:
        listed = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
            " ORDER BY table_name <> 'person', table_name"
        ).fetchall()
        tables = [t for (t,) in listed]
        counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    return {t: n for t, n in counts.items() if n}


def _cpu_seconds() -> float:
    """CPU seconds of every thread of this process (DuckDB's own threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
