"""Read FHIR R4 files of any shape into one staged frame per resource type.

Shapes: a single resource per ``.json`` file; Bundles of every type (entries of transaction, batch
and history Bundles follow their ``request.method``); Bulk Data NDJSON (``.ndjson``, ``.ndjson.gz``),
whose ``deleted`` files are Bundles of DELETE entries; folders of any mix, read recursively.

Each record lands in exactly one place: a staged row, a deletion, ``filtered`` (a server reply or a
Bulk export log event: not source data) or the quarantine (with file, position and reason).
Position is the entry index in a Bundle (0 for a single resource) and the 1-based line number in
NDJSON.

Two ways to read, one result. The fast path (``columnar``) hands Arrow's JSON reader the source
bytes of a whole NDJSON block, or of all the entries of one type in a Bundle, in a pool of threads
while the main thread reads the next files; whatever it cannot vouch for goes the exact way, record
by record: msgspec decoding into the Structs of ``model.py`` (the type check, with the garbage
collector paused: decoding allocates many small objects that all stay alive until the frame is
built), written back as NDJSON for Arrow to build the frame. Both give the same frames, books and
quarantine (tests/test_fhir_reader_chunks.py); on the 10 k-patient sources the fast path reads
everything but the block holding the planted malformed line, at about half the CPU.
"""

from __future__ import annotations

import gc
import gzip
import io
import zlib
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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
# NDJSON is read in blocks of about this many bytes, each parsed by Arrow in one call; a block that
# is not sound is halved down to _EXACT_LINES lines, read line by line.
_BLOCK_BYTES = 8 << 20
_EXACT_LINES = 256
# How many bad lines of a block are cut out where Arrow says it stopped, before halving instead.
_ROW_SPLITS = 4
# Threads parsing blocks while the main thread reads the next ones, and how many units may be read
# ahead of the one being taken (the memory of the pipeline: a few blocks or Bundle files).
_PARSERS = 2
_AHEAD = 3
# Bundle files smaller than this go the exact way: Arrow's per-call cost would outweigh the gain.
_FAST_BUNDLE_BYTES = 64 << 10


class _LogEvent(msgspec.Struct):
    """A line of a Bulk Data export log (``log.ndjson``): bookkeeping of the export, not a resource."""

    exportId: str
    eventId: str


_log_event = msgspec.json.Decoder(_LogEvent)


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
    inside a Bundle or a ``.json`` file. ``_scope`` numbers go on across batches.

    A conditional reference (``Patient?identifier=...``) resolves as in one read when its target
    is in the same batch, in an earlier one, or in a Bulk NDJSON file of a type that has
    identifiers (``Patient.ndjson``, ``Practitioner.000.ndjson``...): those small files are read
    once ahead, since an export's files come in alphabetical order (``Encounter`` before
    ``Practitioner``). Each batch's ``identifiers`` hold all that is known so far."""
    files = discover(paths)
    staging = _Staging()
    if max_records is not None:
        files = _referenced_first(files)
        staging.known_identifiers = read_fhir(_identified_ndjson(files)).identifiers
    batches = 0
    with ThreadPoolExecutor(max_workers=_PARSERS, thread_name_prefix="fhir-parse") as pool:
        for _ in staging.read(files, pool, max_records):
            batches += 1
            yield staging.cut()
    if staging.records() or not batches:
        yield staging.cut()


# Bulk NDJSON files of the types other records point at, read before the rest of their folder when
# batching: an export lists its files alphabetically (Observation before Patient), and every row that
# points at a record of a later batch is held back by the loader and staged a second time (31 % of
# the rows at 10 k patients before this order).
_REFERENCED_TYPES = ("Patient", "Organization", "Location", "Practitioner", "PractitionerRole", "Encounter")


def _referenced_first(files: list[Path]) -> list[Path]:
    """The same files, each folder's Bulk NDJSON files of ``_REFERENCED_TYPES`` moved to the front
    of that folder's files, in that order; everything else keeps its place."""
    rank = {kind: i for i, kind in enumerate(_REFERENCED_TYPES)}
    folders: dict[Path, int] = {}
    for path in files:
        folders.setdefault(path.parent, len(folders))

    def place(item: tuple[int, Path]) -> tuple[int, int, int]:
        index, path = item
        bulk = path.name.lower().endswith((".ndjson", ".ndjson.gz"))
        kind = path.name.split(".")[0] if bulk else None
        return folders[path.parent], rank.get(kind, len(rank)), index

    return [path for _, path in sorted(enumerate(files), key=place)]


def _identified_ndjson(files: list[Path]) -> list[Path]:
    """Bulk NDJSON files named after a resource type that has identifiers (the Bulk Data naming)."""
    identified = {
        kind
        for kind, struct in model.resource_structs().items()
        if any(element.encode_name == "identifier" for element in msgspec.structs.fields(struct))
    }
    return [
        path
        for path in files
        if path.name.lower().endswith((".ndjson", ".ndjson.gz")) and path.name.split(".")[0] in identified
    ]


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
        self.presence = columnar.Presence()  # what the fast path has seen of each type, for all batches
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
    #
    # Reading is a pipeline: the main thread reads the next files and blocks (and decodes a Bundle's
    # envelope) while pool threads parse the ones before in Arrow, which releases the GIL; results
    # are taken in file order, so the staging sees the files exactly as if read one after another.

    def read(self, paths: list[Path], pool: Executor, max_records: int | None) -> Iterator[None]:
        """Read the files into the staging, yielding each time the batch holds ``max_records``
        (the caller then ``cut``s it): between two NDJSON lines or after a file."""
        pending: deque[_Unit] = deque()
        for unit in _units(paths, pool, self.presence):
            pending.append(unit)
            if len(pending) > _AHEAD:
                yield from self._take(pending.popleft(), max_records)
        while pending:
            yield from self._take(pending.popleft(), max_records)

    def _take(self, unit: _Unit, max_records: int | None) -> Iterator[None]:
        if isinstance(unit, _Block):
            try:
                parsed = unit.parsed.result()
            except columnar.Unsound as refusal:
                lines = _lines(unit.data)
                yield from self._read_around(lines, unit.file, unit.first, refusal.row, max_records)
            else:
                yield from self._take_rows(*parsed, max_records)
        elif isinstance(unit, _BundleFile):
            parsed = [future.result() for future in unit.parsed]
            if None in parsed:
                with _gc_paused():
                    self.read_document(unit.data, unit.file)
            else:
                self._take_bundle(parsed)
        elif isinstance(unit, _Document):
            with _gc_paused():
                self.read_document(unit.data, unit.file)
        else:
            yield from self._read_broken(unit, max_records)
        if max_records and self.records() >= max_records:
            yield

    def _take_rows(self, kind: str, frame: pl.DataFrame, max_records: int | None) -> Iterator[None]:
        """Rows of consecutive NDJSON lines: each line its own scope, as the exact path gives it."""
        start = 0
        while start < frame.height:
            rows = frame.height - start
            if max_records:
                room = max_records - self.records()
                if room <= 0:
                    yield
                    continue
                rows = min(rows, room)
            scope = self.scopes + 1
            self.scopes += rows
            self.add_frame(
                kind,
                frame.slice(start, rows).with_columns(
                    pl.int_range(scope, scope + rows, dtype=pl.Int64).alias("_scope")
                ),
            )
            start += rows

    def _read_around(
        self, lines: list[bytes], file: str, first: int, row: int | None, max_records: int | None
    ) -> Iterator[None]:
        """NDJSON lines that did not parse as one block, where Arrow stopped at ``row``: the lines
        before it as one block, that line the exact way, the lines after as one block, again
        (a few times: then, or without a row, in halves). One bad line costs two parses."""
        for _ in range(_ROW_SPLITS):
            if row is None or not 0 <= row < len(lines):
                break
            yield from self._read_lines(lines[:row], file, first, max_records)
            yield from self._read_exact(lines[row : row + 1], file, first + row, max_records)
            lines, first = lines[row + 1 :], first + row + 1
            if not lines:
                return
            try:
                parsed = _parse_ndjson(b"".join(lines), len(lines), file, first, self.presence)
            except columnar.Unsound as refusal:
                row = refusal.row
            else:
                yield from self._take_rows(*parsed, max_records)
                return
        yield from self._read_halves(lines, file, first, max_records)

    def _read_lines(
        self, lines: list[bytes], file: str, first: int, max_records: int | None
    ) -> Iterator[None]:
        """NDJSON lines as one block if they are sound, else in halves."""
        if not lines:
            return
        try:
            parsed = _parse_ndjson(b"".join(lines), len(lines), file, first, self.presence)
        except columnar.Unsound:
            yield from self._read_halves(lines, file, first, max_records)
        else:
            yield from self._take_rows(*parsed, max_records)

    def _read_halves(
        self, lines: list[bytes], file: str, first: int, max_records: int | None
    ) -> Iterator[None]:
        """Lines that did not parse as one block: in halves, down to blocks small enough to read
        the exact way (many bad lines cost a few parses each)."""
        if len(lines) <= _EXACT_LINES:
            yield from self._read_exact(lines, file, first, max_records)
            return
        half = len(lines) // 2
        yield from self._read_lines(lines[:half], file, first, max_records)
        yield from self._read_lines(lines[half:], file, first + half, max_records)

    def _read_exact(
        self, lines: list[bytes], file: str, first: int, max_records: int | None
    ) -> Iterator[None]:
        for position, line in enumerate(lines, start=first):
            if max_records and self.records() >= max_records:
                yield
            if line.strip():
                with _gc_paused():
                    self.read_record(line, file, position, self._new_scope())

    def _take_bundle(self, parsed: list[tuple[str, pl.DataFrame, pl.DataFrame]]) -> None:
        scope = pl.lit(self._new_scope(), dtype=pl.Int64).alias("_scope")
        for kind, frame, _ in parsed:
            self.add_frame(kind, frame.with_columns(scope))
        full_urls = pl.concat([urls for _, _, urls in parsed])
        if full_urls.height:
            self.add_full_urls(full_urls.sort("_position").select(scope, "url", "key"))

    def _read_broken(self, unit: _Broken, max_records: int | None) -> Iterator[None]:
        """A file that broke off while read in blocks: read again line by line from the block that
        broke, as the exact path did, so that what came before the break is kept and the break is
        quarantined at its line."""
        position = 0
        try:
            if unit.first == 0:  # a JSON file that could not be read at all
                raise unit.error
            opener = gzip.open if unit.path.name.lower().endswith(".gz") else open
            with opener(unit.path, "rb") as stream:
                for position, line in enumerate(stream, start=1):
                    if position < unit.first:
                        continue
                    if max_records and self.records() >= max_records:
                        yield
                    text = line.removeprefix(_BOM) if position == 1 else line
                    if text.strip():
                        with _gc_paused():
                            self.read_record(text, unit.file, position, self._new_scope())
        except (OSError, EOFError, zlib.error) as error:
            self._quarantine(
                unit.file,
                position + 1 if position else 0,
                None,
                None,
                "unreadable_file",
                f"The file breaks off here ({error.__class__.__name__}); what came before is kept.",
            )

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


# --- the reading pipeline's units: what the main thread prepares, the pool parses ---------------


@dataclass
class _Block:
    """Consecutive lines of an NDJSON file, from line ``first``; ``parsed`` gives the resource type
    and its rows (lineage but ``_scope`` included), or None when they need the exact path."""

    file: str
    first: int
    data: bytes
    parsed: Future


@dataclass
class _BundleFile:
    """A Bundle file: ``parsed`` gives, per resource type, its rows and fullUrls, or None."""

    file: str
    data: bytes
    parsed: list[Future]


@dataclass
class _Document:
    """A JSON file for the exact path."""

    file: str
    data: bytes


@dataclass
class _Broken:
    """A file that could not be read on from line ``first`` (0: not at all)."""

    path: Path
    file: str
    first: int
    error: BaseException


_Unit = _Block | _BundleFile | _Document | _Broken


def _units(paths: list[Path], pool: Executor, presence: columnar.Presence) -> Iterator[_Unit]:
    for path in paths:
        file, lower = str(path), path.name.lower()
        if lower.endswith((".ndjson", ".ndjson.gz")):
            yield from _ndjson_blocks(path, file, pool, presence)
            continue
        try:
            data = path.read_bytes()
            if lower.endswith(".gz"):
                data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            yield _Broken(path, file, 0, error)
            continue
        data = data.removeprefix(_BOM)
        with _gc_paused():
            parsed = _bundle_parses(data, file, pool, presence)
        yield _Document(file, data) if parsed is None else _BundleFile(file, data, parsed)


def _ndjson_blocks(path: Path, file: str, pool: Executor, presence: columnar.Presence) -> Iterator[_Unit]:
    """The file in blocks of whole lines, each sent to the pool to parse."""
    first = 1
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as stream:
            while data := stream.read(_BLOCK_BYTES):
                if not data.endswith(b"\n"):
                    data += stream.readline()
                if first == 1:
                    data = data.removeprefix(_BOM)
                lines = data.count(b"\n") + (not data.endswith(b"\n"))
                parsed = pool.submit(_parse_ndjson, data, lines, file, first, presence)
                yield _Block(file, first, data, parsed)
                first += lines
    except (OSError, EOFError, zlib.error) as error:
        yield _Broken(path, file, first, error)


def _parse_ndjson(
    data: bytes, lines: int, file: str, first: int, presence: columnar.Presence
) -> tuple[str, pl.DataFrame]:
    """A block of NDJSON lines of one resource type as staged rows; raises ``columnar.Unsound``
    when it needs the exact path."""
    kind = _ndjson_kind(data)
    if kind is None:
        raise columnar.Unsound("the first line is not a resource the fast path reads", row=0)
    frame = columnar.parse_block(data, kind, lines, presence=presence)
    ids = frame.get_column("id")
    if ids.null_count() or (ids == "").any():
        raise columnar.Unsound("a record without id")  # the exact path quarantines it
    return kind, _with_lineage(
        frame,
        kind,
        file=file,
        position=pl.int_range(first, first + lines, dtype=pl.Int64),
        record_id=pl.col("id"),
        version=_VERSION,
        scope=pl.lit(0, dtype=pl.Int64),  # numbered when the block is taken, in reading order
    )


# The fast path's Bundle, its entries and their requests: the elements ``model.Bundle``,
# ``model.BundleEntry`` and ``model.BundleRequest`` check for the exact path, untracked by the garbage
# collector (nothing in them can form a cycle): a 14 MB Bundle decoded in 17 ms, 21 ms tracked.


class _FastRequest(msgspec.Struct, gc=False):
    method: model.Str = None
    url: model.Str = None


class _FastEntry(msgspec.Struct, gc=False):
    fullUrl: model.Str = None
    resource: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    request: _FastRequest | None = None


class _FastBundle(msgspec.Struct, gc=False):
    """A Bundle as the fast path takes it, in one msgspec pass: its entries with their resources as
    raw bytes."""

    resourceType: str
    id: model.Str = None
    meta: model.Meta | None = None
    type: model.Str = None
    entry: list[_FastEntry] | None = None


_fast_bundle = msgspec.json.Decoder(_FastBundle)


def _bundle_parses(
    data: bytes, file: str, pool: Executor, presence: columnar.Presence
) -> list[Future] | None:
    """A Bundle file of resources to load (no DELETE, no nested Bundle, not a server's reply or a
    history): each resource type's entries sent to the pool to parse in one go. None when the file
    needs the exact path.

    An entry's type is taken from its request (``POST Observation``, ``PUT Patient/1``) when that
    names a type, else from its resource's envelope. Not a decoding of each resource's envelope: that was a
    second msgspec pass over every Bundle, 1.2 of the 10 k-patient read's 14 CPU s. It is a grouping,
    not a verdict: Arrow checks every row's ``resourceType`` against its group, and a request that
    names another type than its resource sends the file the exact way, as any refusal does."""
    if len(data) < _FAST_BUNDLE_BYTES:
        return None
    if b"\n" in data or b"\r" in data:  # pretty-printed: one line per entry for Arrow
        try:
            data = msgspec.json.format(data, indent=0)
        except msgspec.DecodeError:
            return None
    try:
        bundle = _fast_bundle.decode(data)
    except msgspec.DecodeError:
        return None
    if bundle.resourceType != "Bundle" or bundle.type in _RESPONSE_BUNDLES or bundle.type == "history":
        return None
    entries = bundle.entry or []
    structs = model.resource_structs()
    groups: dict[str, list[int]] = defaultdict(list)
    for index, entry in enumerate(entries):
        request, kind = entry.request, None
        if request is not None:
            method = (request.method or "").upper()
            if method == "DELETE":
                return None
            if method in _QUERY_METHODS:
                continue
            kind = request.url.partition("/")[0] if request.url else None
        size = len(entry.resource)  # (``_present``, inline: 0.3 s of calls at 10 k)
        if size == 0 or (size == 4 and bytes(entry.resource) == b"null"):
            continue
        if kind not in structs:
            try:
                kind = _envelope.decode(entry.resource).resourceType
            except msgspec.DecodeError:  # not a JSON object
                return None
        if not isinstance(kind, str) or kind not in structs or kind == "Bundle":
            return None
        groups[kind].append(index)
    return [
        pool.submit(
            _parse_entries,
            kind,
            b"\n".join([entries[i].resource for i in indexes]),
            indexes,
            [entries[i].fullUrl for i in indexes],
            file,
            presence,
        )
        for kind, indexes in groups.items()
    ]


def _parse_entries(
    kind: str,
    data: bytes,
    indexes: list[int],
    urls: list[str | None],
    file: str,
    presence: columnar.Presence,
) -> tuple[str, pl.DataFrame, pl.DataFrame] | None:
    """A Bundle's entries of one type as staged rows (``_scope`` to be set) and their fullUrls."""
    try:
        frame = columnar.parse_block(data, kind, len(indexes), scanned=True, presence=presence)
    except columnar.Unsound:
        return None
    full_urls = pl.Series("url", urls, dtype=pl.Utf8)
    record_ids = _bundle_record_ids(frame.get_column("id"), full_urls)
    if record_ids is None:
        return None
    frame = _with_lineage(
        frame,
        kind,
        file=file,
        position=pl.Series(indexes, dtype=pl.Int64),
        record_id=record_ids,
        version=_VERSION,
        scope=pl.lit(0, dtype=pl.Int64),
    )
    urls_frame = (
        frame.select("_position", pl.col("_record_key").alias("key"))
        .with_columns(full_urls)
        .filter(pl.col("url").is_not_null() & (pl.col("url") != ""))
    )
    return kind, frame, urls_frame


def _lines(data: bytes) -> list[bytes]:
    """The lines of a block as iterating over the file gives them (split at ``\\n`` only)."""
    return io.BytesIO(data).readlines()


def _ndjson_kind(data: bytes) -> str | None:
    """The resource type of a block, from its first line, when the fast path can read that type."""
    try:
        kind = _envelope.decode(columnar.first_line(data)).resourceType
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
    if isinstance(resource, msgspec.Raw):  # (compared only when 4 bytes long: bytes() copies it)
        return len(resource) > 0 and not (len(resource) == 4 and bytes(resource) == b"null")
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
