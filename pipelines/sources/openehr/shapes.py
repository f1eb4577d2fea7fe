"""Compositions of a structure already seen, read without building their paths and rows.

An export's compositions share a few structures (the synthetic 10 k patients' 28,586 compositions
have 9): the same nodes, element value types, entries and events. The general walk
(``flatten.walk_composition``) gives every node its two paths and its own dict, though the OMOCL plan
of a structure reads a handful of its nodes. ``read_shape`` walks a composition once for what
changes from one composition to the next (every element's value, every entry, event and history
time, parsed and checked as the general walk does) and a key of its structure. A ``Template``, made
once per structure from the general walk of its first composition, gives the rest: the places and
scopes of the nodes a plan reads, the only ones built as dicts.

Anything the general walk would refuse, or that is not plain (a node that is not an object, an
unknown type, a bad time or number), gives None: the caller walks that composition the general
way, which raises the error with the path of the node.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from msgspec import UNSET

from pipelines.sources.openehr.canonical import EMPTY, Node, present
from pipelines.sources.openehr.flatten import (
    _CHILD_ATTRIBUTES,
    ENTRY_TYPES,
    EVENT_TYPES,
    VALUE_TYPES,
    CompositionError,
    _implicit_type,
    _implicit_value_type,
    _read_value,
    _required_time,
    _time_value,
)


@dataclass
class Shape:
    """What ``read_shape`` read of one composition."""

    key: tuple  # the structure: node types, archetype node ids, value types, child counts
    values: list  # by node position: an element's value columns (a dict), else the node's own time
    times: list[datetime]  # as FlatComposition.times
    setting_code: str | None
    context_start: datetime | None
    context_end: datetime | None


_OBJECT_OR_NULL = frozenset(b"{n")  # first byte of a raw JSON object, or of null


class _Unusual(Exception):
    """The composition is left to the general walk."""


def read_shape(composition: Node, zone: ZoneInfo) -> Shape | None:
    """The values and structure of a composition, its nodes in the general walk's order; None when
    the general walk must read it."""
    if not isinstance(composition, Node) or composition.rm_type not in (UNSET, "COMPOSITION"):
        return None
    context = composition.context
    if context is not None and not isinstance(context, Node):
        return None
    if context == EMPTY:
        context = None
    content = composition.content
    if content is not None and not isinstance(content, list | Node):
        return None
    walker = _ShapeWalker(zone)
    start = end = setting = None
    try:
        if context is not None:
            start = _required_time(context.start_time, "", zone)
            end = _time_value(context.end_time, zone)
            setting = ((context.setting or {}).get("defining_code") or {}).get("code_string")
            walker.values.append(start)  # the context's own node
            if isinstance(context.other_context, Node):
                walker.tokens.append("other_context")
                walker.visit(context.other_context, "other_context", None)
        walker.tokens.append(context is not None)
        for item in content if isinstance(content, list) else () if content is None else (content,):
            walker.visit(item, "content", None)
    except (_Unusual, CompositionError):
        return None
    return Shape(tuple(walker.tokens), walker.values, walker.times, setting, start, end)


class _ShapeWalker:
    """``flatten._Walker`` without paths, rows or scopes: the same nodes in the same order, the same
    values, times and checks (a check that fails raises for the general walk to name it)."""

    __slots__ = ("times", "tokens", "values", "zone")

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.tokens: list = []
        self.values: list = []
        self.times: list[datetime] = []

    def visit(self, node: object, attr: str, event_time: datetime | None) -> None:
        if not isinstance(node, Node):
            raise _Unusual
        rm_type = node.rm_type
        if rm_type is None or rm_type is UNSET:
            rm_type = _implicit_type(attr, node)
        tokens = self.tokens
        if rm_type == "ELEMENT":
            if node.name and memoryview(node.name)[0] not in _OBJECT_OR_NULL:
                raise _Unusual  # a name that is not an object: the general walk quarantines it
            value = present(node.value)
            row: dict = {}
            kind = None
            if isinstance(value, dict):
                kind = row["rm_type"] = value.get("_type") or _implicit_value_type(value)
                if kind not in VALUE_TYPES:
                    raise _Unusual
                _read_value(row, value, self.zone, "")
            elif value is not None:
                raise _Unusual
            tokens += (rm_type, node.archetype_node_id, kind)
            self.values.append(row)
            return
        children = _CHILD_ATTRIBUTES.get(rm_type) if isinstance(rm_type, str) else None
        if children is None:
            raise _Unusual
        own_time = None
        if rm_type in ENTRY_TYPES:
            if node.rm_type == "ACTION":  # as flatten._Walker._entry_time: the type written, not implied
                own_time = _required_time(present(node.time), "", self.zone)
            elif isinstance(node.data, Node) and node.data.origin is not UNSET:
                own_time = _time_value(node.data.origin, self.zone)
            spanned = event_time or own_time
            if spanned is not None:
                self.times.append(spanned)
        elif rm_type in EVENT_TYPES:
            if node.width is not None and not isinstance(node.width, dict):
                raise _Unusual  # as a name
            own_time = event_time = _required_time(present(node.time), "", self.zone)
            self.times.append(own_time)
        elif rm_type == "HISTORY":
            own_time = _time_value(present(node.origin), self.zone)
        tokens += (rm_type, node.archetype_node_id)
        self.values.append(own_time)
        for child_attr, single in children:
            value = getattr(node, child_attr)
            if value is None or value is UNSET:
                tokens.append(0)
            elif single or not isinstance(value, list):  # a single member may be a bare object
                tokens.append(1)
                self.visit(value, child_attr, event_time)
            else:
                tokens.append(len(value))
                for child in value:
                    self.visit(child, child_attr, event_time)


# columns of the general walk's nodes that no plan reads, and the scope's columns plans read
_NOT_COMPARED = frozenset({"path", "node_path", "node_id", "name", "null_flavour"})
_SCOPE_READ = ("entry_time", "event_time", "context_start")


@dataclass(frozen=True)
class Template:
    """What a structure's compositions share: the places and scopes of the nodes a plan reads."""

    size: int  # nodes
    # (position, is an element, its RM type, index of its scope in ``scopes``) of each node built
    built: tuple[tuple[int, bool, str | None, int], ...]
    # positions of the entry and the event enclosing the nodes built (None: not in one)
    scopes: tuple[tuple[int | None, int | None], ...]

    @staticmethod
    def of(nodes: list[dict], shape: Shape, positions: frozenset[int]) -> Template | None:
        """The template of ``shape``'s structure from the general walk's ``nodes`` of the same
        composition, for the nodes at ``positions``; None when the two walks disagree on it (the
        structure is then always walked the general way)."""
        if len(nodes) != len(shape.values):
            return None
        at = {node["node_path"]: position for position, node in enumerate(nodes)}
        built = []
        scopes: dict[tuple[int | None, int | None], int] = {}
        for position in sorted(positions):
            node = nodes[position]
            scope = node["_scope"]
            enclosing = (
                at.get(scope["entry_path"]) if "entry_path" in scope else None,
                at.get(scope["event_path"]) if "event_path" in scope else None,
            )
            built.append(
                (position, node["is_element"], node.get("rm_type"), scopes.setdefault(enclosing, len(scopes)))
            )
        template = Template(len(nodes), tuple(built), tuple(scopes))
        made = template.nodes(shape, scope={"context_start": shape.context_start})
        for position, node in made.items():
            walked = nodes[position]
            columns = (set(node) | set(walked)) - _NOT_COMPARED
            if any(node.get(c) != walked.get(c) for c in columns if not c.startswith("_")) or any(
                node["_scope"].get(c) != walked["_scope"].get(c) for c in _SCOPE_READ
            ):
                return None
        return template

    def nodes(self, shape: Shape, scope: dict) -> dict[int, dict]:
        """The nodes the plan reads, by position, as the general walk gives them (the columns plans
        read, and a ``_scope`` of ``scope`` with the enclosing entry's and event's times)."""
        values = shape.values
        scopes = []
        for entry, event in self.scopes:
            own = dict(scope)
            if entry is not None:
                own["entry_time"] = values[entry]
            if event is not None:
                own["event_time"] = values[event]
            scopes.append(own)
        made: dict[int, dict] = {}
        for position, is_element, rm_type, scope_index in self.built:
            if is_element:  # the composition's own dict, made by read_shape
                node = values[position]
                node["is_element"] = True
                node["_scope"] = scopes[scope_index]
            else:
                node = {
                    "is_element": False,
                    "rm_type": rm_type,
                    "node_time": values[position],
                    "_scope": scopes[scope_index],
                }
            made[position] = node
        return made
