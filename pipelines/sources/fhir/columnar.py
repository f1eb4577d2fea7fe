"""The reader's fast path: sound FHIR records parsed straight from their bytes into typed columns.

The exact path (``reader.py``) decodes each record with msgspec into a Struct, walks it in Python,
writes the Structs back as JSON and lets Arrow's JSON reader build the columns: two parses and a
Python step per resource. Here Arrow's reader gets the source bytes themselves, a block of Bulk NDJSON
lines or all the entries of one type of a Bundle, with the explicit schema of ``model.py``'s Structs
plus ``resourceType``: one parse, no Python object per resource, in the reader's pool of threads
(Arrow releases the GIL). Reading the 10 k-patient sources took 30-40 CPU s the exact way, 14-16
this way, 12.1-12.6 since blocks are parsed against what their type has held so far (``Presence``)
and a Bundle is decoded once, on a busy machine. About half of what is left is Arrow's parse, and
declaring fewer elements no longer shortens it: an element left out of the schema is still
tokenised and its key looked up (leaving out ``Coding.display``, which no mapping reads, saved
nothing measurable on the 10 k-patient Bundles).

A block is only taken when the result is what the exact path would give; anything else raises
``Unsound`` and the reader reads that block the exact way, so every quarantine row (file, position,
reason) is the same as before. Arrow refuses what msgspec refuses (a string where a number belongs, an
object where a list belongs, malformed JSON, an unescaped control character, invalid UTF-8 in a kept
element), sometimes more (duplicate keys, numbers beyond a double): those blocks go the exact way.
Where Arrow is laxer, the block is screened: ``NaN``/``Inf`` tokens and blank lines (on the bytes;
in a Bundle msgspec's scan of the file has refused them already), a ``null`` list item, an integer
outside FHIR's 32 bits, a number too large for a double (on the columns), two objects on one line
(row count), a record of another type (``resourceType``). One difference remains: an element that
the Structs skip, nested deeper than msgspec's limit (about 1,000 levels), is read here and
quarantined by the exact path.
"""

from __future__ import annotations

import math
import re
import struct
from functools import cache

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from pipelines.sources.fhir import model

# Arrow reads NaN, Inf, Infinity (and with a minus) as numbers, which msgspec refuses as malformed
# JSON; and it skips blank lines, where a line holding two objects would go unnoticed. RE2, through
# Arrow, finds a literal in 2 ms on 25 MB without the GIL (``b"NaN" in data``: 23 ms holding it);
# the token pattern takes 115 ms, so it only runs where the literals are (``Influenza``...).
_NON_JSON_NUMBER = r"[:,\[][ \t\r\n]*-?(?:Inf|NaN)"
# Arrow's JSON errors end with the row they stopped at ("... in row 174"); one block per call, so
# it is the line within the block.
_ARROW_ROW = re.compile(r"in row (\d+)")
# The lines a type is first learnt from (see ``Presence``), in bytes: some hundreds of resources.
_FIRST_LINES = 256 << 10
# model.Int: a FHIR integer is 32-bit signed.
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class Unsound(Exception):
    """This block is not for the fast path: read it record by record. ``row``: the 0-based line at
    which Arrow stopped, when it says (a hint: the lines before it may well be sound)."""

    def __init__(self, reason: str, row: int | None = None) -> None:
        super().__init__(reason)
        self.row = row


def parse_block(
    data: bytes, kind: str, rows: int, *, scanned: bool = False, presence: Presence | None = None
) -> pl.DataFrame:
    """The ``rows`` records of type ``kind`` in ``data`` (one JSON object per line) as a frame with
    the Struct's columns, in the exact path's types. Raises ``Unsound`` when the exact path is needed.
    ``scanned``: msgspec has already found ``data`` to be JSON values, one per line (Bundle entries).
    ``presence``: what earlier blocks of the same read held, to parse this one against a leaner
    schema (the result is the same)."""
    if not scanned and (_non_json_number(data) or _blank_line(data)):
        raise Unsound("NaN or Inf (which msgspec refuses and Arrow reads), or a blank line")
    table = presence.parse(data, kind) if presence is not None else None
    if table is None:
        try:
            table = _read(data, _schema(kind))
        except (pa.ArrowException, ValueError) as error:  # ArrowInvalid, and UnicodeDecodeError
            row = _ARROW_ROW.search(str(error))
            raise Unsound(str(error), int(row.group(1)) if row else None) from error
        if presence is not None:
            presence.learn(kind, table)
    if table.num_rows != rows:
        raise Unsound("not one object per line")
    kinds = table.column("resourceType").unique()  # (pc.equal with a str would import pandas: 1-3 s)
    if kinds.null_count or len(kinds) != 1 or kinds[0].as_py() != kind:
        raise Unsound("records of another type")
    table = table.drop_columns("resourceType")
    for column in table.columns:  # (before the cast: a null-typed element holds nothing to check)
        if _needs_check(column.type):
            for chunk in column.chunks:
                _check(chunk)
    return _in_full_types(pl.from_arrow(table), kind)


def _in_full_types(frame: pl.DataFrame, kind: str) -> pl.DataFrame:
    """A frame parsed against the lean schema with its null-typed parts cast to the Struct's types,
    in Polars: a 12 k-row Observation block took 3 ms, against 5-7 ms for Arrow's cast before the
    conversion (which converts the nested nulls too)."""
    full = model.polars_schema(model.resource_structs()[kind])
    lean = [pl.col(name).cast(full[name]) for name, dtype in frame.schema.items() if dtype != full[name]]
    return frame.with_columns(lean) if lean else frame


class Presence:
    """Which elements of each resource type have held a value in the blocks read so far.

    Arrow's reader fills a null into every element the schema declares and a record lacks, at every
    level: on the 1 k-patient Observations that is about a third of the parse (0.19 s against 0.14 s
    when the declared elements no record has are typed null instead: a null-typed element costs a
    counter, a struct of Codings a builder per leaf). So once the first lines of a type have been
    parsed against the full schema (the first ``_FIRST_LINES`` bytes of its first large block, or
    the whole of a small one), blocks are parsed with every element no block has held so far typed
    null, then cast to the Struct's types. A value in a null-typed element stops Arrow ("changed from
    null to ..."); the block is then parsed again against the full schema, whose outcome, table or
    error, is the one used, and what it holds is learnt. Either way the table is the full parse's.
    Shared by the reader's threads: a lost update only costs a parse again."""

    def __init__(self) -> None:
        self._seen: dict[str, frozenset[tuple[str, ...]]] = {}

    def parse(self, data: bytes, kind: str) -> pa.Table | None:
        """The block parsed against the lean schema (``parse_block`` casts it to the full one); None
        when no block of the type has been learnt yet or the lean schema is too lean for it."""
        seen = self._seen.get(kind)
        try:
            if seen is None:
                # learnt from the first lines alone: a whole first block against the full schema
                # cost 40 % more than the lean parse, and the reader's threads start several
                # blocks of a type before the first is done
                end = data.rfind(b"\n", 0, _FIRST_LINES)
                if end < 0 or len(data) <= 2 * _FIRST_LINES:
                    return None
                self.learn(kind, _read(data[:end], _schema(kind)))
                seen = self._seen[kind]
            return _read(data, _lean_schema(kind, seen))
        except (pa.ArrowException, ValueError):
            return None

    def learn(self, kind: str, table: pa.Table) -> None:
        """Add the elements holding a value somewhere in ``table`` (parsed against the full schema)."""
        found: set[tuple[str, ...]] = set()
        for field, column in zip(table.schema, table.columns, strict=True):
            for chunk in column.chunks:
                _holding(chunk, (field.name,), found)
        self._seen[kind] = self._seen.get(kind, frozenset()) | found


def _holding(array: pa.Array, path: tuple[str, ...], found: set[tuple[str, ...]]) -> None:
    """The paths (field names, ``[]`` for a list's items) under ``path`` holding a value in ``array``."""
    if array.null_count == len(array):
        return
    found.add(path)
    kind = array.type
    if pa.types.is_struct(kind):
        for index in range(kind.num_fields):
            _holding(array.field(index), (*path, kind.field(index).name), found)
    elif pa.types.is_list(kind):
        _holding(array.flatten(), (*path, "[]"), found)


@cache
def _lean_schema(kind: str, seen: frozenset[tuple[str, ...]]) -> pa.Schema:
    """The full schema with every element outside ``seen`` typed null."""
    return pa.schema([(f.name, _lean_type(f.type, (f.name,), seen)) for f in _schema(kind)])


def _lean_type(kind: pa.DataType, path: tuple[str, ...], seen: frozenset[tuple[str, ...]]) -> pa.DataType:
    if path not in seen:
        return pa.null()
    if pa.types.is_struct(kind):
        return pa.struct([(f.name, _lean_type(f.type, (*path, f.name), seen)) for f in kind])
    if pa.types.is_list(kind):
        return pa.list_(_lean_type(kind.value_type, (*path, "[]"), seen))
    return kind


def _read(data: bytes, schema: pa.Schema) -> pa.Table:
    # One Arrow block, parsed in the calling thread: the reader runs blocks in its own pool.
    return pa_json.read_json(
        pa.py_buffer(data),
        read_options=pa_json.ReadOptions(use_threads=False, block_size=max(len(data), 1 << 20)),
        parse_options=pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )


def first_line(data: bytes) -> bytes:
    """The first line of a block, without its newline."""
    end = data.find(b"\n")
    return data if end < 0 else data[:end]


def _non_json_number(data: bytes) -> bool:
    return (_search(data, "NaN") or _search(data, "Inf")) and _search(data, _NON_JSON_NUMBER)


def _blank_line(data: bytes) -> bool:
    return _search(data, r"\n[ \t\r]*\n") or not first_line(data).strip()


def _search(data: bytes, pattern: str) -> bool:
    """Whether RE2 finds ``pattern`` in ``data``, which Arrow sees as one binary value, uncopied."""
    offsets = pa.py_buffer(struct.pack("<qq", 0, len(data)))
    value = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    return pc.match_substring_regex(value, pattern)[0].as_py()


def _check(array: pa.Array) -> None:
    """What msgspec would refuse and Arrow kept: a null list item, an integer beyond 32 bits, a
    non-finite number. Walks the nested arrays without copying them, skipping the parts that hold
    only strings and booleans (the walk took 0.27 of 2.4 CPU s on the 1 k sources before that)."""
    kind = array.type
    if pa.types.is_list(kind):
        items = array.flatten()
        if items.null_count:
            raise Unsound("a null list item")
        if _needs_check(kind.value_type):
            _check(items)
    elif pa.types.is_struct(kind):
        for index in _fields_to_check(kind):
            _check(array.field(index))
    elif len(array) > array.null_count:
        low, high = (value.as_py() for value in pc.min_max(array).values())
        if pa.types.is_int64(kind) and not (low >= _INT_MIN and high <= _INT_MAX):
            raise Unsound("an integer beyond FHIR's 32 bits")
        if pa.types.is_floating(kind) and not (math.isfinite(low) and math.isfinite(high)):
            raise Unsound("a number too large for a double")


@cache
def _needs_check(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        return bool(_fields_to_check(kind))
    return pa.types.is_list(kind) or pa.types.is_int64(kind) or pa.types.is_floating(kind)


@cache
def _fields_to_check(kind: pa.StructType) -> tuple[int, ...]:
    return tuple(index for index in range(kind.num_fields) if _needs_check(kind.field(index).type))


@cache
def _schema(kind: str) -> pa.Schema:
    struct = model.resource_structs()[kind]
    return arrow_schema(struct).append(pa.field("resourceType", pa.string()))


@cache
def arrow_schema(struct: type) -> pa.Schema:
    """The Struct's Polars schema in Arrow's JSON reader's types (no large_* types: it rejects them)."""
    return pa.schema([(name, _arrow_type(dtype)) for name, dtype in model.polars_schema(struct).items()])


def _arrow_type(dtype: pl.DataType) -> pa.DataType:
    if isinstance(dtype, pl.List):
        return pa.list_(_arrow_type(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return pa.struct([(f.name, _arrow_type(f.dtype)) for f in dtype.fields])
    return _ARROW_SCALARS[dtype.base_type()]


_ARROW_SCALARS = {
    pl.String: pa.string(),
    pl.Float64: pa.float64(),
    pl.Int64: pa.int64(),
    pl.Boolean: pa.bool_(),
}
