"""A person's history as openEHR canonical-JSON COMPOSITIONs (RM 1.0.4), as an AQL query returns them.

Two kinds of composition: one persistent person-data record per EHR (birth date and sex, the way the
GECCO templates carry them; no context, so it makes no visit), and one encounter per visit whose
context says when and in which care setting, holding the vital signs measured (blood pressure, pulse,
temperature, weight, height observations) and the diagnoses made (problem/diagnosis, SNOMED CT coded).
The shapes follow the canonical compositions of the openEHR CKM archetypes (``_type``,
``archetype_node_id``, ``name``, ``uid``, ``context``, ``content``, ``data/events``, ``DV_QUANTITY``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

from pipelines.synthetic.catalogue import Catalogue
from pipelines.synthetic.history import Diagnosis, PatientHistory, Visit

SYSTEM_ID = "passerelle.synthetic"
ENCOUNTER = "openEHR-EHR-COMPOSITION.encounter.v1"
REPORT = "openEHR-EHR-COMPOSITION.report.v1"
PROBLEM_DIAGNOSIS = "openEHR-EHR-EVALUATION.problem_diagnosis.v1"
PERSON_DATA = "openEHR-EHR-ADMIN_ENTRY.person_data.v0"
BIRTH_DATA = "openEHR-EHR-CLUSTER.person_birth_data_iso.v0"
GENDER = "openEHR-EHR-EVALUATION.gender.v1"
TEMPLATES = {"person_data": "Passerelle person data", "encounter": "Passerelle encounter"}

_LANGUAGE = {
    "_type": "CODE_PHRASE",
    "terminology_id": {"_type": "TERMINOLOGY_ID", "value": "ISO_639-1"},
    "code_string": "en",
}
_ENCODING = {
    "_type": "CODE_PHRASE",
    "terminology_id": {"_type": "TERMINOLOGY_ID", "value": "IANA_character-sets"},
    "code_string": "UTF-8",
}
_TERRITORY = {
    "_type": "CODE_PHRASE",
    "terminology_id": {"_type": "TERMINOLOGY_ID", "value": "ISO_3166-1"},
    "code_string": "DE",
}
_EVENT = {
    "_type": "DV_CODED_TEXT",
    "value": "event",
    "defining_code": {
        "_type": "CODE_PHRASE",
        "terminology_id": {"_type": "TERMINOLOGY_ID", "value": "openehr"},
        "code_string": "433",
    },
}
_PERSISTENT = {
    "_type": "DV_CODED_TEXT",
    "value": "persistent",
    "defining_code": {
        "_type": "CODE_PHRASE",
        "terminology_id": {"_type": "TERMINOLOGY_ID", "value": "openehr"},
        "code_string": "431",
    },
}
_COMPOSER = {"_type": "PARTY_IDENTIFIED", "name": "Passerelle synthetic data generator"}
_SELF = {"_type": "PARTY_SELF"}


def ehr_compositions(history: PatientHistory, catalogue: Catalogue) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind, composition) for every composition of one EHR; kind is a key of ``TEMPLATES``."""
    yield "person_data", _person_data(history, catalogue)
    for visit in history.visits:
        yield "encounter", _encounter(visit, catalogue)


def entry_archetypes(composition: dict[str, Any]) -> list[str]:
    """The archetype ids of a composition's content entries (for the manifest's counts)."""
    return [entry["archetype_node_id"] for entry in composition["content"]]


def _person_data(history: PatientHistory, catalogue: Catalogue) -> dict[str, Any]:
    person = _entry("ADMIN_ENTRY", PERSON_DATA, "Person data", TEMPLATES["person_data"]) | {
        "data": _tree(
            "at0001",
            "Tree",
            [
                _cluster(
                    BIRTH_DATA,
                    "Birth data",
                    [
                        _element(
                            "at0001",
                            "Date of birth",
                            {"_type": "DV_DATE", "value": history.birth_date.isoformat()},
                        ),
                    ],
                ),
            ],
        ),
    }
    sex_terminology = catalogue.openehr_terminologies["sex"]
    gender = _entry("EVALUATION", GENDER, "Gender", TEMPLATES["person_data"]) | {
        "data": _tree(
            "at0002",
            "Tree",
            [
                _element(
                    "at0019", "Sex assigned at birth", _coded(history.sex, sex_terminology, history.sex)
                ),
            ],
        ),
    }
    uid = uuid.uuid5(uuid.UUID(history.id), "person_data")
    return _composition(
        uid,
        REPORT,
        TEMPLATES["person_data"],
        "Person data",
        _PERSISTENT,
        None,
        [person, gender],
    )


def _encounter(visit: Visit, catalogue: Catalogue) -> dict[str, Any]:
    """One visit: its vital signs, then the diagnoses made during it."""
    content = _vital_signs(visit, catalogue) + [_diagnosis(d, catalogue) for d in visit.diagnoses]
    setting = catalogue.visit_classes[visit.visit_class]["openehr_setting"]
    context = _context(visit.start, visit.end, setting)
    return _composition(
        uuid.UUID(visit.id), ENCOUNTER, TEMPLATES["encounter"], "Encounter", _EVENT, context, content
    )


def _vital_signs(visit: Visit, catalogue: Catalogue) -> list[dict[str, Any]]:
    values = {m.quantity.name: m.value for m in visit.vitals}
    if visit.blood_pressure is not None:
        values["systolic"] = visit.blood_pressure.systolic
        values["diastolic"] = visit.blood_pressure.diastolic
    when = visit.start.isoformat()
    observations = []
    for spec in catalogue.openehr_vitals.values():
        elements = [
            _element(
                node, catalogue.vitals[name].display, _dv_quantity(values[name], catalogue.vitals[name].unit)
            )
            for name, node in spec["elements"].items()
            if name in values
        ]
        if not elements:
            continue
        history_node, event_node, tree_node = spec["nodes"]
        event = {
            "_type": "POINT_EVENT",
            "name": _text("Any event"),
            "archetype_node_id": event_node,
            "time": _date_time(when),
            "data": _tree(tree_node, "Tree", elements),
        }
        data = {
            "_type": "HISTORY",
            "name": _text("History"),
            "archetype_node_id": history_node,
            "origin": _date_time(when),
            "events": [event],
        }
        observations.append(
            _entry("OBSERVATION", spec["archetype"], spec["name"], TEMPLATES["encounter"]) | {"data": data}
        )
    return observations


def _diagnosis(diagnosis: Diagnosis, catalogue: Catalogue) -> dict[str, Any]:
    condition = diagnosis.condition
    snomed = catalogue.openehr_terminologies["snomed"]
    items = [
        _element("at0002", "Problem/Diagnosis name", _coded(condition.display, snomed, condition.code)),
        _element("at0077", "Date/time of onset", _date_time(diagnosis.onset.isoformat())),
    ]
    if diagnosis.abatement is not None and diagnosis.abatement <= catalogue.as_of:
        resolved = _date_time(diagnosis.abatement.isoformat())
        items.append(_element("at0030", "Date/time of resolution", resolved))
    evaluation = _entry("EVALUATION", PROBLEM_DIAGNOSIS, "Problem/Diagnosis", TEMPLATES["encounter"])
    return evaluation | {"data": _tree("at0001", "Structure", items)}


def _composition(
    uid: uuid.UUID,
    archetype: str,
    template: str,
    name: str,
    category: dict,
    context: dict[str, Any] | None,
    content: list[dict],
) -> dict[str, Any]:
    """A COMPOSITION; ``context`` is None for persistent ones (person data), which belong to no visit."""
    composition = {
        "_type": "COMPOSITION",
        "name": _text(name),
        "uid": {"_type": "OBJECT_VERSION_ID", "value": f"{uid}::{SYSTEM_ID}::1"},
        "archetype_details": _details(archetype, template),
        "archetype_node_id": archetype,
        "language": _LANGUAGE,
        "territory": _TERRITORY,
        "category": category,
        "composer": _COMPOSER,
        "context": context,
        "content": content,
    }
    if context is None:
        del composition["context"]
    return composition


def _context(start: dt.datetime, end: dt.datetime | None, setting: list[str]) -> dict[str, Any]:
    """EVENT_CONTEXT of an event composition: when, and the openEHR care setting (which visit type)."""
    context: dict[str, Any] = {"_type": "EVENT_CONTEXT", "start_time": _date_time(start.isoformat())}
    if end is not None:
        context["end_time"] = _date_time(end.isoformat())
    code, display = setting
    context["setting"] = _coded(display, "openehr", code)
    return context


def _entry(rm_type: str, archetype: str, name: str, template: str) -> dict[str, Any]:
    return {
        "_type": rm_type,
        "name": _text(name),
        "archetype_details": _details(archetype, template),
        "archetype_node_id": archetype,
        "language": _LANGUAGE,
        "encoding": _ENCODING,
        "subject": _SELF,
    }


def _details(archetype: str, template: str) -> dict[str, Any]:
    return {
        "_type": "ARCHETYPED",
        "archetype_id": {"_type": "ARCHETYPE_ID", "value": archetype},
        "template_id": {"_type": "TEMPLATE_ID", "value": template},
        "rm_version": "1.0.4",
    }


def _tree(node: str, name: str, items: list[dict]) -> dict[str, Any]:
    return {"_type": "ITEM_TREE", "name": _text(name), "archetype_node_id": node, "items": items}


def _cluster(archetype: str, name: str, items: list[dict]) -> dict[str, Any]:
    details = {
        "_type": "ARCHETYPED",
        "archetype_id": {"_type": "ARCHETYPE_ID", "value": archetype},
        "rm_version": "1.0.4",
    }
    return {
        "_type": "CLUSTER",
        "name": _text(name),
        "archetype_details": details,
        "archetype_node_id": archetype,
        "items": items,
    }


def _element(node: str, name: str, value: dict) -> dict[str, Any]:
    return {"_type": "ELEMENT", "name": _text(name), "archetype_node_id": node, "value": value}


def _text(value: str) -> dict[str, str]:
    return {"_type": "DV_TEXT", "value": value}


def _coded(value: str, terminology: str, code: str) -> dict[str, Any]:
    return {
        "_type": "DV_CODED_TEXT",
        "value": value,
        "defining_code": {
            "_type": "CODE_PHRASE",
            "terminology_id": {"_type": "TERMINOLOGY_ID", "value": terminology},
            "code_string": code,
        },
    }


def _date_time(value: str) -> dict[str, str]:
    return {"_type": "DV_DATE_TIME", "value": value}


def _dv_quantity(magnitude: float, units: str) -> dict[str, Any]:
    return {"_type": "DV_QUANTITY", "magnitude": magnitude, "units": units}
