"""Apply OMOCL files to flattened compositions: one candidate OMOP row per matched node.

The engine only finds things: which node gives each field of each row. Concept resolution, units,
domain routing and CDM columns come after, for all compositions at once (pipelines/sources/openehr/
mapper.py), so a code from openEHR goes through exactly the path a FHIR code takes.

How a row is found, for each entry whose archetype has a file (and each node an ``Include`` or a
``base_path`` hands on):

1. The *driver* is ``value``, else ``concept_id``: its first alternative that matches gives the
   rows, one per matched node. Every event of an observation therefore gives its own row (the other
   engine keeps the first event only; docs/openehr.md).
2. Every other field takes its first alternative that resolves, choosing, among the nodes a path
   matches, the one nearest the driver's node (longest common path), so the date of a value is
   the time of its own event.
3. A row needs its required fields and at least one element of the composition behind it; a row
   whose driver matched but a required field did not is reported as incomplete, never dropped
   silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from operator import itemgetter

import polars as pl
import yaml

from pipelines.mapping.omocl.grammar import CUSTOM, INCLUDE, Alternative, OmoclFile, RowMapping
from pipelines.project_files import data_dir

# the columns of the long frame the engine reads
_ENGINE_COLUMNS = (
    "composition_uid",
    "ehr_id",
    "entry_path",
    "entry_time",
    "node_path",
    "node_id",
    "is_element",
    "rm_type",
    "event_time",
    "node_time",
    "context_start",
    "value_text",
    "value_code",
    "value_terminology",
    "value_number",
    "value_units",
    "value_boolean",
    "value_datetime",
    "normal_low",
    "normal_high",
    "magnitude_status",
)
_SEGMENT = re.compile(r"/([^/\[#]+)(?:\[([^\]]*)\])?(?:#(\d+))?")
_PATTERN = re.compile(r"^([A-Za-z_]+)(?:\[([^\]]*)\])?$")
_DRIVERS = ("value", "concept_id")
_MAX_INCLUDE_DEPTH = 8
_SECONDS_PER_YEAR = 365.25 * 86400
_CONCEPT_OUTPUTS = ("concept", "qualifier", "route", "status", "site", "gender", "ethnicity")

CANDIDATE_SCHEMA: dict[str, pl.DataType] = {
    "composition_uid": pl.Utf8,
    "ehr_id": pl.Utf8,
    "omocl_file": pl.Utf8,
    "omocl_type": pl.Utf8,
    "mapping_index": pl.Int64,
    "archetype": pl.Utf8,
    "focus_path": pl.Utf8,
    **{
        f"{o}_{part}": t
        for o in _CONCEPT_OUTPUTS
        for part, t in (("const", pl.Int64), ("code", pl.Utf8), ("system", pl.Utf8), ("text", pl.Utf8))
    },
    "value_const": pl.Int64,
    "value_number": pl.Float64,
    "value_code": pl.Utf8,
    "value_system": pl.Utf8,
    "value_text": pl.Utf8,
    "value_boolean": pl.Boolean,
    "value_type": pl.Utf8,
    "unit": pl.Utf8,
    "unit_const": pl.Int64,
    "operator_const": pl.Int64,
    "range_low": pl.Float64,
    "range_high": pl.Float64,
    "operator": pl.Utf8,
    "quantity": pl.Float64,
    "start": pl.Datetime("us"),
    "end": pl.Datetime("us"),
    "birth": pl.Datetime("us"),
    "birth_year": pl.Int64,
    "unique_device_id": pl.Utf8,
    "production_id": pl.Utf8,
    "specimen_source_id": pl.Utf8,
}
INCOMPLETE_SCHEMA = {
    "composition_uid": pl.Utf8,
    "omocl_file": pl.Utf8,
    "focus_path": pl.Utf8,
    "missing_field": pl.Utf8,
}


@dataclass
class EngineResult:
    candidates: pl.DataFrame  # CANDIDATE_SCHEMA
    incomplete: pl.DataFrame  # INCOMPLETE_SCHEMA: rows whose driver matched but a required field did not
    custom_skipped: dict[str, int] = field(default_factory=dict)  # CustomMapping name -> times met


@cache
def field_roles() -> dict[str, dict[str, str]]:
    """OMOCL field name -> {role, output} (mappings/openehr/_engine/fields.yaml)."""
    return yaml.safe_load((data_dir("mappings") / "openehr" / "_engine" / "fields.yaml").read_text("utf-8"))


def apply_catalogue(elements: pl.DataFrame, catalogue: dict[str, tuple[OmoclFile, ...]]) -> EngineResult:
    """Candidate rows of every composition in ``elements`` (the reader's long frame)."""
    candidates: list[dict] = []
    incomplete: list[dict] = []
    custom: dict[str, int] = {}
    compositions: dict[str, list[dict]] = {}
    for row in elements.select(_ENGINE_COLUMNS).to_dicts():  # a composition's rows are adjacent
        row["_scope"] = row
        compositions.setdefault(row["composition_uid"], []).append(row)
    plans: dict = {}
    for nodes in compositions.values():
        found, missing, skipped = map_composition(nodes, catalogue, plans)
        candidates.extend(found)
        incomplete.extend(missing)
        for name, count in skipped.items():
            custom[name] = custom.get(name, 0) + count
    return EngineResult(
        candidates=pl.DataFrame(candidates, schema=CANDIDATE_SCHEMA, strict=False),
        incomplete=pl.DataFrame(incomplete, schema=INCOMPLETE_SCHEMA, strict=False),
        custom_skipped=custom,
    )


def map_composition(
    nodes: list[dict], catalogue: dict[str, tuple[OmoclFile, ...]], plans: dict | None = None
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """The candidate rows (CANDIDATE_SCHEMA dicts), incomplete rows and CustomMappings met of one
    composition, from its nodes as the walk gives them (``pipelines.sources.openehr.flatten``): own
    columns and the shared ``_scope``.

    Which nodes each field may come from depends only on the composition's structure (its node
    paths), not on its values; ``plans`` (one dict per catalogue, kept by the caller) keeps that
    choice per structure, so the many compositions of one template resolve their paths once (the
    synthetic 10 k patients' 28,586 compositions have 9 structures; at 1 k the engine went from 0.44
    to 0.25 CPU s)."""
    shape = (tuple(map(_NODE_PATH, nodes)), tuple(map(_IS_ELEMENT, nodes)))
    plan = plans.get(shape) if plans is not None else None
    if plan is None:
        plan = plan_composition(nodes, catalogue)
        if plans is not None:
            if len(plans) >= _MAX_PLANS:
                plans.clear()
            plans[shape] = plan
    return run_plan(plan, nodes)


def plan_composition(nodes: list[dict], catalogue: dict[str, tuple[OmoclFile, ...]]) -> CompositionPlan:
    """Which nodes give each field of each row, for every composition of the structure of ``nodes``
    (their node paths and element flags); ``nodes`` as ``map_composition`` takes them."""
    return _plan(_Tree(nodes), catalogue)


_MAX_PLANS = 4096
_NODE_PATH, _IS_ELEMENT = itemgetter("node_path"), itemgetter("is_element")
_CONST, _NODE, _MULTIPLY = 0, 1, 2


@dataclass(frozen=True)
class _RowPlan:
    """One candidate row of one mapping: where each of its fields may come from."""

    file: OmoclFile
    index: int
    mapping: RowMapping
    anchor: int  # node positions in the composition
    focus: int
    driven: bool  # a driver field chose the focus: a missing required field is reported
    # (field name, optional, steps), the steps tried in order: (_CONST, {column: value}, None, None),
    # (_NODE, reader, node position, is element), one per node an alternative reaches, nearest the
    # focus first, or (_MULTIPLY, output, element positions of each factor, None)
    fields: tuple[tuple[str, bool, tuple], ...]
    focus_path: str  # the focus node's path: the same in every composition of the structure
    labels: dict  # the columns a row of this plan always has, whatever the composition
    kept_without_evidence: bool  # a Person or Visit row stands without an element behind it


@dataclass(frozen=True)
class CompositionPlan:
    """The rows a composition structure gives, and where each field may come from."""

    rows: tuple[_RowPlan, ...]
    custom: tuple[tuple[str, int], ...]

    def positions(self) -> frozenset[int]:
        """The node positions ``run_plan`` reads: the other nodes need not be built."""
        read: set[int] = set()
        for row in self.rows:
            read.update((row.anchor, row.focus))
            for _, _, steps in row.fields:
                for step in steps:
                    if step[0] == _NODE:
                        read.add(step[2])
                    elif step[0] == _MULTIPLY:
                        for factor in step[2]:
                            read.update(factor)
        return frozenset(read)


def _plan(tree: _Tree, catalogue: dict[str, tuple[OmoclFile, ...]]) -> CompositionPlan:
    positions = {id(node): position for position, node in enumerate(tree.nodes)}
    rows: list[_RowPlan] = []
    custom: dict[str, int] = {}
    for anchor in tree.entries():
        for file in catalogue.get(anchor["node_id"], ()):
            _plan_file(tree, positions, file, anchor, catalogue, rows, custom, 0)
    return CompositionPlan(tuple(rows), tuple(custom.items()))


def _plan_file(tree, positions, file, anchor, catalogue, rows, custom, depth) -> None:
    for index, mapping in enumerate(file.mappings):
        if mapping.type == CUSTOM:
            custom[mapping.custom or ""] = custom.get(mapping.custom or "", 0) + 1
            continue
        anchors = tree.resolve(anchor, mapping.base_path) if mapping.base_path else [anchor]
        if mapping.type == INCLUDE:
            if depth < _MAX_INCLUDE_DEPTH:
                for node in anchors:
                    for included in catalogue.get(mapping.include or "", ()):
                        _plan_file(tree, positions, included, node, catalogue, rows, custom, depth + 1)
            continue
        for node in anchors:
            _plan_row(tree, positions, file, index, mapping, node, rows)


def _plan_row(tree, positions, file: OmoclFile, index: int, mapping: RowMapping, anchor: dict, rows) -> None:
    roles = field_roles()
    focuses, driver = _driver(tree, mapping, anchor)
    for focus in focuses:
        fields = []
        for spec in mapping.fields:
            role = roles.get(spec.name)
            if role is not None:
                steps = _plan_field(tree, positions, spec.alternatives, role, anchor, focus)
                fields.append((spec.name, spec.optional, steps))
        rows.append(
            _RowPlan(
                file,
                index,
                mapping,
                positions[id(anchor)],
                positions[id(focus)],
                driver is not None,
                tuple(fields),
                focus["node_path"],
                {
                    "omocl_file": file.name,
                    "omocl_type": mapping.type,
                    "mapping_index": index,
                    "archetype": file.archetype,
                    "focus_path": focus["node_path"],
                },
                mapping.type in ("Person", "Visit"),
            )
        )


def _plan_field(tree, positions, alternatives: tuple[Alternative, ...], role: dict, anchor, focus) -> tuple:
    """The steps of a field, in the order its alternatives are tried; a constant ends them."""
    steps: list[tuple] = []
    for alternative in alternatives:
        if alternative.kind == "code":
            if role["role"] == "concept" or (
                role["role"] == "value" and role["output"] in ("value", "unit", "operator")
            ):
                steps.append((_CONST, {f"{role['output']}_const": alternative.code}, None, None))
                break
            continue
        if alternative.kind == "multiplication":
            factors = tuple(
                tuple(
                    positions[id(n)]
                    for n in _nearest(tree.resolve(anchor, factor.path), focus)
                    if n["is_element"]  # only an element holds a number
                )
                for factor in alternative.factors
            )
            steps.append((_MULTIPLY, role["output"], factors, None))
            continue
        timed = role["role"] == "time"  # only a time may come from a structural node (event, entry)
        found = tuple(
            (positions[id(n)], n["is_element"])
            for n in _nearest(tree.resolve(anchor, alternative.path), focus)
            if timed or n["is_element"]
        )
        if found:
            read = _reader(role, alternative)
            steps.extend((_NODE, read, position, element) for position, element in found)
    return tuple(steps)


def run_plan(
    plan: CompositionPlan, nodes: list[dict] | dict[int, dict]
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """A plan applied to the values of a composition of its structure, as ``map_composition``
    returns them. ``nodes`` may hold only the positions ``plan.positions()`` names (by position)."""
    candidates: list[dict] = []
    incomplete: list[dict] = []
    for row_plan in plan.rows:
        row: dict = {}
        evidence = False
        missing = None
        for name, optional, steps in row_plan.fields:
            from_element = None  # the first step that gives a value: whether an element gave it
            for kind, what, where, element in steps:  # in one loop: no call per field, some 10 a row
                if kind == _NODE:
                    if what(nodes[where], row):
                        from_element = element
                        break
                elif kind == _CONST:
                    row.update(what)
                    from_element = False
                    break
                elif _multiply(what, where, nodes, row):
                    from_element = True
                    break
            if from_element is None:
                if not optional:
                    missing = name  # the row is not given: its other fields do not matter
                    break
            elif from_element:
                evidence = True
        if missing:
            if row_plan.driven:
                incomplete.append(
                    {
                        "composition_uid": nodes[row_plan.anchor]["_scope"]["composition_uid"],
                        "omocl_file": row_plan.file.name,
                        "focus_path": row_plan.focus_path,
                        "missing_field": missing,
                    }
                )
            continue
        if not evidence and not row_plan.kept_without_evidence:
            continue
        anchor = nodes[row_plan.anchor]["_scope"]
        row.update(row_plan.labels)
        row["composition_uid"] = anchor["composition_uid"]
        row["ehr_id"] = anchor["ehr_id"]
        candidates.append(row)
    return candidates, incomplete, dict(plan.custom)


def _multiply(output: str, factors: tuple, nodes, row: dict) -> bool:
    """The product of the first number of each factor's elements into ``row[output]``; False when a
    factor has none."""
    product = 1.0
    for factor in factors:
        numbers = [nodes[i]["value_number"] for i in factor if nodes[i].get("value_number") is not None]
        if not numbers:
            return False
        product *= numbers[0]
    row[output] = product
    return True


@dataclass(frozen=True)
class _Path:
    climbs: int  # leading ".."
    from_context: bool  # starts at the composition's context
    pattern: tuple[tuple[str, str | None], ...]  # (attribute, node id or None) below the start
    valid: bool = True


@cache
def _parse_path(path: str) -> _Path:
    parts = [p for p in path.strip().split("/") if p and p != "."]
    climbs = 0
    while parts and parts[0] == "..":
        climbs += 1
        parts.pop(0)
    from_context = bool(parts) and parts[0] == "context"
    if from_context:
        parts = parts[1:]
    pattern = []
    for part in parts:
        match = _PATTERN.match(part)
        if not match:
            return _Path(climbs, from_context, (), valid=False)
        predicate = match.group(2).split(",")[0].strip() if match.group(2) else None
        pattern.append((match.group(1), predicate))
    return _Path(climbs, from_context, tuple(pattern))


class _Tree:
    """The nodes of one composition, indexed for OMOCL path look-ups."""

    def __init__(self, nodes: list[dict]) -> None:
        self.nodes = nodes
        self.by_path: dict[str, dict] = {}
        self.by_generic: dict[tuple, list[dict]] = {}
        self._by_depth: dict[int, list[dict]] | None = None  # built on the first wildcard path
        # every row of a mapping resolves the same paths from the same anchor: resolved once
        self._resolved: dict[tuple[str, str], list[dict]] = {}
        for node in nodes:
            segments = tuple(_SEGMENT.findall(node["node_path"]))
            node["_segments"] = segments
            node["_generic"] = tuple((a, n or None) for a, n, _ in segments)
            self.by_path[node["node_path"]] = node
            self.by_generic.setdefault(node["_generic"], []).append(node)

    def entries(self) -> list[dict]:
        return [
            n for n in self.nodes if not n["is_element"] and n["node_path"] == n["_scope"].get("entry_path")
        ]

    def context(self) -> dict | None:
        return self.by_path.get("/context")

    def resolve(self, anchor: dict, path: str) -> list[dict]:
        """Nodes an OMOCL path reaches from ``anchor`` (``..`` climbs; ``context`` is the composition's)."""
        key = (anchor["node_path"], path)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolved[key] = self._resolve(anchor, path)
        return found

    def _resolve(self, anchor: dict, path: str) -> list[dict]:
        parsed = _parse_path(path)
        if not parsed.valid:
            return []
        segments = anchor["_segments"]
        prefix = () if parsed.from_context else segments[: max(len(segments) - parsed.climbs, 0)]
        pattern = parsed.pattern
        if not pattern:
            if not prefix:
                context = self.context()
                return [context] if context else []
            node = self.by_path.get("".join(_render(s) for s in prefix))
            return [node] if node else []
        if parsed.from_context:
            pattern = (("context", None), *pattern)
        size = len(prefix)
        if all(pred is not None or attr == "context" for attr, pred in pattern):
            generic = anchor["_generic"][:size] + pattern
            return [r for r in self.by_generic.get(generic, ()) if r["_segments"][:size] == prefix]
        if self._by_depth is None:
            self._by_depth = {}
            for node in self.nodes:
                self._by_depth.setdefault(len(node["_segments"]), []).append(node)
        return [
            row
            for row in self._by_depth.get(size + len(pattern), ())
            if row["_segments"][:size] == prefix
            and all(
                seg[0] == attr and (pred is None or seg[1] == pred)
                for seg, (attr, pred) in zip(row["_segments"][size:], pattern, strict=True)
            )
        ]


def _render(segment: tuple[str, str, str]) -> str:
    attr, node_id, index = segment
    return f"/{attr}" + (f"[{node_id}]" if node_id else "") + (f"#{index}" if index else "")


def _nearest(nodes: list[dict], focus: dict) -> list[dict]:
    """``nodes`` ordered by closeness to ``focus`` (longest common path first, then document order)."""
    if len(nodes) < 2:
        return nodes
    target = focus["_segments"]

    def shared(node: dict) -> int:
        count = 0
        for a, b in zip(node["_segments"], target, strict=False):
            if a != b:
                break
            count += 1
        return count

    return sorted(nodes, key=lambda n: -shared(n))


def _driver(tree: _Tree, mapping: RowMapping, anchor: dict) -> tuple[list[dict], str | None]:
    """The nodes that each give one row, and the field that chose them (None: one row at the anchor)."""
    for name in _DRIVERS:
        spec = mapping.field(name)
        if spec is None:
            continue
        for alternative in spec.alternatives:
            if alternative.kind == "code":
                break
            path = alternative.path if alternative.kind in ("path", "conceptMap") else None
            nodes = [n for n in tree.resolve(anchor, path) if n["is_element"]] if path else []
            if nodes:
                return nodes, name
    return [anchor], None


def _reader(role: dict, alternative: Alternative) -> Callable[[dict, dict], bool]:
    """Writes what one node gives for a field of this role into the row; False when it gives
    nothing usable. The role and the alternative are looked at once per plan, not once per node,
    and the values go straight into the row (no dict per field to merge)."""
    kind, out = role["role"], role["output"]
    if kind == "time":

        def read(node: dict, row: dict) -> bool:
            value = _node_time(node)
            if value is None:
                return False
            row[out] = value
            return True

    elif alternative.kind == "conceptMap":
        concepts = dict(alternative.concept_map)
        column = "value_const" if out == "value" else f"{out}_const"

        def read(node: dict, row: dict) -> bool:
            mapped = concepts.get(node.get("value_code") or "")
            if mapped is None:
                return False
            row[column] = mapped
            return True

    elif kind == "concept":
        code, system, text = f"{out}_code", f"{out}_system", f"{out}_text"

        def read(node: dict, row: dict) -> bool:
            if node.get("value_code") is None and node.get("value_text") is None:
                return False
            row[code] = node.get("value_code")
            row[system] = node.get("value_terminology")
            row[text] = node.get("value_text")
            return True

    elif kind == "value" and out == "value":

        def read(node: dict, row: dict) -> bool:
            rm_type = node.get("rm_type")
            if rm_type is None:  # an ELEMENT with only a null_flavour
                return False
            row["value_number"] = node.get("value_number")
            row["value_code"] = node.get("value_code")
            row["value_system"] = node.get("value_terminology")
            row["value_text"] = node.get("value_text")
            row["value_boolean"] = node.get("value_boolean")
            row["value_type"] = rm_type
            return True

    elif kind in ("value", "number", "text"):
        column = _VALUE_COLUMNS[out] if kind == "value" else f"value_{kind}"

        def read(node: dict, row: dict) -> bool:
            value = node.get(column)
            if value is None:
                return False
            row[out] = value
            return True

    elif kind == "year":

        def read(node: dict, row: dict) -> bool:
            year = _birth_year(node)
            if year is None:
                return False
            row["birth_year"] = year
            return True

    else:

        def read(node: dict, row: dict) -> bool:
            return False

    return read


# the node column a ``value``-role output other than the value itself reads
_VALUE_COLUMNS = {
    "unit": "value_units",
    "range_low": "normal_low",
    "range_high": "normal_high",
    "operator": "magnitude_status",
}


def _node_time(node: dict) -> datetime | None:
    """A date field's value: an element's own date, else the time of the node (event, entry, context)."""
    if node["is_element"]:
        return node.get("value_datetime")
    if node["node_time"] is not None:
        return node["node_time"]
    scope = node["_scope"]
    for column in ("event_time", "entry_time", "context_start"):
        if scope.get(column) is not None:
            return scope[column]
    return None


def _birth_year(node: dict) -> int | None:
    if node.get("value_datetime") is not None:
        return node["value_datetime"].year
    number = node.get("value_number")
    if number is None:
        return None
    if node.get("rm_type") == "DV_DURATION":
        years = number / _SECONDS_PER_YEAR
    elif number >= 1800:  # a year written as a number
        return int(number)
    else:
        years = number
    scope = node["_scope"]
    recorded = scope.get("event_time") or scope.get("entry_time") or scope["context_start"]
    if recorded is None:
        return None
    return int((recorded.year + recorded.timetuple().tm_yday / 366) - years)
