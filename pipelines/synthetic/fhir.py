"""A person's history as FHIR R4 resources (plain dicts, ready for orjson).

How references are written is the caller's choice: a transaction Bundle points at ``urn:uuid:<id>``
fullUrls, a Bulk Data export at ``Patient/<id>``. Resource order follows the history (the Patient, then
each visit's Encounter and what happened during it), so a reader meets a referenced resource first.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

from pipelines.synthetic.catalogue import Catalogue
from pipelines.synthetic.history import Diagnosis, Measurement, PatientHistory, Visit

Reference = Callable[[str, str], str]  # (resource type, id) -> reference string

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
_VITAL_SIGNS = [
    {"coding": [{"system": _OBSERVATION_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}
]
_LABORATORY = [{"coding": [{"system": _OBSERVATION_CATEGORY, "code": "laboratory", "display": "Laboratory"}]}]
_ENCOUNTER_DIAGNOSIS = [
    {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                "code": "encounter-diagnosis",
                "display": "Encounter Diagnosis",
            }
        ]
    }
]
_CONFIRMED = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]
}
_CLINICAL_STATUS = {
    status: {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": status}]
    }
    for status in ("active", "resolved")
}
_INTERPRETATIONS = {
    code: [{"coding": [{"system": _INTERPRETATION, "code": code, "display": display}]}]
    for code, display in (("L", "Low"), ("N", "Normal"), ("H", "High"))
}
_CLASS_DISPLAY = {"AMB": "ambulatory", "EMER": "emergency", "IMP": "inpatient encounter"}
MRN_SYSTEM = "urn:passerelle:synthetic:mrn"


def patient_resources(
    history: PatientHistory, mrn: str, reference: Reference, catalogue: Catalogue
) -> Iterator[dict[str, Any]]:
    """Every resource of one person, the Patient first."""
    subject = {"reference": reference("Patient", history.id)}
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": history.id,
        "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
        "gender": history.sex,
        "birthDate": history.birth_date.isoformat(),
    }
    if history.deceased is not None:
        patient["deceasedDateTime"] = history.deceased.isoformat()
    yield patient
    for visit in history.visits:
        yield from _visit_resources(visit, subject, reference, catalogue)


def _visit_resources(
    visit: Visit, subject: dict, reference: Reference, catalogue: Catalogue
) -> Iterator[dict]:
    as_of = catalogue.as_of
    encounter_ref = {"reference": reference("Encounter", visit.id)}
    start = visit.start.isoformat()
    encounter: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": visit.id,
        "status": "finished",
        "class": {
            "system": _ACT_CODE,
            "code": visit.visit_class,
            "display": _CLASS_DISPLAY[visit.visit_class],
        },
        "type": [_concept(SNOMED, *visit.visit_type)],
        "subject": subject,
        "period": {"start": start, "end": visit.end.isoformat()},
    }
    if visit.reason is not None:
        encounter["reasonCode"] = [
            _concept(SNOMED, visit.reason.condition.code, visit.reason.condition.display)
        ]
    yield encounter
    for diagnosis in visit.diagnoses:
        yield _condition(diagnosis, subject, encounter_ref, as_of)
    if visit.blood_pressure is not None:
        bp = visit.blood_pressure
        systolic, diastolic = catalogue.vitals["systolic"], catalogue.vitals["diastolic"]
        yield {
            "resourceType": "Observation",
            "id": bp.id,
            "status": "final",
            "category": _VITAL_SIGNS,
            "code": _concept(LOINC, *catalogue.blood_pressure_panel),
            "subject": subject,
            "encounter": encounter_ref,
            "effectiveDateTime": start,
            "component": [
                {
                    "code": _concept(LOINC, systolic.loinc, systolic.display),
                    "valueQuantity": _quantity(bp.systolic, systolic.unit, systolic.decimals),
                },
                {
                    "code": _concept(LOINC, diastolic.loinc, diastolic.display),
                    "valueQuantity": _quantity(bp.diastolic, diastolic.unit, diastolic.decimals),
                },
            ],
        }
    for measurement in visit.vitals:
        yield _observation(measurement, _VITAL_SIGNS, subject, encounter_ref, start)
    for measurement in visit.labs:
        yield _observation(measurement, _LABORATORY, subject, encounter_ref, start)
    for prescription in visit.prescriptions:
        end = prescription.authored + dt.timedelta(days=prescription.days_supply)
        yield {
            "resourceType": "MedicationRequest",
            "id": prescription.id,
            "status": "completed" if end.date() <= as_of else "active",
            "intent": "order",
            "medicationCodeableConcept": _concept(RXNORM, prescription.rxnorm, prescription.display),
            "subject": subject,
            "encounter": encounter_ref,
            "authoredOn": prescription.authored.isoformat(),
            "reasonReference": [{"reference": reference("Condition", prescription.reason.id)}],
            "dosageInstruction": [{"timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}],
            "dispenseRequest": {
                "validityPeriod": {"start": prescription.authored.isoformat(), "end": end.isoformat()},
                "expectedSupplyDuration": {
                    "value": prescription.days_supply,
                    "unit": "days",
                    "system": UCUM,
                    "code": "d",
                },
            },
        }
    for procedure in visit.procedures:
        yield {
            "resourceType": "Procedure",
            "id": procedure.id,
            "status": "completed",
            "code": _concept(SNOMED, procedure.code, procedure.display),
            "subject": subject,
            "encounter": encounter_ref,
            "performedDateTime": procedure.performed.isoformat(),
        }
    for vaccination in visit.vaccinations:
        yield {
            "resourceType": "Immunization",
            "id": vaccination.id,
            "status": "completed",
            "vaccineCode": _concept(CVX, vaccination.cvx, vaccination.display),
            "patient": subject,
            "encounter": encounter_ref,
            "occurrenceDateTime": vaccination.given.isoformat(),
            "primarySource": True,
        }


def _condition(diagnosis: Diagnosis, subject: dict, encounter_ref: dict, as_of: dt.date) -> dict[str, Any]:
    resolved = diagnosis.abatement is not None and diagnosis.abatement <= as_of
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "id": diagnosis.id,
        "clinicalStatus": _CLINICAL_STATUS["resolved" if resolved else "active"],
        "verificationStatus": _CONFIRMED,
        "category": _ENCOUNTER_DIAGNOSIS,
        "code": _concept(SNOMED, diagnosis.condition.code, diagnosis.condition.display),
        "subject": subject,
        "encounter": encounter_ref,
        "onsetDateTime": diagnosis.onset.isoformat(),
        "recordedDate": diagnosis.recorded.isoformat(),
    }
    if resolved:
        condition["abatementDateTime"] = diagnosis.abatement.isoformat()
    return condition


def _observation(
    measurement: Measurement, category: list, subject: dict, encounter_ref: dict, when: str
) -> dict[str, Any]:
    quantity = measurement.quantity
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": measurement.id,
        "status": "final",
        "category": category,
        "code": _concept(LOINC, quantity.loinc, quantity.display),
        "subject": subject,
        "encounter": encounter_ref,
        "effectiveDateTime": when,
        "valueQuantity": _quantity(measurement.value, quantity.unit, quantity.decimals),
    }
    if quantity.reference is not None:
        low, high = quantity.reference
        flag = "L" if measurement.value < low else "H" if measurement.value > high else "N"
        observation["interpretation"] = _INTERPRETATIONS[flag]
        observation["referenceRange"] = [
            {
                "low": _quantity(low, quantity.unit, quantity.decimals),
                "high": _quantity(high, quantity.unit, quantity.decimals),
            }
        ]
    return observation


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _quantity(value: float, unit: str, decimals: int) -> dict[str, Any]:
    return {"value": int(value) if decimals == 0 else value, "unit": unit, "system": UCUM, "code": unit}
