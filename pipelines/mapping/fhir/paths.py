"""The element paths of mappings/fhir/*.yaml, compiled to Polars expressions on a staged frame.

A small, FHIRPath-like subset a terminology person can read:

``valueQuantity.value``                     nested element
``performer[0].actor``                      list item (0-based), null when the list is shorter
``extension[url='http://...us-core-race']`` first list item whose field equals the text
``item.code``                               ``item`` is the list element an output iterates over
"""

from __future__ import annotations

import re
from functools import cache

import polars as pl

_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[[^\]]*\])*)(?:\.|$)")
_INDEX = re.compile(r"\[(?:(\d+)|([A-Za-z_][A-Za-z0-9_]*)\s*=\s*'([^']*)')\]")


class PathError(ValueError):
    """A path in a mapping file that cannot be read."""


def compile_path(path: str) -> pl.Expr:
    """The expression for ``path``; raises PathError naming the part it cannot read."""
    return _compile(path)


@cache
def _compile(path: str) -> pl.Expr:
    position = 0
    expr: pl.Expr | None = None
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if not match or match.end() == position:
            raise PathError(f"cannot read path {path!r} at character {position}")
        name, selectors = match.group(1), match.group(2)
        expr = pl.col(name) if expr is None else expr.struct.field(name)
        for selector in _INDEX.finditer(selectors):
            index, key, value = selector.groups()
            if index is not None:
                expr = expr.list.get(int(index), null_on_oob=True)
            else:
                expr = expr.list.eval(
                    pl.element().filter(pl.element().struct.field(key) == value)
                ).list.first()
        if sum(len(s.group(0)) for s in _INDEX.finditer(selectors)) != len(selectors):
            raise PathError(f"cannot read the selector {selectors!r} in path {path!r}")
        position = match.end()
    if expr is None:
        raise PathError("empty path")
    return expr


def root_of(path: str) -> str:
    """The top-level element a path starts from (to check it exists in the staged frame)."""
    match = _SEGMENT.match(path)
    if not match:
        raise PathError(f"cannot read path {path!r}")
    return match.group(1)
