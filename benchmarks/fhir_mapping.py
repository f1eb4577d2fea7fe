"""Benchmark: FHIR files -> MappedBatch (read + map), in resources per second.

By default it builds a folder of Synthea-like bundles from the shared Synthea samples: each copy gets
its own ids (every UUID is rewritten), so nothing is deduplicated away. Or give a folder of your own.

    .venv/bin/python benchmarks/fhir_mapping.py [--bundles 1000] [--folder PATH] [--repeat N] [--profile]

Prints input resources, rows, seconds for reading and for mapping, and resources per second (wall
clock, and per CPU second of this process: the machine may be shared). ``--repeat N`` maps the input
read once N times and prints the wall and CPU seconds of each mapping alone (the first includes
reading the mapping files); ``--profile`` prints a pyinstrument profile of the last mapping.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

from pyinstrument import Profiler

from pipelines.mapping.fhir.engine import map_staged
from pipelines.sources.fhir import read_fhir
from pipelines.vocab import load_vocabulary

_SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "fhir" / "synthea_r4_bundles"
_UUID = re.compile(rb"([0-9a-f]{8})-([0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


def synthea_like(folder: Path, bundles: int) -> None:
    sources = [p.read_bytes() for p in sorted(_SAMPLES.glob("*.json"))]
    if not sources:
        sys.exit(f"no Synthea samples in {_SAMPLES}; give --folder")
    for i in range(bundles):
        copy = _UUID.sub(f"{i:08x}-\\2".encode(), sources[i % len(sources)])
        (folder / f"bundle_{i:05d}.json").write_bytes(copy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=1000)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--repeat", type=int, default=1, help="map the input read once this many times")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profile of the last mapping")
    args = parser.parse_args()
    vocab = load_vocabulary()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or Path(scratch)
        if args.folder is None:
            synthea_like(folder, args.bundles)
        started, cpu = time.perf_counter(), time.process_time()
        staged = read_fhir([folder])
        read = time.perf_counter() - started
        batch = map_staged(staged, vocab)
        total = time.perf_counter() - started
        cpu = time.process_time() - cpu
        for run in range(2, args.repeat + 1):
            profiler = _profiler() if args.profile and run == args.repeat else None
            wall, cpu_map = time.perf_counter(), time.process_time()
            batch = map_staged(staged, vocab)
            wall, cpu_map = time.perf_counter() - wall, time.process_time() - cpu_map
            print(f"map {run}/{args.repeat}: {wall:.2f} s wall, {cpu_map:.2f} CPU s")
            if profiler is not None:
                profiler.stop()
                print(profiler.output_text(unicode=False, color=False))
    resources = sum(batch.inputs.values())
    rows = sum(frame.height for frame in batch.tables.values())
    print(f"input resources {resources:,}  rows {rows:,}  quarantined {batch.quarantine.height:,}")
    print(f"read {read:.2f} s ({resources / read:,.0f} resources/s)  map {total - read:.2f} s")
    print(f"total {total:.2f} s: {resources / total:,.0f} resources/s")
    print(f"CPU of this process {cpu:.2f} s: {resources / cpu:,.0f} resources per CPU second")


def _profiler() -> Profiler:
    profiler = Profiler(interval=0.002)
    profiler.start()
    return profiler


if __name__ == "__main__":
    main()
