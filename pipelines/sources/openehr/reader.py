"""Read openEHR exports: AQL result sets (one file or a folder of pages) and folders per EHR.

A folder per EHR is named by its ehr_id and holds canonical-JSON compositions, optionally its
``ehr_status.json``. An AQL page is ``{"columns": [...], "rows": [[...], ...]}`` whose columns
include the EHR id (path ending in ``ehr_id/value``) and a COMPOSITION. Every composition is
decoded (``canonical.py``) and walked (``flatten.py``) once, then handed on as soon as it is read:
``read_openehr`` gathers the long frame, the mapper maps it there and then (``collect.py``). One
that cannot be read is quarantined with its file, position, path and reason; the others still load.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import polars as pl
from msgspec import UNSET

from pipelines.errors import PasserelleError
from pipelines.mapping.batch import QUARANTINE_SCHEMA
from pipelines.sources.openehr.canonical import EMPTY, DecodeError, Node, decode, raw_value
from pipelines.sources.openehr.flatten import (
    ELEMENT_SCHEMA,
    CompositionError,
    FlatComposition,
    composition_uid,
    elements_frame,
    walk_composition,
)
from pipelines.sources.openehr.times import configured_zone

COMPOSITION = "COMPOSITION"
EHR_STATUS = "EHR_STATUS"
FILE = "FILE"
COMPOSITION_SCHEMA = {
    "composition_uid": pl.Utf8,
    "composition_version": pl.Utf8,
    "ehr_id": pl.Utf8,
    "template_id": pl.Utf8,
    "composition_archetype": pl.Utf8,
    "source_file": pl.Utf8,
    "position": pl.Int64,
}
EHR_SCHEMA = {"ehr_id": pl.Utf8, "source_file": pl.Utf8, "has_status": pl.Boolean}


@dataclass
class OpenEhrExport:
    """What the reader found: the long frame, one row per composition read, the EHRs, the rest."""

    elements: pl.DataFrame
    compositions: pl.DataFrame
    ehrs: pl.DataFrame
    quarantine: pl.DataFrame
    inputs: dict[str, int] = field(default_factory=dict)
    superseded: int = 0  # compositions replaced by a newer version of the same uid in this batch


# what a reader does with each composition it walked: (sequence number, its COMPOSITION_SCHEMA row,
# what the walk gave)
Keep = Callable[[int, dict, Any], None]
# how a composition is walked: walk_composition's arguments, raises CompositionError
Walk = Callable[..., Any]


def read_openehr(paths: list[Path], *, time_zone: str | None = None) -> OpenEhrExport:
    """Read every input; raises PasserelleError only for a path that does not exist."""
    walked: dict[int, tuple[dict, FlatComposition]] = {}
    export = read_compositions(
        paths, lambda sequence, row, flat: walked.__setitem__(sequence, (row, flat)), time_zone=time_zone
    )
    kept = export.compositions["sequence"].to_list()
    rows = [row for sequence in sorted(kept) for row in walked[sequence][1].rows()]
    compositions = [walked[sequence][0] for sequence in kept]
    export.elements = elements_frame(rows)
    export.compositions = pl.DataFrame(compositions, schema=COMPOSITION_SCHEMA)
    return export


def read_compositions(
    paths: list[Path], keep: Keep, *, time_zone: str | None = None, walk: Walk = walk_composition
) -> OpenEhrExport:
    """Read every input, handing what ``walk`` gave of each composition to ``keep`` as soon as it
    is read, so a caller can map it and let its nodes go. ``compositions`` of the result has only the
    columns ``composition_uid`` and ``sequence``: the compositions that stay (a newer version of a
    uid replaces an older one, read before or after it); ``elements`` is empty."""
    reader = _Reader(configured_zone(time_zone), keep, walk)
    with _collector_paused():
        for path in paths:
            path = Path(path)
            if path.is_dir():
                for file in sorted(p for p in path.rglob("*.json") if p.is_file()):
                    reader.read_file(file)
            elif path.is_file():
                reader.read_file(path)
            else:
                raise PasserelleError(f"{path}: no such file or folder of openEHR compositions")
    return reader.result()


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector paused while reading. Decoded JSON and walked nodes hold no cycles
    (reference counting frees them), but the collector kept scanning every live object as the kept
    rows grew: 47 full collections at 10 k patients, 13.7 -> 9.7 CPU s for reading and mapping."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Reader:
    def __init__(self, zone: ZoneInfo, keep: Keep, walk: Walk) -> None:
        self.zone = zone
        self.keep = keep
        self.walk = walk
        self.sequence = 0
        self.kept: dict[str, tuple[int, str | None]] = {}  # uid -> sequence and version that stay
        self.ehrs: dict[str, dict] = {}
        self.quarantine: list[dict] = []
        self.inputs: dict[str, int] = {}
        self.superseded = 0
        self.data = b""  # the file being read

    def read_file(self, path: Path) -> None:
        try:
            self.data = path.read_bytes()
            document = decode(self.data)
        except (OSError, DecodeError) as error:
            self._count(FILE)
            reason = "the file is not JSON" if isinstance(error, DecodeError) else "the file cannot be read"
            self._quarantine(path, None, FILE, None, "malformed_json", reason)
            return
        if isinstance(document, Node) and isinstance(document.rows, list) and document.columns is not UNSET:
            self._read_page(path, document)
        elif isinstance(document, Node) and document.rm_type == EHR_STATUS:
            self._count(EHR_STATUS)
            self._ehr(path.parent.name, path, has_status=True)
        elif _looks_like_composition(document):
            self._read_composition(document, path.parent.name, path, 0, None)
        else:
            self._count(FILE)
            self._quarantine(
                path,
                None,
                FILE,
                None,
                "unrecognised",
                "neither a COMPOSITION, an EHR_STATUS nor an AQL result set (columns and rows)",
            )

    def _read_page(self, path: Path, page: Node) -> None:
        columns = page.columns if isinstance(page.columns, list) else []
        ehr_column = next(
            (
                i
                for i, c in enumerate(columns)
                if isinstance(c, dict) and "ehr_id" in str(c.get("path", "")) + str(c.get("name", ""))
            ),
            None,
        )
        for position, row in enumerate(page.rows):
            cell = (
                next((i for i, cell in enumerate(row) if _looks_like_composition(cell)), None)
                if isinstance(row, list)
                else None
            )
            if cell is None:
                self._count(COMPOSITION)
                self._quarantine(
                    path, position, COMPOSITION, None, "malformed", "the AQL row holds no COMPOSITION"
                )
                continue
            ehr_id = row[ehr_column] if ehr_column is not None and ehr_column < len(row) else None
            if not isinstance(ehr_id, str) or not ehr_id:
                self._count(COMPOSITION)
                self._quarantine(
                    path,
                    position,
                    COMPOSITION,
                    composition_uid(row[cell])[0],
                    "missing_subject",
                    "the AQL row has no ehr_id column (select e/ehr_id/value beside the composition)",
                )
                continue
            self._read_composition(row[cell], ehr_id, path, position, cell)

    def _read_composition(
        self, composition: Node, ehr_id: str, path: Path, position: int, cell: int | None
    ) -> None:
        """``cell``: the composition's column in an AQL row, None when it is the whole file."""
        self._count(COMPOSITION)
        uid, version = composition_uid(composition)
        if uid is None:  # an export without uids: a stable id from the EHR and the content
            text = orjson.dumps(self._original(position, cell), option=orjson.OPT_SORT_KEYS)
            uid = f"sha1-{hashlib.sha1(ehr_id.encode() + text).hexdigest()[:32]}"
        if composition.context == EMPTY and self._original(position, cell).get("context"):
            # only attributes Node leaves out: a context all the same, whose start time is missing
            composition.context = Node(rm_type=None)
        try:
            flat = self.walk(
                composition,
                uid=uid,
                version=version,
                ehr_id=ehr_id,
                zone=self.zone,
                source_file=str(path),
                position=position,
            )
        except CompositionError as error:
            self._quarantine(path, position, COMPOSITION, uid, error.code, f"{error.reason} at {error.path}")
            return
        previous = self.kept.get(uid)
        if previous is not None:
            self.superseded += 1
            if _version_number(version) < _version_number(previous[1]):
                return
        self.sequence += 1
        self.kept[uid] = (self.sequence, version)
        details = raw_value(composition.archetype_details) or {}
        row = {
            "composition_uid": uid,
            "composition_version": version,
            "ehr_id": ehr_id,
            "template_id": (details.get("template_id") or {}).get("value"),
            "composition_archetype": composition.archetype_node_id,
            "source_file": str(path),
            "position": position,
        }
        self.keep(self.sequence, row, flat)
        self._ehr(ehr_id, path, has_status=False)

    def _original(self, position: int, cell: int | None) -> dict:
        """The composition as plain JSON, every attribute kept (rarely needed: decoded again)."""
        document = orjson.loads(self.data)
        return document if cell is None else document["rows"][position][cell]

    def _ehr(self, ehr_id: str, path: Path, *, has_status: bool) -> None:
        known = self.ehrs.setdefault(
            ehr_id, {"ehr_id": ehr_id, "source_file": str(path), "has_status": False}
        )
        known["has_status"] = known["has_status"] or has_status

    def _count(self, record_type: str) -> None:
        self.inputs[record_type] = self.inputs.get(record_type, 0) + 1

    def _quarantine(self, path, position, record_type, record_id, code, reason) -> None:
        self.quarantine.append(
            {
                "source_format": "openehr",
                "source_file": str(path),
                "position": position,
                "record_type": record_type,
                "record_id": record_id,
                "reason_code": code,
                "reason": reason,
            }
        )

    def result(self) -> OpenEhrExport:
        return OpenEhrExport(
            elements=pl.DataFrame(schema=ELEMENT_SCHEMA),
            compositions=pl.DataFrame(
                [(uid, sequence) for uid, (sequence, _) in self.kept.items()],
                schema={"composition_uid": pl.Utf8, "sequence": pl.Int64},
                orient="row",
            ),
            ehrs=pl.DataFrame(list(self.ehrs.values()), schema=EHR_SCHEMA),
            quarantine=pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA),
            inputs=dict(self.inputs),
            superseded=self.superseded,
        )


def _looks_like_composition(value: object) -> bool:
    if not isinstance(value, Node):
        return False
    if value.rm_type == COMPOSITION:
        return True
    return value.rm_type is UNSET and str(value.archetype_node_id or "").startswith(
        "openEHR-EHR-COMPOSITION."
    )


def _version_number(version: str | None) -> int:
    return int(version) if version and version.isdigit() else 0
