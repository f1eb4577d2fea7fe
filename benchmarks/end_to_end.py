"""Benchmark: the whole pipeline on N synthetic patients, against the JSON-parse floor and pyomop.

    .venv/bin/python benchmarks/end_to_end.py --patients 1000 [--keep DIR] [--skip-pyomop] [--seed 42]
        [--peer-patients 25] [--sequential] [--batch-resources 250000]

1. Generate N patients (FHIR Bundles, a Bulk NDJSON export, openEHR AQL pages); not timed. With
   ``--keep DIR`` the sources stay in DIR and are reused by the next run with the same N and seed.
2. Run the steps ``run_pipeline`` runs, one stage each: vocabulary (from its Parquet cache), the sources
   read, mapped and loaded batch after batch into a fresh DuckDB file (openEHR in a second process
   while FHIR maps, as the run does; ``--sequential``: after FHIR, in this process), with the time spent
   making the batches (in a thread, beside the load), the load's wait for them and the load's own time
   beside it; derived tables, quality checks (DQD).
3. The floor: ``orjson.loads`` of every JSON file and NDJSON line of the same sources, nothing else.
4. The peer: pyomop 6.4.0's FHIR Bulk NDJSON -> OMOP loader, installed in its own virtual environment
   under benchmarks/.cache/ (never the project's), on the same Bulk folder and the same Athena-format
   vocabulary folder (vocab/starter); beside it, our vocabulary + FHIR read + map + load of that same
   folder into a fresh DuckDB. pyomop loads about 100 resources a second, so both get the first
   ``--peer-patients`` Bulk patients only.

Prints a table per stage (wall seconds, CPU seconds of every thread and child, resources/s, patients/s,
peak resident memory) and, as the last line, one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson
from _measure import Meter, Stage  # benchmarks/ is sys.path[0] when run as a script

from pipelines.project_files import data_dir

_PYOMOP = "pyomop==6.4.0"
_CACHE = Path(__file__).resolve().parent / ".cache"
_MB = 1024 * 1024
# Resource types left out of the comparison with pyomop, and why (both sides get the same folder).
_NOT_FOR_PEER = {
    # pyomop 6.4.0's mapping.default.json reads Procedure.performedPeriod only; the generator writes
    # performedDateTime (as valid in FHIR R4), and the resulting NULL procedure_date stops its load.
    "Procedure.ndjson",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, required=True)
    parser.add_argument("--keep", type=Path, help="keep (and reuse) the sources and the warehouse here")
    parser.add_argument("--skip-pyomop", action="store_true", help="no peer baseline")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--sequential", action="store_true", help="openEHR after FHIR, in this process")
    parser.add_argument(
        "--batch-resources",
        type=int,
        default=250_000,
        help="FHIR resources per batch of the streamed run (RunOptions.batch_resources)",
    )
    parser.add_argument(
        "--peer-patients",
        type=int,
        default=25,
        help="Bulk patients given to pyomop and to us for the comparison (pyomop loads ~100 resources/s)",
    )
    args = parser.parse_args()

    scratch = None
    if args.keep is None:
        scratch = tempfile.TemporaryDirectory(prefix="passerelle-bench-")
        work = Path(scratch.name)
    else:
        work = args.keep
        work.mkdir(parents=True, exist_ok=True)
    try:
        result = benchmark(
            work,
            args.patients,
            seed=args.seed,
            with_pyomop=not args.skip_pyomop,
            peer_patients=args.peer_patients,
            sequential=args.sequential,
            batch_resources=args.batch_resources,
        )
    finally:
        if scratch is not None:
            scratch.cleanup()
    print_table(result)
    print(json.dumps(result["summary"]))


def benchmark(
    work: Path,
    patients: int,
    *,
    seed: int,
    with_pyomop: bool,
    peer_patients: int,
    sequential: bool,
    batch_resources: int,
) -> dict:
    sources = work / "sources"
    manifest = _generated(sources, patients, seed)
    fhir_paths = [sources / manifest["fhir_bundles"]["folder"], sources / manifest["fhir_bulk"]["folder"]]
    openehr_paths = [sources / manifest["openehr_aql"]["folder"]]
    counts = _resource_counts(manifest)

    meter = Meter()
    try:
        stages, streamed = _pipeline(
            meter,
            work / "warehouse.duckdb",
            work / "dq",
            fhir_paths,
            openehr_paths,
            sequential=sequential,
            batch_resources=batch_resources,
        )
        pipeline_peak = meter.overall_peak_rss_mb
        floor = {
            "FHIR": _parse_floor(meter, "floor: orjson FHIR", fhir_paths),
            "openEHR": _parse_floor(meter, "floor: orjson openEHR", openehr_paths),
        }
        bulk, counts["FHIR bulk"] = _peer_input(
            sources / manifest["fhir_bulk"]["folder"], work / "peer", peer_patients
        )
        peer = _ours_on_bulk(meter, bulk, work / "bulk.duckdb")
        if with_pyomop:
            peer += _pyomop(meter, bulk, work / "pyomop")
    finally:
        meter.close()
    return {
        "patients": patients,
        "peer_patients": peer_patients,
        "counts": counts,
        "bytes": {name: sum(f["bytes"] for f in figures) for name, figures in floor.items()},
        "stages": stages,
        "streamed": streamed,
        "floor": [stage for figures in floor.values() for stage in figures],
        "peer": peer,
        "summary": _summary(patients, counts, stages, streamed, floor, peer, pipeline_peak),
    }


def _generated(sources: Path, patients: int, seed: int) -> dict:
    """The manifest of sources for ``patients`` and ``seed``, generated unless already there."""
    manifest_file = sources / "manifest.json"
    if manifest_file.exists():
        manifest = json.loads(manifest_file.read_text())
        if manifest["patients"] == patients and manifest["generator"].get("seed") == seed:
            return manifest
    from pipelines.synthetic import generate

    print(f"generating {patients:,} patients in {sources} ...", file=sys.stderr)
    return generate(sources, patients, seed=seed).manifest


def _resource_counts(manifest: dict) -> dict[str, int]:
    """Input records per source: FHIR resources (Bundles and Bulk) and openEHR compositions."""
    return {
        "FHIR": sum(manifest["fhir_bundles"]["resources"].values())
        + sum(manifest["fhir_bulk"]["resources"].values()),
        "FHIR bulk": sum(manifest["fhir_bulk"]["resources"].values()),
        "openEHR": sum(manifest["openehr_aql"]["compositions"].values()),
    }


def _pipeline(
    meter: Meter,
    warehouse: Path,
    dq_out: Path,
    fhir_paths: list[Path],
    openehr_paths: list[Path],
    *,
    sequential: bool,
    batch_resources: int,
) -> tuple[list[Stage], dict[str, float]]:
    """The steps of pipelines.job.pipeline.run_pipeline, each timed on its own; and the streamed
    step's parts (seconds spent making the batches; the rest of it is the load)."""
    from pipelines.derive import derive_all
    from pipelines.job import pipeline
    from pipelines.quality import run_dqd
    from pipelines.vocab import load_vocabulary
    from pipelines.warehouse import open_targets
    from pipelines.warehouse.duckdb_file import connect

    for stale in (warehouse, warehouse.with_name(warehouse.name + ".wal")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(dq_out, ignore_errors=True)
    if sequential:  # openEHR after FHIR in this process, whatever its size
        pipeline._BACKGROUND_OPENEHR_BYTES = float("inf")
    start = len(meter.stages)
    with meter.stage("vocabulary"):
        vocab = load_vocabulary()
    options = pipeline.RunOptions(
        fhir=fhir_paths, openehr=openehr_paths, warehouse=warehouse, batch_resources=batch_resources
    )
    tally = pipeline.Tally(vocab)
    with meter.stage(_STREAMED) as streamed:
        pipeline.load_sources(options, vocab, open_targets(warehouse, None, None), tally)
    parts = dict(tally.timings)  # making batches runs in a thread beside the load: see load_sources
    parts["load"] = round(streamed.wall_s - parts["waiting for batches"], 3)
    parts["batches"] = tally.batches
    with meter.stage("derived tables"), connect(warehouse) as con:
        derive_all(con)
    with meter.stage("quality checks"), connect(warehouse, read_only=True) as con:
        run_dqd(con, out_dir=dq_out)
    return meter.stages[start:], parts


_STREAMED = "read+map+load (streamed)"


def _parse_floor(meter: Meter, name: str, paths: list[Path]) -> list[dict]:
    """Read and ``orjson.loads`` every file (gunzipped) or NDJSON line under ``paths``; nothing kept."""
    files = sorted(p for path in paths for p in path.rglob("*") if p.is_file())
    documents = failed = size = 0
    with meter.stage(name) as stage:
        for file in files:
            data = file.read_bytes()
            if file.name.endswith(".gz"):
                data = gzip.decompress(data)
            size += len(data)
            pieces = data.splitlines() if ".ndjson" in file.name else [data]
            for piece in pieces:
                if not piece.strip():
                    continue
                try:
                    orjson.loads(piece)
                    documents += 1
                except orjson.JSONDecodeError:  # the generator plants a malformed line or two
                    failed += 1
    return [{"stage": stage, "bytes": size, "documents": documents, "malformed": failed}]


def _peer_input(bulk: Path, folder: Path, patients: int) -> tuple[Path, int]:
    """The first ``patients`` people of the Bulk export, as pyomop can take them: plain ``*.ndjson``
    resource files (gunzipped), without the ``deleted`` file, the types in ``_NOT_FOR_PEER`` and the
    planted malformed lines (pyomop stops at the first one). Returns the folder and its resources."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with (bulk / "Patient.ndjson").open("rb") as people:
        lines = itertools.islice(people, patients)
        chosen = {f"Patient/{orjson.loads(line)['id']}" for line in lines}
    resources = 0
    for file in sorted(bulk.iterdir()):
        if file.name.startswith("deleted") or file.name.removesuffix(".gz") in _NOT_FOR_PEER:
            continue
        data = gzip.decompress(file.read_bytes()) if file.name.endswith(".gz") else file.read_bytes()
        with (folder / file.name.removesuffix(".gz")).open("wb") as out:
            for line in data.splitlines():
                try:
                    resource = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                subject = resource.get("subject") or resource.get("patient") or {}
                if subject.get("reference") in chosen or f"Patient/{resource.get('id')}" in chosen:
                    out.write(line + b"\n")
                    resources += 1
    return folder, resources


def _ours_on_bulk(meter: Meter, bulk: Path, warehouse: Path) -> list[Stage]:
    """Our FHIR read + map + load of the Bulk folder alone, into a fresh DuckDB (pyomop's task)."""
    from pipelines.sources.fhir import map_fhir
    from pipelines.vocab import load_vocabulary
    from pipelines.warehouse import load_batch, open_targets

    for stale in (warehouse, warehouse.with_name(warehouse.name + ".wal")):
        stale.unlink(missing_ok=True)
    with meter.stage("ours: Bulk NDJSON -> DuckDB") as stage:
        vocab = load_vocabulary()
        load_batch(map_fhir([bulk], vocab), open_targets(warehouse, None, None), vocab=vocab, export=False)
    return [stage]


def _pyomop(meter: Meter, bulk: Path, work: Path) -> list[Stage]:
    """pyomop in its own venv: create the CDM and import the vocabulary, then load the Bulk folder."""
    python = _pyomop_python()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    database = work / "cdm.sqlite"
    vocabulary = data_dir("vocab") / "starter"
    setup = meter.run(
        "pyomop: create CDM + vocabulary",
        [str(python), "-m", "pyomop", "--create", "--vocab", str(vocabulary), "-n", str(database)],
        cwd=work,
        log=work / "setup.log",
    )
    load = meter.run(
        "pyomop: Bulk NDJSON -> sqlite",
        [str(python), "-m", "pyomop", "--input", str(bulk), "-n", str(database)],
        cwd=work,
        log=work / "load.log",
    )
    with sqlite3.connect(database) as con:
        rows = {
            table: con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("person", "visit_occurrence", "condition_occurrence", "measurement", "observation")
        }
    print(f"pyomop rows: {rows}", file=sys.stderr)
    return [setup, load]


def _pyomop_python() -> Path:
    """The interpreter of benchmarks/.cache/pyomop-venv, made with the ``uv`` next to ours if needed."""
    venv = _CACHE / "pyomop-venv"
    python = venv / "bin" / "python"
    uv = Path(sys.executable).with_name("uv")
    if not python.exists():
        subprocess.run([str(uv), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    installed = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('pyomop'))"],
        capture_output=True,
        text=True,
    )
    if installed.stdout.strip() != _PYOMOP.split("==")[1]:
        subprocess.run([str(uv), "pip", "install", "--quiet", "--python", str(python), _PYOMOP], check=True)
    return python


def _summary(
    patients: int,
    counts: dict[str, int],
    stages: list[Stage],
    streamed: dict[str, float],
    floor: dict[str, list[dict]],
    peer: list[Stage],
    peak_rss_mb: float,
) -> dict:
    resources = counts["FHIR"] + counts["openEHR"]
    wall = sum(s.wall_s for s in stages)
    cpu = sum(s.cpu_s for s in stages)
    floor_wall = sum(f["stage"].wall_s for figures in floor.values() for f in figures)
    # the streamed step's time spent making batches (reading and mapping, beside the load)
    mapping_wall = sum(v for k, v in streamed.items() if k not in ("load", "batches", "waiting for batches"))
    summary = {
        "patients": patients,
        "resources": resources,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "resources_per_s": round(resources / wall),
        "patients_per_s": round(patients / wall, 1),
        "resources_per_cpu_s": round(resources / cpu),
        # the floor's throughput over ours on the same bytes: 1.0 = as fast as parsing alone
        "fraction_of_parse_floor": round(floor_wall / wall, 3),
        "fraction_of_parse_floor_read_map": round(floor_wall / mapping_wall, 3),
        "floor_wall_s": round(floor_wall, 2),
        "floor_mb_per_s": round(
            sum(f["bytes"] for figures in floor.values() for f in figures) / _MB / floor_wall, 1
        ),
        "peak_rss_mb": round(peak_rss_mb),
        "stages": {
            s.name: {
                "wall_s": round(s.wall_s, 3),
                "cpu_s": round(s.cpu_s, 3),
                "peak_rss_mb": round(s.peak_rss_mb),
            }
            for s in stages
        },
        "streamed": streamed,
        "speedup_vs_pyomop": None,
    }
    peers = {s.name: s for s in peer}
    ours = peers["ours: Bulk NDJSON -> DuckDB"]
    summary["bulk_resources"] = counts["FHIR bulk"]
    summary["ours_bulk_wall_s"] = round(ours.wall_s, 2)
    if "pyomop: Bulk NDJSON -> sqlite" in peers:
        setup, load = peers["pyomop: create CDM + vocabulary"], peers["pyomop: Bulk NDJSON -> sqlite"]
        summary["pyomop_load_wall_s"] = round(load.wall_s, 2)
        summary["pyomop_setup_wall_s"] = round(setup.wall_s, 2)
        # the same task on both sides: an empty CDM with its vocabulary, then the NDJSON folder loaded
        summary["speedup_vs_pyomop"] = round((setup.wall_s + load.wall_s) / ours.wall_s, 1)
        summary["speedup_vs_pyomop_cpu"] = round((setup.cpu_s + load.cpu_s) / ours.cpu_s, 1)
        # pyomop's load alone (its CDM and vocabulary made beforehand) against the whole of ours
        summary["speedup_vs_pyomop_load_only"] = round(load.wall_s / ours.wall_s, 1)
    return summary


def print_table(result: dict) -> None:
    counts, patients = result["counts"], result["patients"]
    bulk = (counts["FHIR bulk"], result["peer_patients"])
    per_stage = {  # resources and patients each stage works on (default: all of them)
        "floor: orjson FHIR": (counts["FHIR"], patients),
        "floor: orjson openEHR": (counts["openEHR"], patients),
        "ours: Bulk NDJSON -> DuckDB": bulk,
        "pyomop: create CDM + vocabulary": (0, 0),
        "pyomop: Bulk NDJSON -> sqlite": bulk,
    }
    total = counts["FHIR"] + counts["openEHR"]
    size = result["bytes"]
    print(
        f"\n{patients:,} patients: {counts['FHIR']:,} FHIR resources, {counts['openEHR']:,} openEHR"
        f" compositions; JSON {size['FHIR'] / _MB:,.0f} MB FHIR, {size['openEHR'] / _MB:,.0f} MB openEHR;"
        f" peer input: {counts['FHIR bulk']:,} Bulk resources of {result['peer_patients']} patients"
    )
    header = f"{'stage':<34}{'wall s':>9}{'CPU s':>9}{'resources/s':>13}{'patients/s':>12}{'peak RSS MB':>13}"
    print(header)
    print("-" * len(header))
    floor_stages = [f["stage"] for f in result["floor"]]
    sections = (("pipeline", result["stages"]), ("parse floor", floor_stages), ("peer", result["peer"]))
    for title, stages in sections:
        print(f"[{title}]")
        for s in stages:
            records, people = per_stage.get(s.name, (total, patients))
            rate = f"{records / s.wall_s:,.0f}" if records else "-"
            people_rate = f"{people / s.wall_s:,.1f}" if people else "-"
            print(
                f"{s.name:<34}{s.wall_s:>9.2f}{s.cpu_s:>9.2f}{rate:>13}{people_rate:>12}{s.peak_rss_mb:>13,.0f}"
            )
            if s.name == _STREAMED:
                parts = result["streamed"]
                print(f"  in {parts['batches']} batches, wall s: ", end="")
                print(", ".join(f"{k} {v:.2f}" for k, v in parts.items() if k != "batches"))
    summary = result["summary"]
    print(
        f"{'pipeline total':<34}{summary['wall_s']:>9.2f}{summary['cpu_s']:>9.2f}"
        f"{summary['resources_per_s']:>13,}{summary['patients_per_s']:>12,.1f}{summary['peak_rss_mb']:>13,}"
    )
    print(
        f"fraction of the parse floor: end to end {summary['fraction_of_parse_floor']:.1%},"
        f" read+map {summary['fraction_of_parse_floor_read_map']:.1%};"
        f" speed-up over pyomop: {summary['speedup_vs_pyomop'] or 'not measured'}x"
    )


if __name__ == "__main__":
    main()
