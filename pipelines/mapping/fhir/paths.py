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
    steps = _steps(path)
    expr = pl.col(steps[0][1])
    position = 1
    while position < len(steps):
        kind, *selector = steps[position]
        if kind == "field":
            expr = expr.struct.field(selector[0])
            position += 1
            continue
        # The fields read after a list selector are read inside the list, before picking the item:
        # ``referenceRange[0].low.value`` takes the value of every range, then the first, 10x faster on
        # 947 k Observations than taking the first range (copying its nested structs), then its value.
        fields = []
        position += 1
        while position < len(steps) and steps[position][0] == "field":
            fields.append(steps[position][1])
            position += 1
        if kind == "index":
            expr = _inside(expr, pl.element(), fields).list.get(int(selector[0]), null_on_oob=True)
        else:
            key, value = selector
            match = pl.element().filter(pl.element().struct.field(key) == value)
            expr = _inside(expr, match, fields).list.first()
    return expr


def _inside(items: pl.Expr, item: pl.Expr, fields: list[str]) -> pl.Expr:
    """``items`` (a list) with ``item`` (an expression of ``pl.element()``), then ``fields``, read
    inside it."""
    if not fields and item.meta.eq(pl.element()):
        return items
    for name in fields:
        item = item.struct.field(name)
    return items.list.eval(item)


def _steps(path: str) -> list[tuple[str, ...]]:
    """``a.b[0].c[k='v']`` -> field a, field b, index 0, field c, match k v."""
    steps: list[tuple[str, ...]] = []
    position = 0
    while position < len(path):
        match = _SEGMENT.match(path, position)
        if not match or match.end() == position:
            raise PathError(f"cannot read path {path!r} at character {position}")
        name, selectors = match.group(1), match.group(2)
        steps.append(("field", name))
        for selector in _INDEX.finditer(selectors):
            index, key, value = selector.groups()
            steps.append(("index", index) if index is not None else ("match", key, value))
        if sum(len(s.group(0)) for s in _INDEX.finditer(selectors)) != len(selectors):
            raise PathError(f"cannot read the selector {selectors!r} in path {path!r}")
        position = match.end()
    if not steps:
        raise PathError("empty path")
    return steps


def root_of(path: str) -> str:
    """The top-level element a path starts from (to check it exists in the staged frame)."""
    match = _SEGMENT.match(path)
    if not match:
        raise PathError(f"cannot read path {path!r}")
    return match.group(1)
