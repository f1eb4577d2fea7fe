"""The reader's fast path: sound FHIR records parsed straight from their bytes into typed columns.

The exact path (``reader.py``) decodes each record with msgspec into a Struct, walks it in Python,
writes the Structs back as JSON and lets Arrow's JSON reader build the columns: two parses and a
Python step per resource. Here Arrow's reader gets the source bytes themselves, a block of Bulk NDJSON
lines or all the entries of one type of a Bundle, with the explicit schema of ``model.py``'s Structs
plus ``resourceType``: one parse, in Arrow's threads, no Python object per resource (measured on the
1 k-patient sources: 2.8 CPU s for the exact path, see docs/performance.md).

A block is only taken when the result is what the exact path would give; anything else raises
``Unsound`` and the reader reads that block the exact way, so every quarantine row (file, position,
reason) is the same as before. Arrow refuses what msgspec refuses (a string where a number belongs, an
object where a list belongs, malformed JSON, an unescaped control character, invalid UTF-8 in a kept
element), sometimes more (duplicate keys, numbers beyond a double): those blocks go the exact way.
Where Arrow is laxer, the block is screened: ``NaN``/``Infinity`` literals (on the bytes), a ``null``
list item, an integer outside FHIR's 32 bits, a number too large for a double (on the columns), two
objects on one line (row count, no blank line), a record of another type (``resourceType``). One difference
remains: an element that the Structs skip, nested deeper than msgspec's limit (about 1,000 levels),
is read here and quarantined by the exact path.
"""

from __future__ import annotations

import re
from functools import cache

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from pipelines.sources.fhir import model

# Searched for a newline first, so it scans at about 1 GB/s (measured; a pattern opening with ``^``
# took 15 times as long).
_BLANK_LINE = re.compile(rb"\n[ \t\r]*\n")
# model.Int: a FHIR integer is 32-bit signed.
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class Unsound(Exception):
    """This block is not for the fast path: read it record by record."""


def parse_block(data: bytes, kind: str, rows: int) -> pl.DataFrame:
    """The ``rows`` records of type ``kind`` in ``data`` (one JSON object per line) as a frame with
    the Struct's columns, in the exact path's types. Raises ``Unsound`` when the exact path is needed."""
    if b"NaN" in data or b"Infinity" in data:
        raise Unsound("a NaN or Infinity literal, which msgspec rejects and Arrow accepts")
    # Arrow skips blank lines: with one, a line holding two objects would go unnoticed.
    if _BLANK_LINE.search(data) or not data.split(b"\n", 1)[0].strip():
        raise Unsound("a blank line")
    try:
        table = pa_json.read_json(
            pa.py_buffer(data),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_schema(kind), unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowException, ValueError) as error:  # ArrowInvalid, and UnicodeDecodeError
        raise Unsound(str(error)) from error
    if table.num_rows != rows:
        raise Unsound("not one object per line")
    kinds = table.column("resourceType").unique()  # (pc.equal with a str would import pandas: 1-3 s)
    if kinds.null_count or len(kinds) != 1 or kinds[0].as_py() != kind:
        raise Unsound("records of another type")
    table = table.drop_columns("resourceType")
    for column in table.columns:
        for chunk in column.chunks:
            _check(chunk)
    return pl.from_arrow(table)


def _check(array: pa.Array) -> None:
    """What msgspec would refuse and Arrow kept: a null list item, an integer beyond 32 bits, a
    non-finite number. Walks the nested arrays without copying them."""
    kind = array.type
    if pa.types.is_list(kind):
        items = array.flatten()
        if items.null_count:
            raise Unsound("a null list item")
        _check(items)
    elif pa.types.is_struct(kind):
        for index in range(kind.num_fields):
            _check(array.field(index))
    elif len(array) == array.null_count:
        return
    elif pa.types.is_int64(kind) and not _within_32_bits(pc.min_max(array)):
        raise Unsound("an integer beyond FHIR's 32 bits")
    elif pa.types.is_floating(kind) and not pc.all(pc.is_finite(array)).as_py():
        raise Unsound("a number too large for a double")


def _within_32_bits(extremes: pa.StructScalar) -> bool:
    return extremes["min"].as_py() >= _INT_MIN and extremes["max"].as_py() <= _INT_MAX


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
