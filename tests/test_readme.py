"""Every command in the README runs, verbatim, in a sandbox laid out the way the README assumes.

`make demo` and `make test` are run by CI (.ci/run); everything else is run here. Placeholder paths of
the README (exports/fhir, exports/aql.json, path/to/athena) are filled with generated data and the
starter vocabulary.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipelines.synthetic import generate

REPO = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def readme_blocks() -> list[str]:
    """The README's bash blocks, each one script, in order."""
    return [block.strip() for block in _BLOCK.findall((REPO / "README.md").read_text())]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    (root / ".venv").symlink_to(Path(sys.prefix))
    (root / "workspace.yaml").symlink_to(REPO / "workspace.yaml")
    (root / "dagster_home").mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", root / "dagster_home" / "dagster.yaml")
    sources = root / "generated"
    generate(sources, 12, seed=5)
    (root / "exports").mkdir()
    shutil.copytree(sources / "fhir", root / "exports" / "fhir")
    shutil.copy(next((sources / "openehr" / "aql").glob("*.json")), root / "exports" / "aql.json")
    shutil.copytree(REPO / "vocab" / "starter", root / "path" / "to" / "athena")
    return root


def _shell(command: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=timeout, executable="/bin/bash"
    )


def test_the_readme_has_the_two_commands_first():
    first = [line.split("#")[0].strip() for line in readme_blocks()[0].splitlines()]
    assert first == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert ci[-2:] == ["make test", "make demo"]


@pytest.mark.slow
def test_every_readme_command_runs(sandbox: Path):
    demo = _shell(".venv/bin/passerelle demo --patients 12", sandbox)  # what `make demo` runs, smaller
    assert demo.returncode == 0, demo.stderr[-2000:]
    blocks = readme_blocks()[1:]  # the first holds `make demo` and `make test`, which CI runs
    for script in blocks:
        if "dagster dev" in script:  # a server: started, asked for its asset graph, stopped
            _serve_dagster(script, sandbox)
        else:
            result = _shell(f"set -euo pipefail\n{script}", sandbox)
            assert result.returncode == 0, f"{script}\n{result.stderr[-2000:]}"
    assert len(blocks) >= 6
    assert (sandbox / "dq").is_dir() and (sandbox / "omop_parquet" / "person").is_dir()
    assert "CREATE TABLE person" in (sandbox / "cdm_postgresql.sql").read_text()


def _serve_dagster(command: str, cwd: Path) -> None:
    server = subprocess.Popen(
        command,
        shell=True,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        executable="/bin/bash",
    )
    try:
        body = b""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and b"assetNodes" not in body:
            time.sleep(2)
            try:
                request = urllib.request.Request(
                    "http://127.0.0.1:3000/graphql",
                    data=b'{"query": "{ assetNodes { assetKey { path } } }"}',
                    headers={"Content-Type": "application/json"},
                )
                body = urllib.request.urlopen(request, timeout=5).read()
            except OSError:
                continue
        assert b'"person"' in body and b'"dqd_results"' in body, "the Dagster UI did not show the asset graph"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a busy machine: the graceful stop takes too long, end it
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
