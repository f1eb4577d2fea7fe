"""The Dagster code location: it loads, its asset graph is what we meant, the landing sensor works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from pipelines.definitions import defs
from pipelines.defs.automation import batch_fingerprint, landing_zone
from pipelines.defs.settings import PasserelleSettings

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.txt"
REPO = Path(__file__).resolve().parents[1]


def _graph_lines() -> list[str]:
    graph = defs.resolve_asset_graph()
    lines = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        parents = ",".join(sorted(p.to_user_string() for p in node.parent_keys))
        partitioned = "partitioned" if node.partitions_def else "-"
        lines.append(f"{key.to_user_string()} [{node.group_name}] {partitioned} <- {parents}")
    for check in sorted(graph.asset_check_keys, key=lambda k: k.to_user_string()):
        lines.append(f"check {check.to_user_string()}")
    return lines


def test_asset_graph_matches_the_snapshot():
    """A refactor cannot change the graph silently: update tests/snapshots/asset_graph.txt on purpose."""
    current = "\n".join(_graph_lines()) + "\n"
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(current)
    assert current == SNAPSHOT.read_text()


def test_every_asset_has_a_group_kinds_and_a_description():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.group_name in {"vocabulary", "staging", "cdm", "derived", "quality", "exports"}, key
        assert node.description and len(node.description.split()) >= 5, key  # a sentence, not a label
        assert node.kinds, key


def test_writers_share_one_pool():
    graph = defs.resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    for writer in ("vocabulary", "person", "measurement", "observation_period"):
        assert pools[writer] == {"duckdb_writer"}, writer
    assert not pools["fhir_staging"] and not pools["openehr_staging"]  # parsing runs in parallel


def test_dagster_cli_validates_the_workspace(tmp_path):
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    dagster = str(Path(sys.executable).parent / "dagster")
    result = subprocess.run(
        [dagster, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_landing_sensor_turns_new_batches_into_partitioned_runs(tmp_path):
    landing = tmp_path / "landing"
    (landing / "2026-11-01" / "fhir").mkdir(parents=True)
    (landing / "2026-11-01" / "fhir" / "bundle.json").write_text('{"resourceType": "Bundle"}')
    (landing / "2026-11-02" / "openehr").mkdir(parents=True)
    (landing / "2026-11-02" / "openehr" / "page.json").write_text('{"rows": []}')
    settings = PasserelleSettings(landing=str(landing))
    with dg.instance_for_test() as instance:
        first = landing_zone(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
        assert [r.partition_key for r in first.run_requests] == ["2026-11-01", "2026-11-02"]
        assert first.dynamic_partitions_requests[0].partition_keys == ["2026-11-01", "2026-11-02"]
        instance.add_dynamic_partitions("landing_batches", ["2026-11-01", "2026-11-02"])

        again = landing_zone(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
        assert [r.run_key for r in again.run_requests] == [r.run_key for r in first.run_requests]
        assert again.dynamic_partitions_requests == []  # nothing new: re-detection is harmless

        (landing / "2026-11-02" / "openehr" / "page2.json").write_text('{"rows": [[1]]}')
        changed = landing_zone(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
        assert changed.run_requests[0].run_key == first.run_requests[0].run_key
        assert changed.run_requests[1].run_key != first.run_requests[1].run_key


def test_sensor_skips_without_a_landing_folder(tmp_path):
    settings = PasserelleSettings(landing=str(tmp_path / "missing"))
    with dg.instance_for_test() as instance:
        result = landing_zone(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
    assert "does not exist yet" in result.skip_reason.skip_message


def test_fingerprint_changes_with_content(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    before = batch_fingerprint(tmp_path)
    (tmp_path / "a.json").write_text('{"x": 1}')
    assert batch_fingerprint(tmp_path) != before
