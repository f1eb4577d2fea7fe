"""Read FHIR R4 files of any shape into one staged frame per resource type.

Shapes: a single resource per ``.json`` file; Bundles of every type (entries of transaction, batch
and history Bundles follow their ``request.method``); Bulk Data NDJSON (``.ndjson``, ``.ndjson.gz``),
whose ``deleted`` files are Bundles of DELETE entries; folders of any mix, read recursively.

Each record lands in exactly one place: a staged row, a deletion, ``filtered`` (a server reply or a
Bulk export log event: not source data) or the quarantine (with file, position and reason).
Position is the entry index in a Bundle (0 for a single resource) and the 1-based line number in
NDJSON. Decoding runs with the garbage collector paused: decoding allocates many small objects that
all stay alive until the frame is built, so collections would only rescan them.
"""

from __future__ import annotations

import gc
import gzip
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgspec
import polars as pl
import pyarrow as pa
import pyarrow.json as pa_json

from pipelines.errors import PasserelleError
from pipelines.mapping.batch import DELETION_SCHEMA, QUARANTINE_SCHEMA
from pipelines.sources.fhir import columnar, model

_SUFFIXES = (".json", ".ndjson", ".ndjson.gz", ".json.gz")
# Bundle types whose entries are a server's answer, not records to load (FHIR R4 Bundle.type).
_RESPONSE_BUNDLES = frozenset({"transaction-response", "batch-response"})
# Request methods that carry no resource to load: a query is not data.
_QUERY_METHODS = frozenset({"GET", "HEAD"})

_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark, as some exporters write
_envelope = msgspec.json.Decoder(model.Envelope)
_encoder = msgspec.json.Encoder()
# Resources of one type held as Structs before they become a frame chunk: a decoded resource takes
# several times the memory as Python objects that it takes in Arrow, so chunking keeps the reader's
# memory growing with the frames, not with the Structs (measured in docs/performance.md).
_CHUNK = 20_000
# NDJSON is read in blocks of about this many bytes, each parsed by Arrow in one call (its threads
# split it further); a block that is not sound is halved down to _EXACT_LINES lines, read line by line.
_BLOCK_BYTES = 16 << 20
_EXACT_LINES = 256
# Bundle files smaller than this go the exact way: Arrow's per-call cost would outweigh the gain.
_FAST_BUNDLE_BYTES = 64 << 10


class _LogEvent(msgspec.Struct):
    """A line of a Bulk Data export log (``log.ndjson``): bookkeeping of the export, not a resource."""

    exportId: str
    eventId: str


_log_event = msgspec.json.Decoder(_LogEvent)


class _EntryHead(msgspec.Struct):
    """What the fast path needs to know of a Bundle entry before parsing its resource."""

    resource: model.Envelope | None = None
    request: model.BundleRequest | None = None


class _BundleHeads(msgspec.Struct):
    resourceType: str
    entry: list[_EntryHead] | None = None


_raw_bundle = msgspec.json.Decoder(model.Bundle)  # entries' resources as raw bytes
_bundle_heads = msgspec.json.Decoder(_BundleHeads)


@dataclass
class StagedFhir:
    """What the reader found, as frames. ``resources`` has one frame per resource type with the
    Struct's elements as columns plus ``_source_file``, ``_position``, ``_record_type``,
    ``_record_id``, ``_record_version``, ``_record_key`` and ``_scope`` (the Bundle a row came from,
    for ``urn:uuid:`` references). ``full_urls`` (``_scope``, ``url``, ``key``) and ``identifiers``
    (``conditional``, ``key``) are what references are resolved against."""

    resources: dict[str, pl.DataFrame]
    full_urls: pl.DataFrame
    identifiers: pl.DataFrame
    quarantine: pl.DataFrame
    deletions: pl.DataFrame
    inputs: dict[str, int]
    filtered: dict[str, int]


def discover(paths: list[Path]) -> list[Path]:
    """Files to read: each file given, and every FHIR-looking file under each folder, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(_SUFFIXES))
            )
        elif path.is_file():
            found.append(path)
        else:
            raise PasserelleError(
                f"{path}: no such file or folder (give FHIR .json/.ndjson files or folders)"
            )
    return found


def read_fhir(paths: list[Path]) -> StagedFhir:
    """Read every file (or folder, recursively) into staged frames."""
    (staged,) = iter_staged(paths, max_records=None)
    return staged


def iter_staged(paths: list[Path], *, max_records: int | None) -> Iterator[StagedFhir]:
    """Read the files in batches of about ``max_records`` input records (all in one batch when
    None); always at least one batch. A batch ends after a file or between two NDJSON lines, never
    inside a Bundle or a ``.json`` file. Each batch's ``identifiers`` include the earlier batches',
    so a conditional reference (``Patient?identifier=...``) to a resource of an earlier batch still
    resolves; ``_scope`` numbers go on across batches."""
    staging = _Staging()
    batches = 0
    for path in discover(paths):
        for _ in staging.read_file(path, max_records):
            batches += 1
            yield staging.cut()
    if staging.records() or not batches:
        yield staging.cut()


@contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass
class _Columns:
    """One resource type being collected: its decoded Structs and their lineage, column by column."""

    structs: list = field(default_factory=list)
    file: list[str] = field(default_factory=list)
    position: list[int] = field(default_factory=list)
    record_id: list[str] = field(default_factory=list)
    version: list[str | None] = field(default_factory=list)
    scope: list[int] = field(default_factory=list)
    frames: list[pl.DataFrame] = field(default_factory=list)  # chunks already built

    def flush(self, kind: str) -> None:
        """Turn the Structs collected so far into a frame chunk and let them go."""
        if self.structs:
            self.frames.append(_frame(kind, self))
            self.structs, self.file, self.position = [], [], []
            self.record_id, self.version, self.scope = [], [], []


class _Staging:
    def __init__(self) -> None:
        self.scopes = 0
        self.known_identifiers = pl.DataFrame(schema={"conditional": pl.Utf8, "key": pl.Utf8})
        self.decoder = model.resource_decoder()
        self.document_decoder = model.document_decoder()
        self._start_batch()

    def _start_batch(self) -> None:
        self.columns: dict[str, _Columns] = defaultdict(_Columns)
        self.quarantine: list[tuple] = []
        self.deletions: list[tuple[str, str, str]] = []
        self.full_urls: list[tuple[int, str, str]] = []
        self.full_url_frames: list[pl.DataFrame] = []
        self.inputs: Counter[str] = Counter()
        self.filtered: Counter[str] = Counter()

    def records(self) -> int:
        """Input records of this batch so far, deletions included."""
        return sum(self.inputs.values()) + len(self.deletions)

    def cut(self) -> StagedFhir:
        """The batch read so far, as frames; the staging goes on empty, remembering the identifiers."""
        # Build the frames and drop the decoded Structs before the collector runs again, so that
        # it does not walk millions of objects that are about to be freed anyway.
        with _gc_paused():
            staged = self.finish()
            self.columns.clear()
        self.known_identifiers = staged.identifiers
        self._start_batch()
        return staged

    # --- files ------------------------------------------------------------------------------

    def read_file(self, path: Path, max_records: int | None = None) -> Iterator[None]:
        """Read one file. NDJSON is streamed in blocks of lines, so a huge export never sits whole in
        memory; a Bundle file is read whole. Sound blocks and Bundles take the fast path
        (``columnar``), anything else the exact one, record by record. Yields (outside the collector
        pause) each time the batch holds ``max_records``: between two NDJSON blocks, or after the
        file; the caller then ``cut``s the batch. A file that breaks off (a truncated gzip) keeps what
        was read and quarantines the rest."""
        name, lower = str(path), path.name.lower()
        self.position = 0
        try:
            if lower.endswith((".ndjson", ".ndjson.gz")):
                opener = gzip.open if lower.endswith(".gz") else open
                with opener(path, "rb") as stream:
                    yield from self._read_ndjson(stream, name, max_records)
            else:
                data = path.read_bytes()
                if lower.endswith(".gz"):
                    data = gzip.decompress(data)
                data = data.removeprefix(_BOM)
                with _gc_paused():
                    if not self._read_bundle_fast(data, name):
                        self.read_document(data, name)
        except (OSError, EOFError, zlib.error) as error:
            position = self.position
            self._quarantine(
                name,
                position + 1 if position else 0,
                None,
                None,
                "unreadable_file",
                f"The file breaks off here ({error.__class__.__name__}); what came before is kept.",
            )
        if max_records and self.records() >= max_records:
            yield

    def _read_ndjson(self, stream: BinaryIO, name: str, max_records: int | None) -> Iterator[None]:
        pending: list[bytes] = []
        broken: BaseException | None = None
        while pending or broken is None:
            if not pending:
                pending, broken = _next_lines(stream)
                if not pending:
                    break
                if self.position == 0:
                    pending[0] = pending[0].removeprefix(_BOM)
            block = pending
            if max_records:
                room = max_records - self.records()
                if room <= 0:
                    yield
                    continue
                block, pending = pending[:room], pending[room:]
            else:
                pending = []
            with _gc_paused():
                self._read_lines(block, name, self.position + 1)
            self.position += len(block)
        if broken is not None:
            raise broken

    def _read_lines(self, lines: list[bytes], name: str, first: int) -> None:
        """NDJSON lines ``first``, ``first + 1``...: in one Arrow parse when they are sound; else in
        halves, down to blocks small enough to read line by line (a bad line costs a few parses)."""
        kind = _ndjson_kind(lines)
        if kind is not None:
            try:
                self._take_ndjson_block(b"".join(lines), kind, len(lines), name, first)
                return
            except columnar.Unsound:
                pass
        if len(lines) > _EXACT_LINES:
            half = len(lines) // 2
            self._read_lines(lines[:half], name, first)
            self._read_lines(lines[half:], name, first + half)
            return
        for position, line in enumerate(lines, start=first):
            if line.strip():
                self.read_record(line, name, position, self._new_scope())

    def _take_ndjson_block(self, data: bytes, kind: str, rows: int, name: str, first: int) -> None:
        frame = columnar.parse_block(data, kind, rows)
        ids = frame.get_column("id")
        if ids.null_count() or (ids == "").any():
            raise columnar.Unsound("a record without id")  # the exact path quarantines it
        scope = self.scopes + 1
        self.scopes += rows
        self.add_frame(
            kind,
            _with_lineage(
                frame,
                kind,
                file=name,
                position=pl.int_range(first, first + rows, dtype=pl.Int64),
                record_id=pl.col("id"),
                version=_VERSION,
                scope=pl.int_range(scope, scope + rows, dtype=pl.Int64),
            ),
        )

    def _read_bundle_fast(self, data: bytes, name: str) -> bool:
        """A Bundle file of resources to load (no DELETE, no nested Bundle, not a server's reply or a
        history): each resource type's entries parsed in one go. False when the file needs the exact
        path; then nothing of it has been kept."""
        if len(data) < _FAST_BUNDLE_BYTES:
            return False
        if b"\n" in data or b"\r" in data:  # pretty-printed: one line per entry for Arrow
            try:
                data = msgspec.json.format(data, indent=0)
            except msgspec.DecodeError:
                return False
        try:
            heads = _bundle_heads.decode(data)
            bundle = _raw_bundle.decode(data)
        except msgspec.DecodeError:
            return False
        if heads.resourceType != "Bundle" or bundle.type in _RESPONSE_BUNDLES or bundle.type == "history":
            return False
        entries = bundle.entry or []
        structs = model.resource_structs()
        groups: dict[str, list[int]] = defaultdict(list)
        for index, head in enumerate(heads.entry or []):
            request = head.request
            method = (request.method or "").upper() if request else ""
            if method == "DELETE":
                return False
            if method in _QUERY_METHODS or head.resource is None:
                continue
            kind = head.resource.resourceType
            if not isinstance(kind, str) or kind not in structs or kind == "Bundle":
                return False
            groups[kind].append(index)
        parsed = []
        for kind, indexes in groups.items():
            try:
                frame = columnar.parse_block(
                    b"\n".join([entries[i].resource for i in indexes]), kind, len(indexes)
                )
            except columnar.Unsound:
                return False
            urls = pl.Series("fullUrl", [entries[i].fullUrl for i in indexes], dtype=pl.Utf8)
            record_ids = _bundle_record_ids(frame.get_column("id"), urls)
            if record_ids is None:
                return False
            parsed.append((kind, frame, pl.Series("_position", indexes, dtype=pl.Int64), urls, record_ids))
        scope = self._new_scope()
        full_urls = []
        for kind, frame, positions, urls, record_ids in parsed:
            frame = _with_lineage(
                frame,
                kind,
                file=name,
                position=positions,
                record_id=record_ids,
                version=_VERSION,
                scope=pl.lit(scope, dtype=pl.Int64),
            )
            self.add_frame(kind, frame)
            full_urls.append(
                frame.select("_position", "_record_key")
                .with_columns(urls.alias("url"))
                .filter(pl.col("url").is_not_null() & (pl.col("url") != ""))
            )
        if full_urls:
            self.add_full_urls(
                pl.concat(full_urls)
                .sort("_position")
                .select(
                    pl.lit(scope, dtype=pl.Int64).alias("_scope"), "url", pl.col("_record_key").alias("key")
                )
            )
        return True

    def add_frame(self, kind: str, frame: pl.DataFrame) -> None:
        """Rows read by the fast path, after whatever the exact path holds of that type."""
        columns = self.columns[kind]
        columns.flush(kind)
        columns.frames.append(frame)
        self.inputs[kind] += frame.height

    def add_full_urls(self, frame: pl.DataFrame) -> None:
        if self.full_urls:
            self.full_url_frames.append(_full_url_frame(self.full_urls))
            self.full_urls = []
        self.full_url_frames.append(frame)

    def _new_scope(self) -> int:
        self.scopes += 1
        return self.scopes

    # --- records ----------------------------------------------------------------------------

    def read_document(self, data: bytes, file: str) -> None:
        """A JSON file: decoded in one pass when it is sound, else record by record."""
        try:
            document = self.document_decoder.decode(data)
        except msgspec.DecodeError:
            self.read_record(data, file, 0, self._new_scope())
            return
        if _is_bundle(document):
            self.read_bundle(document, file, 0, self._new_scope())
        else:
            self.take(document, file, 0, self._new_scope(), None)

    def read_record(
        self, raw: bytes, file: str, position: int, scope: int, full_url: str | None = None
    ) -> None:
        try:
            resource = self.decoder.decode(raw)
        except msgspec.DecodeError as error:
            self._reject(raw, file, position, error)
            return
        if _is_bundle(resource):
            self.read_bundle(resource, file, position, scope)
            return
        self.take(resource, file, position, scope, full_url)

    def _reject(self, raw: bytes, file: str, position: int, error: msgspec.DecodeError) -> None:
        try:
            envelope = _envelope.decode(raw)
        except msgspec.ValidationError:
            self._quarantine(
                file,
                position,
                None,
                None,
                "not_a_resource",
                "The JSON is not an object, so not a FHIR resource.",
            )
            return
        except msgspec.DecodeError:
            self._quarantine(file, position, None, None, "malformed_json", f"Not valid JSON: {error}.")
            return
        if envelope.resourceType is None and _is_log_event(raw):
            self.inputs["ExportLogEvent"] += 1
            self.filtered["ExportLogEvent: Bulk Data export log, not a resource"] += 1
            return
        kind = envelope.resourceType if isinstance(envelope.resourceType, str) else None
        record_id = envelope.id if isinstance(envelope.id, str) else None
        if envelope.resourceType is None:
            code, reason = "missing_resource_type", "The JSON object has no resourceType."
        elif kind not in model.resource_structs():
            code, reason = "unknown_resource_type", "resourceType is not a FHIR R4 resource type."
            if kind is not None and kind.isidentifier() and len(kind) <= 64:
                reason = f"resourceType {kind!r} is not a FHIR R4 resource type."
        else:
            code, reason = "invalid_element", f"A {kind} element has the wrong JSON type: {error}."
        self._quarantine(file, position, kind, record_id, code, reason)

    def read_bundle(self, bundle: msgspec.Struct, file: str, position: int, scope: int) -> None:
        """Entries hold raw JSON (decoded here, one by one) or, from ``read_document``, resources."""
        entries = bundle.entry or []
        in_ndjson = position > 0
        if bundle.type in _RESPONSE_BUNDLES:
            for entry in entries:
                if _present(entry.resource):
                    kind = _kind_of(entry.resource)
                    self.inputs[kind] += 1
                    self.filtered[f"{kind}: inside a {bundle.type} Bundle (a server's reply)"] += 1
            return
        order = list(enumerate(entries))
        if bundle.type == "history":
            order.reverse()  # a history lists the newest version first; read it last so it wins
        for index, entry in order:
            entry_position = position if in_ndjson else index
            method = (entry.request.method or "").upper() if entry.request else ""
            if method == "DELETE":
                target = entry.request.url if entry.request else None
                if target:
                    self.deletions.append((_deleted_key(target), "fhir", file))
                else:
                    self._quarantine(
                        file,
                        entry_position,
                        None,
                        None,
                        "invalid_entry",
                        "A DELETE entry has no request.url.",
                    )
                continue
            if method in _QUERY_METHODS or not _present(entry.resource):
                continue
            if isinstance(entry.resource, msgspec.Raw):
                self.read_record(entry.resource, file, entry_position, scope, entry.fullUrl)
            elif _is_bundle(entry.resource):
                self.read_bundle(entry.resource, file, entry_position, scope)
            else:
                self.take(entry.resource, file, entry_position, scope, entry.fullUrl)

    def take(
        self, resource: msgspec.Struct, file: str, position: int, scope: int, full_url: str | None
    ) -> None:
        kind = type(resource).__struct_config__.tag
        self.inputs[kind] += 1
        record_id = resource.id or _id_from_url(full_url)
        if not record_id:
            self._quarantine(
                file,
                position,
                kind,
                None,
                "missing_id",
                f"The {kind} has no id and no fullUrl to name it by.",
            )
            return
        meta = resource.meta
        version = (meta.versionId or meta.lastUpdated) if meta else None
        columns = self.columns[kind]
        columns.structs.append(resource)
        columns.file.append(file)
        columns.position.append(position)
        columns.record_id.append(record_id)
        columns.version.append(version)
        columns.scope.append(scope)
        if len(columns.structs) >= _CHUNK:
            columns.flush(kind)
        if full_url:
            self.full_urls.append((scope, full_url, f"fhir|{kind}/{record_id}"))

    def _quarantine(
        self, file: str, position: int, kind: str | None, record_id: str | None, code: str, reason: str
    ) -> None:
        if kind is None:
            self.inputs["unknown"] += 1
        elif code != "missing_id":
            self.inputs[kind] += 1
        self.quarantine.append(("fhir", file, position, kind, record_id, code, reason))

    # --- frames -----------------------------------------------------------------------------

    def finish(self) -> StagedFhir:
        resources = {}
        for kind, columns in self.columns.items():
            columns.flush(kind)
            # one contiguous frame per type, as the mapping expects: on 48 chunks, exploding the 10 k-patient
            # Observation frame took GBs of transient memory
            frame = pl.concat(columns.frames, rechunk=True) if len(columns.frames) > 1 else columns.frames[0]
            columns.frames.clear()
            # The same resource twice in one load (Synthea repeats practitioners in every bundle, a
            # transaction may PUT what a file also holds): the last copy read is the current one.
            latest = frame.select(pl.col("_record_key").is_last_distinct()).to_series()
            if not latest.all():
                self.filtered[f"{kind}: an earlier copy of a resource read again later in this load"] += int(
                    (~latest).sum()
                )
                frame = frame.filter(latest)
            resources[kind] = frame
        identifiers = pl.concat([self.known_identifiers, _identifiers(resources)]).unique(
            "conditional", keep="first", maintain_order=True
        )
        deletions = pl.DataFrame(self.deletions, schema=DELETION_SCHEMA, orient="row")
        # A conditional DELETE names a record by identifier: resolve it when this batch knows it.
        deletions = (
            deletions.with_columns(pl.col("_record_key").str.strip_prefix("fhir|").alias("conditional"))
            .join(identifiers, on="conditional", how="left", maintain_order="left")
            .select(pl.coalesce("key", "_record_key").alias("_record_key"), "_source_format", "_source_file")
            .unique(maintain_order=True)
        )
        return StagedFhir(
            resources=resources,
            full_urls=pl.concat([*self.full_url_frames, _full_url_frame(self.full_urls)]),
            identifiers=identifiers,
            quarantine=pl.DataFrame(self.quarantine, schema=QUARANTINE_SCHEMA, orient="row"),
            deletions=deletions,
            inputs=dict(self.inputs),
            filtered=dict(self.filtered),
        )


def _frame(kind: str, columns: _Columns) -> pl.DataFrame:
    struct = model.resource_structs()[kind]
    # The Structs hold only the elements we read; msgspec writes them back as compact NDJSON and
    # Arrow's JSON reader builds the nested columns against the explicit schema, in its own threads
    # without the GIL: measured half the CPU of pl.read_json on one JSON array, which was itself 5x
    # less than building them from Python dicts (msgspec.to_builtins + pl.DataFrame) or pl.read_ndjson.
    table = pa_json.read_json(
        pa.py_buffer(_encoder.encode_lines(columns.structs)),
        parse_options=pa_json.ParseOptions(
            explicit_schema=columnar.arrow_schema(struct), unexpected_field_behavior="ignore"
        ),
    )
    return _with_lineage(
        pl.from_arrow(table),
        kind,
        file=pl.Series(columns.file, dtype=pl.Utf8),
        position=pl.Series(columns.position, dtype=pl.Int64),
        record_id=pl.Series(columns.record_id, dtype=pl.Utf8),
        version=pl.Series(columns.version, dtype=pl.Utf8),
        scope=pl.Series(columns.scope, dtype=pl.Int64),
    )


def _with_lineage(
    frame: pl.DataFrame,
    kind: str,
    *,
    file: str | pl.Series,
    position: pl.Expr | pl.Series,
    record_id: pl.Expr | pl.Series,
    version: pl.Expr | pl.Series,
    scope: pl.Expr | pl.Series,
) -> pl.DataFrame:
    """The staged frame: the Struct's columns, then the lineage columns, in this order."""
    file = pl.lit(file, dtype=pl.Utf8) if isinstance(file, str) else file
    return frame.with_columns(
        file.alias("_source_file"),
        position.alias("_position"),
        pl.lit(kind, dtype=pl.Utf8).alias("_record_type"),
        record_id.alias("_record_id"),
        version.alias("_record_version"),
        scope.alias("_scope"),
    ).with_columns(pl.format("fhir|{}/{}", "_record_type", "_record_id").alias("_record_key"))


# The exact path's ``meta.versionId or meta.lastUpdated``: an empty versionId counts as none.
_VERSION = (
    pl.when(pl.col("meta").struct.field("versionId") != "")
    .then(pl.col("meta").struct.field("versionId"))
    .otherwise(pl.col("meta").struct.field("lastUpdated"))
)


def _bundle_record_ids(ids: pl.Series, urls: pl.Series) -> pl.Series | None:
    """``resource.id or`` the id in its fullUrl, as the exact path names a record; None when some
    record has neither (the exact path quarantines it)."""
    missing = ids.is_null() | (ids == "")
    if not missing.any():
        return ids
    names = ids.to_list()
    for row in missing.arg_true().to_list():
        names[row] = _id_from_url(urls[row])
        if not names[row]:
            return None
    return pl.Series(names, dtype=pl.Utf8)


def _full_url_frame(rows: list[tuple[int, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"_scope": pl.Int64, "url": pl.Utf8, "key": pl.Utf8}, orient="row")


def _next_lines(stream: BinaryIO) -> tuple[list[bytes], BaseException | None]:
    """The next lines, about ``_BLOCK_BYTES`` of them, and the error that stopped the reading if
    any: the lines before a break are still read, as the exact path did line by line."""
    lines: list[bytes] = []
    size = 0
    try:
        for line in stream:
            lines.append(line)
            size += len(line)
            if size >= _BLOCK_BYTES:
                break
    except (OSError, EOFError, zlib.error) as error:
        return lines, error
    return lines, None


def _ndjson_kind(lines: list[bytes]) -> str | None:
    """The resource type of a block, from its first line, when the fast path can read that type."""
    try:
        kind = _envelope.decode(lines[0]).resourceType
    except msgspec.DecodeError:
        return None
    if isinstance(kind, str) and kind != "Bundle" and kind in model.resource_structs():
        return kind
    return None


def _identifiers(resources: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """Conditional-reference targets: ``Type?identifier=system|value`` (and ``=value``) -> key."""
    parts = []
    for kind, frame in resources.items():
        if "identifier" not in frame.columns:
            continue
        ids = frame.select("_record_key", pl.col("identifier")).explode("identifier").unnest("identifier")
        ids = ids.filter(pl.col("value").is_not_null())
        parts.append(
            ids.select(
                pl.format(f"{kind}?identifier={{}}|{{}}", "system", "value").alias("conditional"),
                "_record_key",
            )
        )
        parts.append(
            ids.select(pl.format(f"{kind}?identifier={{}}", "value").alias("conditional"), "_record_key")
        )
    if not parts:
        return pl.DataFrame(schema={"conditional": pl.Utf8, "key": pl.Utf8})
    return (
        pl.concat(parts)
        .drop_nulls("conditional")
        .unique("conditional", keep="first", maintain_order=True)
        .rename({"_record_key": "key"})
    )


def _is_bundle(resource: msgspec.Struct) -> bool:
    return type(resource).__struct_config__.tag == "Bundle"


def _present(resource: msgspec.Raw | msgspec.Struct | None) -> bool:
    if isinstance(resource, msgspec.Raw):
        return len(resource) > 0 and bytes(resource) != b"null"
    return resource is not None


def _kind_of(resource: msgspec.Raw | msgspec.Struct) -> str:
    if not isinstance(resource, msgspec.Raw):
        return type(resource).__struct_config__.tag
    raw = resource
    try:
        kind = _envelope.decode(raw).resourceType
    except msgspec.DecodeError:
        return "unknown"
    return kind if isinstance(kind, str) and kind in model.resource_structs() else "unknown"


def _is_log_event(raw: bytes) -> bool:
    try:
        _log_event.decode(raw)
    except msgspec.DecodeError:
        return False
    return True


def _id_from_url(full_url: str | None) -> str | None:
    """``urn:uuid:X`` -> X; ``http://server/fhir/Patient/123`` -> 123; None otherwise."""
    if not full_url:
        return None
    if full_url.startswith(("urn:uuid:", "urn:oid:")):
        return full_url.rsplit(":", 1)[1]
    tail = full_url.rstrip("/").split("/_history/")[0].rsplit("/", 1)
    return tail[1] if len(tail) == 2 and tail[1] else None


def _deleted_key(url: str) -> str:
    """``Patient/234``, ``http://server/Patient/234/_history/2`` -> ``fhir|Patient/234``; a conditional
    URL (``Patient?identifier=...``) stays as given and names no record unless the loader knows it."""
    if "?" in url:
        return f"fhir|{url}"
    parts = url.split("/_history/")[0].rstrip("/").split("/")
    return f"fhir|{parts[-2]}/{parts[-1]}" if len(parts) >= 2 else f"fhir|{url}"
