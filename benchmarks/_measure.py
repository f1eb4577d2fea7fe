"""Wall time, CPU time and peak resident memory of benchmark stages (this process and its children).

CPU time counts every thread of the process (Polars and DuckDB run their own) plus the children it has
waited for (process pools, a peer's subprocess): on a shared machine it says what the work cost even
when the wall clock says how busy the neighbours were. Peak memory is sampled from /proc every 20 ms
over the process tree, because ``ru_maxrss`` only keeps the largest single process, never a stage's.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SAMPLE_SECONDS = 0.02


@dataclass
class Stage:
    name: str
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB (0 for a process that has ended)."""
    total_kb = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:  # ended between listing and reading
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total_kb += int(line.split()[1])
                break
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                pending.extend(int(child) for child in task.read_text().split())
            except OSError:
                continue
    return total_kb / 1024


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Meter:
    """Times stages and samples the memory of a process tree (this one by default) in a thread."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []
        self._watched = os.getpid()
        self._peak = 0.0
        self._overall_peak = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(_SAMPLE_SECONDS):
            self._observe()

    def _observe(self) -> None:
        watched = self._watched
        rss = tree_rss_mb(watched)
        with self._lock:
            self._peak = max(self._peak, rss)
            if watched == os.getpid():
                self._overall_peak = max(self._overall_peak, rss)

    @contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Measure the block as one stage; the figures are filled in when it ends."""
        figures = Stage(name)
        self._observe()
        with self._lock:
            self._peak = 0.0
        self._observe()
        started, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield figures
        finally:
            figures.wall_s = time.perf_counter() - started
            figures.cpu_s = _cpu_seconds() - cpu
            self._observe()
            with self._lock:
                figures.peak_rss_mb = self._peak
            self.stages.append(figures)
            print(f"  {name}: {figures.wall_s:.2f} s wall, {figures.cpu_s:.2f} s CPU", file=sys.stderr)

    def run(self, name: str, command: list[str], *, cwd: Path, log: Path) -> Stage:
        """Run ``command`` as one stage, its memory sampled over its own process tree (not ours)."""
        with log.open("wb") as out, self.stage(name) as figures:
            process = subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
            with self._lock:
                self._watched, self._peak = process.pid, 0.0
            try:
                code = process.wait()
            finally:
                with self._lock:
                    self._watched = os.getpid()
        if code != 0:
            raise RuntimeError(f"{name}: {command[0]} exited with {code}; see {log}")
        return figures

    @property
    def overall_peak_rss_mb(self) -> float:
        """Highest memory of this process tree seen so far (the peer's subprocess stages excluded)."""
        return self._overall_peak

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
