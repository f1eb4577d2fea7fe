"""benchmarks/end_to_end.py as a user runs it (a real process), on a few patients, without the peer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _measure import Meter, tree_rss_mb  # noqa: E402  (benchmarks/ is a folder of scripts)


@pytest.mark.slow
def test_benchmark_reports_every_stage_and_the_summary_last(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "end_to_end.py"),
            "--patients",
            "12",
            "--keep",
            str(tmp_path),
            "--skip-pyomop",
            "--peer-patients",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    manifest = json.loads((tmp_path / "sources" / "manifest.json").read_text())
    fhir = sum(manifest["fhir_bundles"]["resources"].values()) + sum(
        manifest["fhir_bulk"]["resources"].values()
    )
    assert summary["patients"] == 12
    assert summary["resources"] == fhir + sum(manifest["openehr_aql"]["compositions"].values())
    assert set(summary["stages"]) == {
        "vocabulary",
        "read+map+load (streamed)",
        "derived tables",
        "quality checks",
    }
    streamed = summary["streamed"]
    # 12 patients: too little openEHR for a second process, and one batch of each source
    assert set(streamed) == {"FHIR read+map", "openEHR read+map", "waiting for batches", "load", "batches"}
    assert streamed["batches"] == 2
    assert streamed["waiting for batches"] + streamed["load"] == pytest.approx(
        summary["stages"]["read+map+load (streamed)"]["wall_s"], abs=0.01
    )
    assert 0 < streamed["FHIR read+map"] < summary["stages"]["read+map+load (streamed)"]["wall_s"]
    assert summary["resources_per_s"] == pytest.approx(summary["resources"] / summary["wall_s"], rel=0.01)
    assert summary["patients_per_s"] == pytest.approx(12 / summary["wall_s"], rel=0.05)
    assert 0 < summary["fraction_of_parse_floor"] < summary["fraction_of_parse_floor_read_map"]
    assert summary["peak_rss_mb"] > 100  # Polars, DuckDB and the vocabulary are in memory
    assert summary["speedup_vs_pyomop"] is None
    assert summary["bulk_resources"] > 0  # the two peer patients' Bulk resources, Procedures left out
    assert any(line.startswith("read+map+load (streamed)") for line in lines)
    assert any(line.startswith("  in 2 batches, wall s: FHIR read+map") for line in lines)
    assert (tmp_path / "warehouse.duckdb").exists() and (tmp_path / "dq" / "dq_report.html").exists()


def test_meter_measures_a_stage_of_this_process():
    meter = Meter()
    try:
        with meter.stage("busy") as stage:
            ballast = bytearray(64 * 1024 * 1024)  # touched: 64 MB resident
            deadline = time.process_time() + 0.2
            while time.process_time() < deadline:
                pass
        del ballast
    finally:
        meter.close()
    assert stage.cpu_s >= 0.2
    assert stage.wall_s >= stage.cpu_s * 0.5
    assert stage.peak_rss_mb >= 64
    assert meter.stages == [stage]


def test_tree_rss_counts_children_and_ended_processes_count_nothing():
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(48 << 20); time.sleep(30)"])
    try:
        deadline = time.monotonic() + 20
        while tree_rss_mb(child.pid) < 48 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_rss_mb(child.pid) >= 48
        assert tree_rss_mb(os.getpid()) >= tree_rss_mb(child.pid)
    finally:
        child.kill()
        child.wait()
    assert tree_rss_mb(child.pid) == 0
