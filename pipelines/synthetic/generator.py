"""Write synthetic sources for N people: FHIR transaction Bundles, a Bulk Data export, openEHR AQL pages.

The N people are split over three sources that never share a person (half in Bundles, a quarter each in
the Bulk export and in openEHR), so a warehouse built from all three holds exactly N persons. Each person
is simulated, written and forgotten before the next one (memory stays flat whatever N is), and every
file is encoded with orjson from values drawn off seeded generators: one seed, byte-identical files.
A handful of deliberately broken records is added, each listed in ``manifest.json`` with its place, so
the pipeline's quarantine can be checked against what was planted.
"""

from __future__ import annotations

import datetime as dt
import gzip
import math
import random
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from pipelines.errors import PasserelleError
from pipelines.synthetic.catalogue import CATALOGUE_FILE, Catalogue, load_catalogue
from pipelines.synthetic.fhir import LOINC, SNOMED, UCUM, patient_resources
from pipelines.synthetic.history import simulate
from pipelines.synthetic.openehr import ehr_compositions, entry_archetypes

MANIFEST = "manifest.json"
BULK_GZIP_TYPE = "Immunization"  # the one Bulk type written as .ndjson.gz, as servers may compress
BULK_TYPES = (
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Procedure",
    "Immunization",
)
BULK_DELETED_FILE = "deleted.ndjson"
# share of a Bulk patient's Observations reported deleted since the previous export instead of exported
BULK_DELETED_SHARE = 1 / 150
_AQL = "SELECT e/ehr_id/value AS ehr_id, c FROM EHR e CONTAINS COMPOSITION c"
_SOURCE_FOLDERS = ("fhir/bundles", "fhir/bulk", "openehr/aql")


@dataclass(frozen=True)
class GenerationReport:
    """What was written: the folder and the manifest (also saved as ``<out_dir>/manifest.json``)."""

    out_dir: Path
    manifest: dict[str, Any]

    @property
    def patients(self) -> int:
        return self.manifest["patients"]

    @property
    def broken(self) -> dict[str, int]:
        return self.manifest["broken"]


def generate(
    out_dir: Path, patients: int, *, seed: int = 42, bundle_size: int = 100, page_size: int = 500
) -> GenerationReport:
    """Write sources for ``patients`` people under ``out_dir`` (its generated sub-folders are replaced).

    ``bundle_size`` people go in one transaction Bundle file, ``page_size`` compositions in one AQL page.
    """
    if patients < 3:
        raise PasserelleError(f"--patients must be at least 3 (one per source), got {patients}")
    if bundle_size < 1 or page_size < 1:
        raise PasserelleError("bundle size and page size must be at least 1")
    out_dir = Path(out_dir)
    try:
        for sub in _SOURCE_FOLDERS:
            shutil.rmtree(out_dir / sub, ignore_errors=True)
            (out_dir / sub).mkdir(parents=True)
    except OSError as error:
        raise PasserelleError(f"cannot write synthetic sources into {out_dir}: {error.strerror}") from error
    catalogue = load_catalogue()
    n_bundle = math.ceil(patients / 2)
    n_bulk = math.ceil((patients - n_bundle) / 2)
    n_openehr = patients - n_bundle - n_bulk
    broken: list[dict[str, Any]] = []
    sections = {
        "fhir_bundles": _write_bundles(out_dir, n_bundle, seed, bundle_size, catalogue, broken),
        "fhir_bulk": _write_bulk(out_dir, n_bulk, seed, catalogue, broken),
        "openehr_aql": _write_aql_pages(out_dir, n_openehr, seed, page_size, catalogue, broken),
    }
    manifest = {
        "generator": {"seed": seed, "as_of": catalogue.as_of.isoformat(), "catalogue": CATALOGUE_FILE.name},
        "patients": patients,
        "deaths": sum(section.get("deaths", 0) for section in sections.values()),
        **sections,
        "broken": dict(sorted(Counter(record["kind"] for record in broken).items())),
        "broken_records": broken,
    }
    (out_dir / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return GenerationReport(out_dir, manifest)


# --- FHIR transaction Bundles --------------------------------------------------------------------
def _write_bundles(
    out_dir: Path, n: int, seed: int, bundle_size: int, catalogue: Catalogue, broken: list[dict[str, Any]]
) -> dict[str, Any]:
    folder = "fhir/bundles"
    resources: Counter[str] = Counter()
    deaths = files = 0
    for files, first in enumerate(range(0, n, bundle_size), start=1):
        name = f"{folder}/bundle-{files:05d}.json"
        entries: list[bytes] = []
        for index in range(first, min(n, first + bundle_size)):
            history = simulate(catalogue, seed, "bundle", index)
            deaths += history.deceased is not None
            for resource in patient_resources(history, f"B{index:07d}", _urn, catalogue):
                entries.append(_transaction_entry(resource))
                resources[resource["resourceType"]] += 1
            if index == 0:
                condition = _impossible_date_condition(seed, history.id, catalogue)
                broken.append(_planted("impossible_date", name, "entry", len(entries), "Condition"))
                entries.append(_transaction_entry(condition))
        bundle_id = uuid.uuid5(uuid.NAMESPACE_URL, f"passerelle:{seed}:bundle:{files}")
        head = f'{{"resourceType":"Bundle","id":"{bundle_id}","type":"transaction","entry":['.encode()
        (out_dir / name).write_bytes(head + b",".join(entries) + b"]}")
    return {
        "folder": folder,
        "files": files,
        "patients": n,
        "deaths": deaths,
        "resources": dict(sorted(resources.items())),
    }


def _urn(_resource_type: str, resource_id: str) -> str:
    return f"urn:uuid:{resource_id}"


def _transaction_entry(resource: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "fullUrl": f"urn:uuid:{resource['id']}",
            "resource": resource,
            "request": {"method": "POST", "url": resource["resourceType"]},
        }
    )


# --- FHIR Bulk Data export -----------------------------------------------------------------------
def _write_bulk(
    out_dir: Path, n: int, seed: int, catalogue: Catalogue, broken: list[dict[str, Any]]
) -> dict[str, Any]:
    folder = "fhir/bulk"
    files = {t: f"{t}.ndjson.gz" if t == BULK_GZIP_TYPE else f"{t}.ndjson" for t in BULK_TYPES}
    sinks = {t: _open_sink(out_dir / folder / name) for t, name in files.items()}
    lines: Counter[str] = Counter()
    resources: Counter[str] = Counter()
    deleted: Counter[str] = Counter()
    deaths = 0
    with (out_dir / folder / BULK_DELETED_FILE).open("wb") as deleted_sink:
        for index in range(n):
            history = simulate(catalogue, seed, "bulk", index)
            deaths += history.deceased is not None
            chooser = random.Random(f"passerelle:{seed}:bulk-deleted:{index}")
            gone: list[str] = []
            for resource in patient_resources(history, f"K{index:07d}", _relative, catalogue):
                kind = resource["resourceType"]
                if kind == "Observation" and chooser.random() < BULK_DELETED_SHARE:
                    gone.append(f"Observation/{resource['id']}")  # a leaf: nothing else refers to it
                    deleted[kind] += 1
                    continue
                sinks[kind].write(orjson.dumps(resource) + b"\n")
                lines[kind] += 1
                resources[kind] += 1
            if gone:
                deleted_sink.write(orjson.dumps(_deletion_bundle(seed, index, gone)) + b"\n")
            if index == 0:
                _plant_bulk_records(sinks["Observation"], lines, seed, history.id, catalogue, files, broken)
    for sink in sinks.values():
        sink.close()
    return {
        "folder": folder,
        "patients": n,
        "deaths": deaths,
        "resources": dict(sorted(resources.items())),
        "files": {files[t]: lines[t] for t in BULK_TYPES},
        "deleted_file": BULK_DELETED_FILE,
        "deleted": dict(deleted),
    }


def _relative(resource_type: str, resource_id: str) -> str:
    return f"{resource_type}/{resource_id}"


def _open_sink(path: Path) -> BinaryIO:
    """A binary file; gzip without a timestamp or name in its header, so the bytes depend on the seed only."""
    if path.suffix == ".gz":
        return gzip.GzipFile(filename="", mode="wb", fileobj=path.open("wb"), mtime=0)
    return path.open("wb")


def _deletion_bundle(seed: int, index: int, references: list[str]) -> dict[str, Any]:
    """Bulk Data ``deleted`` output: a transaction Bundle of DELETE requests (FHIR Bulk Data IG 2.0)."""
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"passerelle:{seed}:bulk-deleted:{index}")),
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": reference}} for reference in references],
    }


# --- openEHR AQL result pages --------------------------------------------------------------------
def _write_aql_pages(
    out_dir: Path, n: int, seed: int, page_size: int, catalogue: Catalogue, broken: list[dict[str, Any]]
) -> dict[str, Any]:
    folder = "openehr/aql"
    kinds: Counter[str] = Counter()
    entries: Counter[str] = Counter()
    rows: list[bytes] = []
    pages = 0
    planted: set[str] = set()

    def flush() -> None:
        nonlocal pages
        pages += 1
        _write_page(out_dir / folder / f"page-{pages:04d}.json", rows, (pages - 1) * page_size, page_size)
        rows.clear()

    for index in range(n):
        history = simulate(catalogue, seed, "openehr", index)
        for kind, composition in ehr_compositions(history, catalogue):
            rows.append(orjson.dumps([history.id, composition]))
            kinds[kind] += 1
            entries.update(entry_archetypes(composition))
            if index == 0 and kind == "encounter" and "unknown_rm_type" not in planted:
                planted.add("unknown_rm_type")
                broken.append(
                    _planted(
                        "unknown_rm_type",
                        f"{folder}/page-{pages + 1:04d}.json",
                        "row",
                        len(rows),
                        "COMPOSITION",
                    )
                )
                rows.append(orjson.dumps([history.id, _unknown_rm_type(composition, seed)]))
            if len(rows) >= page_size:
                flush()
    if rows or pages == 0:
        flush()
    return {
        "folder": folder,
        "pages": pages,
        "ehrs": n,
        "compositions": dict(sorted(kinds.items())),
        "entries": dict(sorted(entries.items())),
    }


def _write_page(path: Path, rows: list[bytes], offset: int, fetch: int) -> None:
    """One page of an openEHR REST query result (ResultSet: meta, q, columns, rows)."""
    head = orjson.dumps(
        {
            "meta": {
                "_type": "RESULTSET",
                "_schema_version": "1.0.0",
                "_executed_aql": _AQL,
                "offset": offset,
                "fetch": fetch,
                "resultsize": len(rows),
            },
            "q": _AQL,
            "columns": [{"name": "ehr_id", "path": "/ehr_id/value"}, {"name": "c", "path": "c"}],
        }
    )
    path.write_bytes(head[:-1] + b',"rows":[' + b",".join(rows) + b"]}")


# --- deliberately broken records -----------------------------------------------------------------
def _planted(kind: str, file: str, position_kind: str, position: int, record_type: str) -> dict[str, Any]:
    """Where a broken record sits: ``entry`` (0-based index in a Bundle), ``line`` (1-based line of an
    NDJSON file) or ``row`` (0-based row of an AQL page)."""
    return {"kind": kind, "file": file, position_kind: position, "record_type": record_type}


def _broken_id(seed: int, kind: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"passerelle:{seed}:broken:{kind}"))


def _impossible_date_condition(seed: int, patient_id: str, catalogue: Catalogue) -> dict[str, Any]:
    condition = catalogue.acute[0]
    year = catalogue.as_of.year - 1
    return {
        "resourceType": "Condition",
        "id": _broken_id(seed, "impossible_date"),
        "code": {"coding": [{"system": SNOMED, "code": condition.code, "display": condition.display}]},
        "subject": {"reference": f"urn:uuid:{patient_id}"},
        "onsetDateTime": f"{year}-02-30",  # February has no 30th
        "recordedDate": f"{year}-03-01",
    }


def _plant_bulk_records(
    sink: BinaryIO,
    lines: Counter[str],
    seed: int,
    patient_id: str,
    catalogue: Catalogue,
    files: dict[str, str],
    broken: list[dict[str, Any]],
) -> None:
    """Into Observation.ndjson: a line cut short (malformed JSON), and an Observation without subject."""
    vital = catalogue.vitals["heart_rate"]
    observation = {
        "resourceType": "Observation",
        "id": _broken_id(seed, "missing_subject"),
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": vital.loinc, "display": vital.display}]},
        "effectiveDateTime": dt.datetime(catalogue.as_of.year, 1, 2, 9, 0, tzinfo=dt.UTC).isoformat(),
        "valueQuantity": {"value": 70, "unit": vital.unit, "system": UCUM, "code": vital.unit},
    }
    name = f"fhir/bulk/{files['Observation']}"
    truncated = orjson.dumps(observation | {"id": _broken_id(seed, "malformed_json")})[:60]
    for kind, line in (("malformed_json", truncated), ("missing_subject", orjson.dumps(observation))):
        sink.write(line + b"\n")
        lines["Observation"] += 1
        broken.append(_planted(kind, name, "line", lines["Observation"], "Observation"))


def _unknown_rm_type(composition: dict[str, Any], seed: int) -> dict[str, Any]:
    """A copy of a real composition whose first entry claims an RM class that does not exist."""
    copy = orjson.loads(orjson.dumps(composition))
    copy["uid"]["value"] = f"{_broken_id(seed, 'unknown_rm_type')}::passerelle.synthetic::1"
    copy["content"][0]["_type"] = "OBSERVATION_SERIES"
    return copy
