"""The columnar vocabulary cache: the CSVs become typed Parquet once, keyed by their content.

The key hashes the bytes of every vocabulary file (streamed, never loaded whole) together with the
cache format version, so an edited file — even one of the same size and mtime — builds a new cache,
and a format change in this code never reads an old one. A build writes into a temporary folder and
renames it into place, so an interrupted build leaves nothing half-written behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from pipelines.errors import PasserelleError
from pipelines.vocab.athena import convert_to_parquet, find_files, vocabulary_tables
from pipelines.vocab.resolution import build_lookup

FORMAT_VERSION = "1"
MANIFEST = "manifest.json"
LOOKUP_FILE = "lookup.parquet"


def cache_root() -> Path:
    """``$PASSERELLE_CACHE_DIR`` or ``~/.cache/passerelle``."""
    configured = os.environ.get("PASSERELLE_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "passerelle"


def content_key(folder: Path) -> str:
    """sha256 over the format version and, per vocabulary table, its name and file bytes."""
    files = find_files(folder)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # hashlib releases the GIL
        digests = list(pool.map(_file_digest, [f.path for f in files]))
    digest = hashlib.sha256(f"passerelle-vocab-cache {FORMAT_VERSION}\n".encode())
    for table_file, file_digest in zip(files, digests, strict=True):
        digest.update(f"{table_file.table}\n".encode() + file_digest)
    return digest.hexdigest()


def _file_digest(path: Path | None) -> bytes:
    if path is None:
        return b"missing\n"
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").digest()


def ensure_cache(folder: Path) -> tuple[Path, bool]:
    """The cache folder of this vocabulary download, built if needed; True when it was built now."""
    folder = folder.resolve()
    target = cache_root() / "vocab" / content_key(folder)
    if (target / MANIFEST).is_file():
        return target, False
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        manifest = _build(folder, building)
        (building / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        try:
            building.rename(target)
        except OSError:  # another process built the same key meanwhile: theirs is as good as ours
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target, True


def read_manifest(cache_dir: Path) -> dict:
    return json.loads((cache_dir / MANIFEST).read_text(encoding="utf-8"))


def _build(folder: Path, out: Path) -> dict:
    tables: dict[str, dict] = {}
    specs = {t.name: t for t in vocabulary_tables()}
    for table_file in find_files(folder):
        if table_file.path is None:
            tables[table_file.table] = {"status": "missing", "rows": 0}
            continue
        rows = convert_to_parquet(
            table_file.path, specs[table_file.table], out / f"{table_file.table}.parquet"
        )
        tables[table_file.table] = {
            "status": "loaded" if rows else "empty",
            "rows": rows,
            "file": table_file.path.name,
        }
    if tables["concept"]["status"] == "missing":
        raise PasserelleError(f"{folder}: no CONCEPT.csv; is this an OHDSI vocabulary download?")
    concept = pl.scan_parquet(out / "concept.parquet")
    relationship_file = out / "concept_relationship.parquet"
    relationship = (
        pl.scan_parquet(relationship_file)
        if relationship_file.exists()
        else pl.LazyFrame(
            schema={
                "concept_id_1": pl.Int32,
                "concept_id_2": pl.Int32,
                "relationship_id": pl.Utf8,
                "invalid_reason": pl.Utf8,
            }
        )
    )
    build_lookup(concept, relationship).sink_parquet(out / LOOKUP_FILE, compression="zstd")
    version = _release(out)
    return {"format_version": FORMAT_VERSION, "source": str(folder), "release": version, "tables": tables}


def _release(out: Path) -> str:
    path = out / "vocabulary.parquet"
    if not path.exists():
        return "unknown"
    row = (
        pl.scan_parquet(path).filter(pl.col("vocabulary_id") == "None").select("vocabulary_version").collect()
    )
    return row.item(0, 0) if row.height and row.item(0, 0) else "unknown"
