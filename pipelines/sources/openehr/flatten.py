"""A COMPOSITION (decoded by ``canonical.py``) walked into rows: one per ELEMENT, plus one per
structural node.

Structural nodes (entries, events, clusters, item trees, the context) get a row too, carrying their
own time, so an OMOCL path may point at an event (``/data[at0001]/events[at0002]``: its time) or at
the context (``../context``: the composition start time) exactly as it points at an element.

Every row carries its archetype path twice: ``path`` (generic, ``items[at0004]``) for matching
mapping files, and ``node_path`` with sibling indexes (``items[at0004]#1``) for keys and scoping.
A composition the reader cannot trust (unknown RM type, missing time) raises ``CompositionError``
with the path of the offending node: the caller quarantines the whole composition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

import polars as pl
from msgspec import UNSET

from pipelines.sources.openehr.canonical import EMPTY, Node, present, raw_value
from pipelines.sources.openehr.times import parse_clock, parse_time

ELEMENT_SCHEMA = {
    "composition_uid": pl.Utf8,
    "composition_version": pl.Utf8,
    "ehr_id": pl.Utf8,
    "template_id": pl.Utf8,
    "composition_archetype": pl.Utf8,
    "setting_code": pl.Utf8,
    "context_start": pl.Datetime("us"),
    "context_end": pl.Datetime("us"),
    "entry_type": pl.Utf8,
    "entry_archetype": pl.Utf8,
    "entry_path": pl.Utf8,
    "entry_time": pl.Datetime("us"),
    "archetype": pl.Utf8,  # nearest enclosing archetype root (entry or archetyped cluster)
    "path": pl.Utf8,
    "node_path": pl.Utf8,
    "node_id": pl.Utf8,
    "is_element": pl.Boolean,
    "rm_type": pl.Utf8,  # the value's type for an ELEMENT, the node's type otherwise
    "name": pl.Utf8,
    "event_type": pl.Utf8,
    "event_path": pl.Utf8,
    "event_time": pl.Datetime("us"),
    "event_width": pl.Utf8,
    "node_time": pl.Datetime("us"),
    "value_text": pl.Utf8,
    "value_code": pl.Utf8,
    "value_terminology": pl.Utf8,
    "value_number": pl.Float64,
    "value_units": pl.Utf8,
    "value_boolean": pl.Boolean,
    "value_datetime": pl.Datetime("us"),
    "value_precision": pl.Utf8,
    "value_time": pl.Time,
    "value_duration": pl.Utf8,
    "value_lower": pl.Float64,
    "value_upper": pl.Float64,
    "numerator": pl.Float64,
    "denominator": pl.Float64,
    "proportion_type": pl.Int64,
    "normal_low": pl.Float64,
    "normal_high": pl.Float64,
    "magnitude_status": pl.Utf8,
    "null_flavour": pl.Utf8,
    "source_file": pl.Utf8,
    "position": pl.Int64,
}

ENTRY_TYPES = frozenset(
    {"OBSERVATION", "EVALUATION", "INSTRUCTION", "ACTION", "ADMIN_ENTRY", "GENERIC_ENTRY"}
)
EVENT_TYPES = frozenset({"POINT_EVENT", "INTERVAL_EVENT", "EVENT"})
# RM container types and the attributes holding their archetyped children (openEHR RM 1.1.0).
_CHILDREN = {
    "COMPOSITION": ("content",),
    "SECTION": ("items",),
    "OBSERVATION": ("data", "state", "protocol"),
    "EVALUATION": ("data", "protocol"),
    "INSTRUCTION": ("activities", "protocol"),
    "ACTIVITY": ("description",),
    "ACTION": ("description", "protocol"),
    "ADMIN_ENTRY": ("data",),
    "GENERIC_ENTRY": ("data",),
    "HISTORY": ("events", "summary"),
    "POINT_EVENT": ("data", "state"),
    "INTERVAL_EVENT": ("data", "state"),
    "EVENT": ("data", "state"),
    "ITEM_TREE": ("items",),
    "ITEM_LIST": ("items",),
    "ITEM_SINGLE": ("item",),
    "ITEM_TABLE": ("rows",),
    "CLUSTER": ("items",),
    "EVENT_CONTEXT": ("other_context",),
    "EHR_STATUS": ("other_details",),
}
_SINGLE = frozenset(
    {"data", "state", "protocol", "description", "summary", "item", "other_context", "other_details"}
)
# (attribute, single-valued) of each container type, read once per node
_CHILD_ATTRIBUTES = {rm: tuple((a, a in _SINGLE) for a in attrs) for rm, attrs in _CHILDREN.items()}
VALUE_TYPES = frozenset(
    {
        "DV_QUANTITY",
        "DV_COUNT",
        "DV_PROPORTION",
        "DV_CODED_TEXT",
        "DV_TEXT",
        "DV_ORDINAL",
        "DV_SCALE",
        "DV_BOOLEAN",
        "DV_DATE_TIME",
        "DV_DATE",
        "DV_TIME",
        "DV_DURATION",
        "DV_IDENTIFIER",
        "DV_INTERVAL",
        "DV_MULTIMEDIA",
        "DV_PARSABLE",
        "DV_URI",
        "DV_EHR_URI",
        "DV_STATE",
    }
)
# DV_PROPORTION.type (RM PROPORTION_KIND): 0 ratio, 1 unitary, 2 percent, 3 fraction, 4 integer fraction
_PERCENT, _UNITARY = 2, 1
_DURATION = re.compile(
    r"^(-)?P(?:(\d+(?:\.\d+)?)Y)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)W)?(?:(\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
_ARCHETYPE_RM_TYPE = re.compile(r"^openEHR-EHR-([A-Z_]+)\.")
# seconds per ISO 8601 duration designator, calendar units at their average length
_DURATION_SECONDS = (365.25 * 86400, 30.4375 * 86400, 7 * 86400, 86400, 3600, 60, 1)


# A composition repeats its times (the context start is the time of most of its events and entries):
# at 1 k patients 46 k time texts are 6.6 k distinct ones. The values are immutable, so shared.
_parse_time = lru_cache(maxsize=4096)(parse_time)


class CompositionError(ValueError):
    """The composition cannot be read; ``path`` says where, ``code`` is the machine reason."""

    def __init__(self, code: str, path: str, reason: str) -> None:
        super().__init__(f"{reason} at {path or '/'}")
        self.code = code
        self.path = path or "/"
        self.reason = reason


def _object(value: object, path: str) -> dict | None:
    """An RM attribute that must be a JSON object when present (a DV_TEXT name, a DV_DURATION width)."""
    if value is None or isinstance(value, dict):
        return value
    raise CompositionError("malformed", path, "expected an object")


def composition_uid(composition: Node) -> tuple[str | None, str | None]:
    """``uid.value`` split into (uid without version, version tree id)."""
    uid = (composition.uid or {}).get("value")
    if not isinstance(uid, str) or not uid:
        return None, None
    parts = uid.split("::")
    return parts[0], parts[2] if len(parts) > 2 else None


@dataclass
class FlatComposition:
    """One composition walked: its nodes and the times of its own entries and events.

    A node holds its own columns of ELEMENT_SCHEMA; the columns it shares with its enclosing entry or
    event (and the composition's) are in one ``_scope`` dict shared by all of them, so a node costs
    one small dict, not a copy of 45 columns (building full rows was a third of the reading time).
    """

    nodes: list[dict]
    times: list[datetime]  # event time, else entry time, of every entry and event: the record's span

    def rows(self) -> list[dict]:
        """The nodes as full rows of ELEMENT_SCHEMA (the private keys are left for the frame to drop)."""
        return [{**node["_scope"], **node} for node in self.nodes]


def walk_composition(
    composition: Node,
    *,
    uid: str,
    version: str | None,
    ehr_id: str,
    zone: ZoneInfo,
    source_file: str,
    position: int,
) -> FlatComposition:
    """The nodes of one composition in document order, the context first."""
    if not isinstance(composition, Node) or composition.rm_type not in (UNSET, "COMPOSITION"):
        raise CompositionError("not_a_composition", "/", "the record is not a COMPOSITION")
    context = composition.context
    if context is not None and not isinstance(context, Node):
        raise CompositionError("malformed", "/context", "expected an object")
    if context == EMPTY:  # "context": {} is as good as none
        context = None
    start = end = setting = None
    if context is not None:
        # context is optional on a COMPOSITION; when present its start_time is mandatory (RM 1.1.0)
        start = _required_time(context.start_time, "/context/start_time", zone)
        end = _time_value(context.end_time, zone)
        setting = ((context.setting or {}).get("defining_code") or {}).get("code_string")
    details = raw_value(composition.archetype_details) or {}
    archetype = composition.archetype_node_id or (details.get("archetype_id") or {}).get("value")
    base = {
        "composition_uid": uid,
        "composition_version": version,
        "ehr_id": ehr_id,
        "template_id": (details.get("template_id") or {}).get("value"),
        "composition_archetype": archetype,
        "setting_code": setting,
        "context_start": start,
        "context_end": end,
        "source_file": source_file,
        "position": position,
    }
    walker = _Walker(zone)
    if start is not None:
        walker.structural("/context", "/context", None, "EVENT_CONTEXT", base, start)
    if context is not None and isinstance(context.other_context, Node):
        walker.walk(context.other_context, "/context", "/context", "other_context", None, base)
    for index, item in enumerate(_as_list(composition.content)):
        walker.walk(item, "", "", "content", index, base)
    return FlatComposition(walker.nodes, walker.times)


class _Walker:
    """Depth-first walk keeping the enclosing entry and event of every node (in its ``_scope``)."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.nodes: list[dict] = []
        self.times: list[datetime] = []

    def walk(
        self,
        node: object,
        parent: str,
        parent_generic: str,
        attr: str,
        index: int | None,
        scope: dict,
    ) -> None:
        if not isinstance(node, Node):
            raise CompositionError("malformed", f"{parent}/{attr}", "expected an object")
        rm_type = node.rm_type
        node_id = node.archetype_node_id
        if rm_type is None or rm_type is UNSET:
            rm_type = _implicit_type(attr, node)
        segment = f"{attr}[{node_id}]" if node_id else attr
        generic = f"{parent_generic}/{segment}"
        indexed = f"{parent}/{segment}" if index is None else f"{parent}/{segment}#{index}"
        if rm_type == "ELEMENT":
            self.element(node, indexed, generic, node_id, scope)
            return
        children = _CHILD_ATTRIBUTES.get(rm_type) if isinstance(rm_type, str) else None
        if children is None:
            raise CompositionError("unknown_rm_type", indexed, f"unknown RM type {rm_type!r}")
        if isinstance(node_id, str) and node_id.startswith("openEHR-"):
            scope = {**scope, "archetype": node_id}
        own_time = None
        if rm_type in ENTRY_TYPES:
            own_time = self._entry_time(node, indexed)
            scope = {
                **scope,
                "entry_type": rm_type,
                "entry_archetype": node_id,
                "entry_path": indexed,
                "entry_time": own_time,
            }
            spanned = scope.get("event_time") or own_time
            if spanned is not None:
                self.times.append(spanned)
        elif rm_type in EVENT_TYPES:
            own_time = _required_time(present(node.time), f"{indexed}/time", self.zone)
            width = (_object(node.width, f"{indexed}/width") or {}).get("value")
            scope = {
                **scope,
                "event_type": rm_type,
                "event_path": indexed,
                "event_time": own_time,
                "event_width": width,
            }
            self.times.append(own_time)
        elif rm_type == "HISTORY":
            own_time = _time_value(present(node.origin), self.zone)
        self.nodes.append(
            {
                "path": generic,
                "node_path": indexed,
                "node_id": node_id,
                "is_element": False,
                "rm_type": rm_type,
                "node_time": own_time,
                "_scope": scope,
            }
        )
        for child_attr, single in children:
            value = getattr(node, child_attr)
            if value is None or value is UNSET:
                continue
            if single:
                self.walk(value, indexed, generic, child_attr, None, scope)
            elif isinstance(value, list):
                for child_index, child in enumerate(value):
                    self.walk(child, indexed, generic, child_attr, child_index, scope)
            else:  # a single member written as a bare object
                self.walk(value, indexed, generic, child_attr, 0, scope)

    def structural(self, indexed, generic, node_id, rm_type, scope, own_time) -> None:
        self.nodes.append(
            {
                "path": generic,
                "node_path": indexed,
                "node_id": node_id,
                "is_element": False,
                "rm_type": rm_type,
                "node_time": own_time,
                "_scope": scope,
            }
        )

    def element(self, node: Node, indexed, generic, node_id, scope) -> None:
        row = {
            "path": generic,
            "node_path": indexed,
            "node_id": node_id,
            "is_element": True,
            "name": (_object(raw_value(node.name), f"{indexed}/name") or {}).get("value"),
            "_scope": scope,
        }
        flavour = present(node.null_flavour)
        if isinstance(flavour, dict):
            row["null_flavour"] = (flavour.get("defining_code") or {}).get("code_string") or flavour.get(
                "value"
            )
        value = present(node.value)
        if isinstance(value, dict):
            row["rm_type"] = value.get("_type") or _implicit_value_type(value)
            if row["rm_type"] not in VALUE_TYPES:
                raise CompositionError(
                    "unknown_rm_type", indexed, f"unknown data value type {row['rm_type']!r}"
                )
            _read_value(row, value, self.zone, indexed)
        elif value is not None:
            raise CompositionError("malformed", indexed, "ELEMENT value is not an object")
        self.nodes.append(row)

    def _entry_time(self, node: Node, path: str) -> datetime | None:
        if node.rm_type == "ACTION":
            return _required_time(present(node.time), f"{path}/time", self.zone)
        data = node.data
        if isinstance(data, Node) and data.origin is not UNSET:
            return _time_value(data.origin, self.zone)
        return None


# the data values with a magnitude status and a normal range
_QUANTIFIED_TYPES = frozenset(
    {"DV_QUANTITY", "DV_COUNT", "DV_PROPORTION", "DV_ORDINAL", "DV_SCALE", "DV_DURATION"}
)


def _read_value(row: dict, value: dict, zone: ZoneInfo, path: str) -> None:
    """Fill the typed value columns from one DATA_VALUE."""
    kind = row["rm_type"]
    if kind in _QUANTIFIED_TYPES:
        row["magnitude_status"] = value.get("magnitude_status")
        normal = value.get("normal_range")
        if normal is not None:
            row["normal_low"], row["normal_high"] = _interval_bounds(normal)
    if kind in ("DV_QUANTITY", "DV_COUNT"):
        row["value_number"] = _number(value.get("magnitude"), path)
        row["value_units"] = value.get("units")
    elif kind == "DV_PROPORTION":
        numerator = _number(value.get("numerator"), path)
        denominator = _number(value.get("denominator"), path)
        kind_code = value.get("type")
        row.update(numerator=numerator, denominator=denominator, proportion_type=kind_code)
        if kind_code == _PERCENT:
            row["value_number"], row["value_units"] = numerator, "%"
        elif kind_code == _UNITARY:
            row["value_number"] = numerator
        elif numerator is not None and denominator:
            row["value_number"] = numerator / denominator
    elif kind in ("DV_CODED_TEXT", "DV_TEXT"):
        row["value_text"] = value.get("value")
        _read_code(row, value.get("defining_code"))
    elif kind in ("DV_ORDINAL", "DV_SCALE"):
        row["value_number"] = _number(value.get("value"), path)
        symbol = value.get("symbol") or {}
        row["value_text"] = symbol.get("value")
        _read_code(row, symbol.get("defining_code"))
    elif kind == "DV_BOOLEAN":
        row["value_boolean"] = value.get("value") if isinstance(value.get("value"), bool) else None
    elif kind in ("DV_DATE_TIME", "DV_DATE"):
        read = _parse_time(str(value.get("value", "")), zone)
        if read is None:
            raise CompositionError("bad_time", path, f"{kind} value is not an ISO 8601 date")
        row["value_datetime"], row["value_precision"] = read.value, read.precision
    elif kind == "DV_TIME":
        row["value_time"] = parse_clock(str(value.get("value", "")))
    elif kind == "DV_DURATION":
        row["value_duration"] = value.get("value")
        row["value_number"] = _duration_seconds(value.get("value"))
        row["value_units"] = "s" if row["value_number"] is not None else None
    elif kind == "DV_IDENTIFIER":
        row["value_text"] = value.get("id")
        row["value_code"] = value.get("type")
    elif kind == "DV_INTERVAL":
        row["value_lower"], row["value_upper"] = _interval_bounds(value)
        bound = value.get("lower") or value.get("upper") or {}
        row["value_units"] = bound.get("units")
    elif kind == "DV_MULTIMEDIA":
        row["value_text"] = (value.get("uri") or {}).get("value") or value.get("alternate_text")
        row["value_code"] = (value.get("media_type") or {}).get("code_string")
    elif kind == "DV_PARSABLE":
        row["value_text"] = value.get("value")
        row["value_code"] = value.get("formalism")
    else:  # DV_URI, DV_EHR_URI, DV_STATE
        row["value_text"] = value.get("value") if isinstance(value.get("value"), str) else None


# a data value written without ``_type``: the key that tells its type, first match wins
_VALUE_TYPE_KEYS = (
    ("defining_code", "DV_CODED_TEXT"),
    ("symbol", "DV_ORDINAL"),
    ("numerator", "DV_PROPORTION"),
    ("units", "DV_QUANTITY"),
    ("magnitude", "DV_COUNT"),
    ("id", "DV_IDENTIFIER"),
    ("lower", "DV_INTERVAL"),
    ("upper", "DV_INTERVAL"),
)


def _implicit_value_type(value: dict) -> str:
    for key, kind in _VALUE_TYPE_KEYS:
        if key in value:
            return kind
    return "DV_BOOLEAN" if isinstance(value.get("value"), bool) else "DV_TEXT"


def _read_code(row: dict, code: dict | None) -> None:
    if isinstance(code, dict):
        row["value_code"] = code.get("code_string")
        row["value_terminology"] = (code.get("terminology_id") or {}).get("value")


def _interval_bounds(interval: object) -> tuple[float | None, float | None]:
    if not isinstance(interval, dict):
        return None, None
    return _bound(interval.get("lower")), _bound(interval.get("upper"))


def _bound(value: object) -> float | None:
    if not isinstance(value, dict):
        return None
    for key in ("magnitude", "value"):
        if isinstance(value.get(key), int | float) and not isinstance(value.get(key), bool):
            return float(value[key])
    return None


def _number(value: object, path: str) -> float | None:
    if type(value) is float:  # nearly always: the checks below are for the rest
        return value
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CompositionError("malformed", path, "a number was expected")
    try:
        return float(value)
    except ValueError as error:
        raise CompositionError("malformed", path, "a number was expected") from error


def _duration_seconds(text: object) -> float | None:
    match = _DURATION.match(text) if isinstance(text, str) else None
    if not match or not any(match.groups()[1:]):
        return None
    seconds = sum(
        float(part) * scale
        for part, scale in zip(match.groups()[1:], _DURATION_SECONDS, strict=False)
        if part
    )
    return -seconds if match.group(1) else seconds


def _time_value(value: object, zone: ZoneInfo) -> datetime | None:
    if not isinstance(value, dict) or not isinstance(value.get("value"), str):
        return None
    read = _parse_time(value["value"], zone)
    return read.value if read else None


def _required_time(value: object, path: str, zone: ZoneInfo) -> datetime:
    if not isinstance(value, dict) or not isinstance(value.get("value"), str):
        raise CompositionError("missing_time", path, "a required time is missing")
    read = _parse_time(value["value"], zone)
    if read is None:
        raise CompositionError("bad_time", path, "a required time is not an ISO 8601 date-time")
    return read.value


def _implicit_type(attr: str, node: Node) -> str | None:
    """RM type of a node whose ``_type`` was left out (canonical JSON allows it where the attribute's
    declared type is concrete); None when its attributes do not say."""
    archetype = _ARCHETYPE_RM_TYPE.match(str(node.archetype_node_id or ""))
    if archetype:
        return archetype.group(1)
    if node.value is not UNSET or node.null_flavour is not UNSET:
        return "ELEMENT"
    if node.activities is not UNSET:
        return "INSTRUCTION"
    if node.ism_transition is not UNSET:
        return "ACTION"
    if node.timing is not UNSET and node.description is not UNSET:
        return "ACTIVITY"
    if node.events is not UNSET:
        return "HISTORY"
    if node.time is not UNSET and attr == "events":
        return "POINT_EVENT"
    if node.items is not UNSET:
        return "CLUSTER" if attr == "items" else "ITEM_TREE"
    return None


def _as_list(value: object) -> list:
    """A multiple attribute as a list; some serialisers write a single member as a bare object."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def elements_frame(rows: list[dict]) -> pl.DataFrame:
    """The long frame of flattened rows, typed by ELEMENT_SCHEMA."""
    return pl.DataFrame(rows, schema=ELEMENT_SCHEMA, strict=False)
