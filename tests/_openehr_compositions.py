"""Small canonical-JSON compositions for the openEHR tests, written by hand with real codes."""

from __future__ import annotations

import copy


def coded(value: str, code: str, terminology: str) -> dict:
    return {
        "_type": "DV_CODED_TEXT",
        "value": value,
        "defining_code": {
            "_type": "CODE_PHRASE",
            "terminology_id": {"value": terminology},
            "code_string": code,
        },
    }


def element(node_id: str, value: dict | None, *, name: str = "item", null_flavour: str | None = None) -> dict:
    node = {"_type": "ELEMENT", "archetype_node_id": node_id, "name": {"value": name}}
    if value is not None:
        node["value"] = value
    if null_flavour:
        node["null_flavour"] = coded("unknown", null_flavour, "openehr")
    return node


def quantity(magnitude: float, units: str, **extra) -> dict:
    return {"_type": "DV_QUANTITY", "magnitude": magnitude, "units": units, **extra}


def event(node_id: str, time: str, items: list[dict], *, width: str | None = None) -> dict:
    node = {
        "_type": "INTERVAL_EVENT" if width else "POINT_EVENT",
        "archetype_node_id": node_id,
        "name": {"value": "event"},
        "time": {"_type": "DV_DATE_TIME", "value": time},
        "data": {
            "_type": "ITEM_TREE",
            "archetype_node_id": "at0003",
            "name": {"value": "tree"},
            "items": items,
        },
    }
    if width:
        node["width"] = {"_type": "DV_DURATION", "value": width}
        node["math_function"] = coded("mean", "146", "openehr")
    return node


def observation(archetype: str, events: list[dict], history: str = "at0001") -> dict:
    return {
        "_type": "OBSERVATION",
        "archetype_node_id": archetype,
        "name": {"value": "observation"},
        "archetype_details": {"archetype_id": {"value": archetype}},
        "subject": {"_type": "PARTY_SELF"},
        "data": {
            "_type": "HISTORY",
            "archetype_node_id": history,
            "name": {"value": "history"},
            "origin": {
                "_type": "DV_DATE_TIME",
                "value": events[0]["time"]["value"] if events else "2024-01-01",
            },
            "events": events,
        },
    }


def evaluation(archetype: str, items: list[dict], data: str = "at0001") -> dict:
    return {
        "_type": "EVALUATION",
        "archetype_node_id": archetype,
        "name": {"value": "evaluation"},
        "subject": {"_type": "PARTY_SELF"},
        "data": {
            "_type": "ITEM_TREE",
            "archetype_node_id": data,
            "name": {"value": "tree"},
            "items": items,
        },
    }


def composition(
    content: list[dict],
    *,
    uid: str = "8849182c-82ad-4088-a07f-48ead4180515::example.org::1",
    start: str = "2024-03-05T10:15:00+01:00",
    setting: str = "228",
    other_context: list[dict] | None = None,
) -> dict:
    doc = {
        "_type": "COMPOSITION",
        "archetype_node_id": "openEHR-EHR-COMPOSITION.encounter.v1",
        "name": {"value": "Encounter"},
        "archetype_details": {
            "archetype_id": {"value": "openEHR-EHR-COMPOSITION.encounter.v1"},
            "template_id": {"value": "passerelle.test.v1"},
        },
        "language": {"terminology_id": {"value": "ISO_639-1"}, "code_string": "en"},
        "category": coded("event", "433", "openehr"),
        "context": {
            "_type": "EVENT_CONTEXT",
            "start_time": {"_type": "DV_DATE_TIME", "value": start},
            "setting": coded("care", setting, "openehr"),
        },
        "content": content,
    }
    if uid:
        doc["uid"] = {"_type": "OBJECT_VERSION_ID", "value": uid}
    if other_context:
        doc["context"]["other_context"] = {
            "_type": "ITEM_TREE",
            "archetype_node_id": "at0001",
            "name": {"value": "tree"},
            "items": other_context,
        }
    return copy.deepcopy(doc)


BLOOD_PRESSURE = "openEHR-EHR-OBSERVATION.blood_pressure.v2"


def blood_pressure(*readings: tuple[str, float, float]) -> dict:
    """A blood pressure observation: one event per (time, systolic, diastolic)."""
    events = [
        event(
            "at0006",
            time,
            [element("at0004", quantity(sys_, "mm[Hg]")), element("at0005", quantity(dia, "mm[Hg]"))],
        )
        for time, sys_, dia in readings
    ]
    return observation(BLOOD_PRESSURE, events)


def case_identification(case_id: str) -> dict:
    return {
        "_type": "CLUSTER",
        "archetype_node_id": "openEHR-EHR-CLUSTER.case_identification.v0",
        "name": {"value": "case"},
        "items": [element("at0001", {"_type": "DV_TEXT", "value": case_id})],
    }
