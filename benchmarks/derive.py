"""Benchmark: rebuild the derived tables of a synthetic CDM (default 100 k persons, ~10 M events).

The CDM is generated in DuckDB SQL (random but seeded: the same arguments give the same data), then
``derive_all`` runs on all persons and on 1 % of them (what a nightly incremental load touches).

    .venv/bin/python benchmarks/derive.py [--persons 100000] [--events-per-person 100] [--keep PATH]

Prints rows per table, seconds and the peak resident memory of the process (DuckDB runs in it).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from pipelines.derive import derive_all
from pipelines.warehouse.duckdb_file import connect, initialize

# real concept ids: a few SNOMED conditions, RxNorm clinical drugs and their ingredients
_CONDITIONS = [201826, 317009, 320128, 313217, 4329847, 255573, 257012, 80180, 432867, 260139]
_DRUG_INGREDIENT = [
    (19080128, 1308216),  # lisinopril 10 MG Oral Tablet -> lisinopril
    (19080129, 1308216),  # lisinopril 20 MG Oral Tablet -> lisinopril
    (1127433, 1125315),  # acetaminophen 325 MG Oral Tablet -> acetaminophen
    (40231925, 1125315),  # acetaminophen / oxycodone -> acetaminophen
    (40231925, 1124957),  # ... -> oxycodone
    (1115171, 1115008),  # naproxen sodium 220 MG Oral Tablet -> naproxen
    (40163924, 1503297),  # 24 HR metformin 500 MG ER Oral Tablet -> metformin
    (40232448, 1129625),  # diphenhydramine hydrochloride 25 MG Oral Tablet -> diphenhydramine
]
# share of the events per table (sums to 1)
_MIX = {
    "visit_occurrence": 0.2,
    "condition_occurrence": 0.2,
    "drug_exposure": 0.2,
    "measurement": 0.3,
    "observation": 0.05,
    "procedure_occurrence": 0.05,
}


def build_cdm(path: Path, persons: int, events_per_person: int) -> int:
    """A CDM with ``persons`` persons and about ``persons * events_per_person`` events; events made."""
    initialize(path)
    total = persons * events_per_person
    with connect(path) as con:
        con.execute("SELECT setseed(0.42)")
        con.execute(
            f"""INSERT INTO person (person_id, gender_concept_id, year_of_birth, race_concept_id,
                                    ethnicity_concept_id)
                SELECT i, CASE WHEN i % 2 = 0 THEN 8507 ELSE 8532 END, 1930 + i % 80, 0, 0
                FROM range(1, {persons} + 1) AS t(i)"""
        )
        ingredients = sorted({ingredient for _, ingredient in _DRUG_INGREDIENT})
        drugs = sorted({drug for drug, _ in _DRUG_INGREDIENT})
        con.execute(
            "INSERT INTO concept SELECT id, 'benchmark concept', 'Drug', 'RxNorm', cls, 'S', id::VARCHAR,"
            " DATE '1970-01-01', DATE '2099-12-31', NULL FROM (VALUES "
            + ", ".join(f"({c}, 'Ingredient')" for c in ingredients)
            + ", "
            + ", ".join(f"({c}, 'Clinical Drug')" for c in drugs)
            + ") AS v(id, cls)"
        )
        con.execute(
            "INSERT INTO concept_ancestor VALUES "
            + ", ".join(f"({ingredient}, {drug}, 1, 1)" for drug, ingredient in _DRUG_INGREDIENT)
        )
        counts = {table: int(total * share) for table, share in _MIX.items()}
        con.execute(
            f"""INSERT INTO visit_occurrence (visit_occurrence_id, person_id, visit_concept_id,
                    visit_start_date, visit_end_date, visit_type_concept_id)
                SELECT i, p, 9202, d, d + CAST(floor(random() * 3) AS INTEGER), 32817
                FROM {_events(counts["visit_occurrence"], persons)}"""
        )
        condition_list = "[" + ", ".join(map(str, _CONDITIONS)) + "]"
        con.execute(
            f"""INSERT INTO condition_occurrence (condition_occurrence_id, person_id, condition_concept_id,
                    condition_start_date, condition_end_date, condition_type_concept_id)
                SELECT i, p, {condition_list}[1 + CAST(floor(random() * {len(_CONDITIONS)}) AS INTEGER)],
                       d, CASE WHEN random() < 0.5 THEN NULL ELSE d + CAST(floor(random() * 20) AS INT) END,
                       32817
                FROM {_events(counts["condition_occurrence"], persons)}"""
        )
        drug_list = "[" + ", ".join(map(str, drugs)) + "]"
        con.execute(
            f"""INSERT INTO drug_exposure (drug_exposure_id, person_id, drug_concept_id,
                    drug_exposure_start_date, drug_exposure_end_date, days_supply, drug_type_concept_id)
                SELECT i, p, {drug_list}[1 + CAST(floor(random() * {len(drugs)}) AS INTEGER)],
                       d, d + CAST(floor(random() * 60) AS INTEGER), 30, 32838
                FROM {_events(counts["drug_exposure"], persons)}"""
        )
        for table, prefix, date_column in (
            ("measurement", "measurement", "measurement_date"),
            ("observation", "observation", "observation_date"),
            ("procedure_occurrence", "procedure", "procedure_date"),
        ):
            con.execute(
                f"""INSERT INTO {table} ({table}_id, person_id, {prefix}_concept_id, {date_column},
                        {prefix}_type_concept_id)
                    SELECT i, p, 0, d, 32817 FROM {_events(counts[table], persons)}"""
            )
        con.execute(
            f"""INSERT INTO death (person_id, death_date, death_type_concept_id)
                SELECT i, DATE '2019-01-01' + CAST(i % 700 AS INTEGER), 32817
                FROM range(1, {persons} + 1, 50) AS t(i)
                UNION ALL  -- a second report for some of them
                SELECT i, DATE '2019-03-01' + CAST(i % 700 AS INTEGER), 32815
                FROM range(1, {persons} + 1, 200) AS t(i)"""
        )
        return sum(counts.values())


def _events(n: int, persons: int) -> str:
    """n rows (i, person p, date d): a random person, and a date within ~15 years from a start that
    depends on the person, so that gaps, periods and eras vary between persons."""
    return f"""(SELECT i, p, DATE '2005-01-01' + CAST((p % 3650) + floor(random() * 5475) AS INTEGER) AS d
                FROM (SELECT i, CAST(1 + floor(random() * {persons}) AS BIGINT) AS p
                      FROM range({n}) AS t(i)))"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--persons", type=int, default=100_000)
    parser.add_argument("--events-per-person", type=int, default=100)
    parser.add_argument("--keep", type=Path, help="write the CDM here (and keep it) instead of a temp file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "benchmark.duckdb"
        with _timed("build the CDM"):
            events = build_cdm(path, args.persons, args.events_per_person)
        print(f"  {args.persons:,} persons, {events:,} events")
        with duckdb.connect(str(path)) as con:
            with _timed("derive_all + checkpoint, all persons"):
                counts = derive_all(con)
                con.execute("CHECKPOINT")  # writing the new rows to the file is part of the cost
            for table, rows in counts.items():
                print(f"  {table:<20} {rows:>12,}")
            touched = list(range(1, args.persons + 1, 100))
            with _timed(f"derive_all + checkpoint, {len(touched):,} persons (1 %)"):
                partial = derive_all(con, person_ids=touched)
                con.execute("CHECKPOINT")
            print(f"  {partial['observation_period']:,} periods, {partial['drug_era']:,} drug eras rebuilt")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(f"peak resident memory of the process: {peak:,.0f} MiB")


@contextmanager
def _timed(what: str) -> Iterator[None]:
    """Wall and CPU seconds (DuckDB's threads run in this process, so CPU counts them too: on a shared
    machine CPU seconds say more than the wall clock)."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    yield
    print(f"{what}: {time.perf_counter() - wall:.1f} s wall, {_cpu_seconds() - cpu:.1f} s CPU")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
