"""The staging schema: msgspec Structs that declare only the FHIR R4 elements the mappings read.

Decoding into these Structs is the type check (a string where a number belongs is a quarantine
reason with its JSON path) and skips every element we do not use, which is most of a resource.
Each Struct turns into a Polars schema (``polars_schema``) so a list of decoded resources becomes
one columnar frame; nothing downstream sees a Struct.

Resource types that Passerelle does not map (Claim, CarePlan, ...) still decode, as an id-only
Struct built from ``mappings/fhir/common/r4_resource_types.yaml``, so they are counted as
filtered rather than mistaken for an unknown resourceType.
"""

from __future__ import annotations

import datetime as dt
import types
import typing
from functools import cache

import msgspec
import polars as pl
import yaml

from pipelines.project_files import data_dir

Str = str | None
# FHIR integer is 32-bit signed: a larger number is a wrong value, quarantined, not an overflow later.
Int = typing.Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]


class _Element(msgspec.Struct, kw_only=True, omit_defaults=True):
    pass


class Coding(_Element):
    system: Str = None
    code: Str = None
    display: Str = None
    userSelected: bool | None = None


class CodeableConcept(_Element):
    coding: list[Coding] | None = None
    text: Str = None


class Identifier(_Element):
    system: Str = None
    value: Str = None


class Reference(_Element):
    reference: Str = None
    type: Str = None
    display: Str = None
    identifier: Identifier | None = None


class Period(_Element):
    start: Str = None
    end: Str = None


class Quantity(_Element):
    value: float | None = None
    comparator: Str = None
    unit: Str = None
    system: Str = None
    code: Str = None


class Range(_Element):
    low: Quantity | None = None
    high: Quantity | None = None


class Meta(_Element):
    versionId: Str = None
    lastUpdated: Str = None


class InnerExtension(_Element):
    url: Str = None
    valueCoding: Coding | None = None
    valueString: Str = None
    valueCode: Str = None


class Extension(_Element):
    url: Str = None
    valueCoding: Coding | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueString: Str = None
    valueCode: Str = None
    valueDateTime: Str = None
    extension: list[InnerExtension] | None = None


class Address(_Element):
    line: list[str] | None = None
    city: Str = None
    district: Str = None
    state: Str = None
    postalCode: Str = None
    country: Str = None


class DoseAndRate(_Element):
    doseQuantity: Quantity | None = None


class Dosage(_Element):
    text: Str = None
    route: CodeableConcept | None = None
    doseAndRate: list[DoseAndRate] | None = None


class ContainedResource(_Element):
    """A contained resource; only a contained Medication's code is ever read."""

    resourceType: Str = None
    id: Str = None
    code: CodeableConcept | None = None


class Actor(_Element):
    actor: Reference | None = None


class _Resource(msgspec.Struct, kw_only=True, tag_field="resourceType", omit_defaults=True):
    id: Str = None
    meta: Meta | None = None


class _Clinical(_Resource):
    contained: list[ContainedResource] | None = None


# --- administrative -------------------------------------------------------------------------


class Patient(_Resource, tag="Patient"):
    identifier: list[Identifier] | None = None
    gender: Str = None
    birthDate: Str = None
    deceasedBoolean: bool | None = None
    deceasedDateTime: Str = None
    extension: list[Extension] | None = None
    address: list[Address] | None = None
    generalPractitioner: list[Reference] | None = None
    managingOrganization: Reference | None = None


class Hospitalization(_Element):
    admitSource: CodeableConcept | None = None
    dischargeDisposition: CodeableConcept | None = None


class Participant(_Element):
    individual: Reference | None = None


class EncounterLocation(_Element):
    location: Reference | None = None


class Encounter(_Resource, tag="Encounter"):
    status: Str = None
    class_: Coding | None = msgspec.field(default=None, name="class")
    type: list[CodeableConcept] | None = None
    subject: Reference | None = None
    period: Period | None = None
    hospitalization: Hospitalization | None = None
    partOf: Reference | None = None
    participant: list[Participant] | None = None
    serviceProvider: Reference | None = None
    location: list[EncounterLocation] | None = None


class Location(_Resource, tag="Location"):
    identifier: list[Identifier] | None = None
    name: Str = None
    address: Address | None = None


class Organization(_Resource, tag="Organization"):
    identifier: list[Identifier] | None = None
    name: Str = None
    type: list[CodeableConcept] | None = None
    address: list[Address] | None = None


class Practitioner(_Resource, tag="Practitioner"):
    identifier: list[Identifier] | None = None
    gender: Str = None
    birthDate: Str = None


class PractitionerRole(_Resource, tag="PractitionerRole"):
    identifier: list[Identifier] | None = None
    practitioner: Reference | None = None
    organization: Reference | None = None
    code: list[CodeableConcept] | None = None
    specialty: list[CodeableConcept] | None = None
    location: list[Reference] | None = None


class Coverage(_Resource, tag="Coverage"):
    status: Str = None
    type: CodeableConcept | None = None
    beneficiary: Reference | None = None
    period: Period | None = None
    payor: list[Reference] | None = None


class Medication(_Resource, tag="Medication"):
    code: CodeableConcept | None = None


# --- clinical -------------------------------------------------------------------------------


class Condition(_Clinical, tag="Condition"):
    clinicalStatus: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    category: list[CodeableConcept] | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    onsetDateTime: Str = None
    onsetPeriod: Period | None = None
    abatementDateTime: Str = None
    abatementPeriod: Period | None = None
    recordedDate: Str = None
    recorder: Reference | None = None
    asserter: Reference | None = None


class ReferenceRange(_Element):
    low: Quantity | None = None
    high: Quantity | None = None


class Component(_Element):
    code: CodeableConcept | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueString: Str = None
    valueBoolean: bool | None = None
    valueInteger: Int | None = None
    valueDateTime: Str = None
    dataAbsentReason: CodeableConcept | None = None
    referenceRange: list[ReferenceRange] | None = None


class Observation(_Clinical, tag="Observation"):
    status: Str = None
    category: list[CodeableConcept] | None = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    effectiveDateTime: Str = None
    effectivePeriod: Period | None = None
    effectiveInstant: Str = None
    issued: Str = None
    performer: list[Reference] | None = None
    valueQuantity: Quantity | None = None
    valueCodeableConcept: CodeableConcept | None = None
    valueString: Str = None
    valueBoolean: bool | None = None
    valueInteger: Int | None = None
    valueDateTime: Str = None
    dataAbsentReason: CodeableConcept | None = None
    referenceRange: list[ReferenceRange] | None = None
    component: list[Component] | None = None


class DispenseRequest(_Element):
    validityPeriod: Period | None = None
    numberOfRepeatsAllowed: Int | None = None
    quantity: Quantity | None = None
    expectedSupplyDuration: Quantity | None = None


class MedicationRequest(_Clinical, tag="MedicationRequest"):
    status: Str = None
    intent: Str = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    authoredOn: Str = None
    requester: Reference | None = None
    dosageInstruction: list[Dosage] | None = None
    dispenseRequest: DispenseRequest | None = None


class MedicationStatement(_Clinical, tag="MedicationStatement"):
    status: Str = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    subject: Reference | None = None
    context: Reference | None = None
    effectiveDateTime: Str = None
    effectivePeriod: Period | None = None
    dateAsserted: Str = None
    dosage: list[Dosage] | None = None


class AdministrationDosage(_Element):
    text: Str = None
    route: CodeableConcept | None = None
    dose: Quantity | None = None


class MedicationAdministration(_Clinical, tag="MedicationAdministration"):
    status: Str = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    subject: Reference | None = None
    context: Reference | None = None
    effectiveDateTime: Str = None
    effectivePeriod: Period | None = None
    performer: list[Actor] | None = None
    dosage: AdministrationDosage | None = None


class MedicationDispense(_Clinical, tag="MedicationDispense"):
    status: Str = None
    medicationCodeableConcept: CodeableConcept | None = None
    medicationReference: Reference | None = None
    subject: Reference | None = None
    context: Reference | None = None
    whenPrepared: Str = None
    whenHandedOver: Str = None
    quantity: Quantity | None = None
    daysSupply: Quantity | None = None
    performer: list[Actor] | None = None
    dosageInstruction: list[Dosage] | None = None


class Immunization(_Clinical, tag="Immunization"):
    status: Str = None
    vaccineCode: CodeableConcept | None = None
    patient: Reference | None = None
    encounter: Reference | None = None
    occurrenceDateTime: Str = None
    recorded: Str = None
    lotNumber: Str = None
    route: CodeableConcept | None = None
    doseQuantity: Quantity | None = None
    performer: list[Actor] | None = None


class Procedure(_Clinical, tag="Procedure"):
    status: Str = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    performedDateTime: Str = None
    performedPeriod: Period | None = None
    performer: list[Actor] | None = None


class Reaction(_Element):
    manifestation: list[CodeableConcept] | None = None


class AllergyIntolerance(_Clinical, tag="AllergyIntolerance"):
    category: list[str] | None = None
    clinicalStatus: CodeableConcept | None = None
    verificationStatus: CodeableConcept | None = None
    code: CodeableConcept | None = None
    patient: Reference | None = None
    encounter: Reference | None = None
    onsetDateTime: Str = None
    recordedDate: Str = None
    recorder: Reference | None = None
    reaction: list[Reaction] | None = None


class DiagnosticReport(_Clinical, tag="DiagnosticReport"):
    status: Str = None
    code: CodeableConcept | None = None
    subject: Reference | None = None
    encounter: Reference | None = None
    effectiveDateTime: Str = None
    effectivePeriod: Period | None = None
    issued: Str = None
    performer: list[Reference] | None = None
    conclusionCode: list[CodeableConcept] | None = None


class UdiCarrier(_Element):
    deviceIdentifier: Str = None


class Device(_Clinical, tag="Device"):
    status: Str = None
    type: CodeableConcept | None = None
    patient: Reference | None = None
    udiCarrier: list[UdiCarrier] | None = None
    manufactureDate: Str = None
    expirationDate: Str = None


class DeviceUseStatement(_Clinical, tag="DeviceUseStatement"):
    status: Str = None
    subject: Reference | None = None
    device: Reference | None = None
    timingDateTime: Str = None
    timingPeriod: Period | None = None
    recordedOn: Str = None


class SpecimenCollection(_Element):
    collectedDateTime: Str = None
    collectedPeriod: Period | None = None
    quantity: Quantity | None = None
    bodySite: CodeableConcept | None = None


class Specimen(_Clinical, tag="Specimen"):
    status: Str = None
    type: CodeableConcept | None = None
    subject: Reference | None = None
    receivedTime: Str = None
    collection: SpecimenCollection | None = None
    accessionIdentifier: Identifier | None = None


# --- the envelope ---------------------------------------------------------------------------


class BundleRequest(_Element):
    method: Str = None
    url: Str = None


class BundleEntry(_Element):
    fullUrl: Str = None
    # Raw: each entry decodes on its own, so one bad entry is quarantined alone. Empty when absent.
    resource: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    request: BundleRequest | None = None


class Bundle(_Resource, tag="Bundle"):
    type: Str = None
    entry: list[BundleEntry] | None = None


class Envelope(msgspec.Struct):
    """What is left to say about a record that failed to decode: its type and id, if readable."""

    resourceType: typing.Any = None
    id: typing.Any = None


MAPPED_TYPES: tuple[type[_Resource], ...] = (
    Patient,
    Encounter,
    Location,
    Organization,
    Practitioner,
    PractitionerRole,
    Coverage,
    Medication,
    Condition,
    Observation,
    MedicationRequest,
    MedicationStatement,
    MedicationAdministration,
    MedicationDispense,
    Immunization,
    Procedure,
    AllergyIntolerance,
    DiagnosticReport,
    Device,
    DeviceUseStatement,
    Specimen,
)


@cache
def r4_resource_types() -> frozenset[str]:
    """Every resource type of FHIR R4, so that a misspelt type is told apart from an unmapped one."""
    doc = yaml.safe_load((data_dir("mappings") / "fhir" / "common" / "r4_resource_types.yaml").read_text())
    return frozenset(doc["resource_types"])


@cache
def resource_structs() -> dict[str, type[_Resource]]:
    """resourceType -> Struct: the mapped types with their elements, every other R4 type id-only."""
    structs: dict[str, type[_Resource]] = {t.__struct_config__.tag: t for t in MAPPED_TYPES}
    structs["Bundle"] = Bundle
    for name in sorted(r4_resource_types() - structs.keys()):
        structs[name] = msgspec.defstruct(name, [], bases=(_Resource,), tag=name, kw_only=True)
    return structs


@cache
def resource_decoder() -> msgspec.json.Decoder:
    """One decoder for any resource; the ``resourceType`` tag picks the Struct."""
    return msgspec.json.Decoder(typing.Union[tuple(resource_structs().values())])  # noqa: UP007


@cache
def document_decoder() -> msgspec.json.Decoder:
    """A decoder for a whole file in one pass: a Bundle's entries decode as resources directly,
    which scans the JSON once instead of twice. Any error sends the file to ``resource_decoder``
    entry by entry, which tells exactly which entry is bad. Nested Bundles keep raw entries."""
    structs = resource_structs()
    any_resource = typing.Union[tuple(structs.values())]  # noqa: UP007
    entry = msgspec.defstruct(
        "DecodedBundleEntry",
        [
            ("fullUrl", Str, None),
            ("resource", typing.Optional[any_resource], None),  # noqa: UP045
            ("request", BundleRequest | None, None),
        ],
        kw_only=True,
    )
    bundle = msgspec.defstruct(
        "DecodedBundle",
        [("type", Str, None), ("entry", typing.Optional[list[entry]], None)],  # noqa: UP045
        bases=(_Resource,),
        tag="Bundle",
        kw_only=True,
    )
    others = tuple(struct for name, struct in structs.items() if name != "Bundle")
    return msgspec.json.Decoder(typing.Union[(bundle, *others)])


_SCALARS = {str: pl.Utf8, float: pl.Float64, int: pl.Int64, bool: pl.Boolean}


@cache
def polars_schema(struct: type[msgspec.Struct]) -> dict[str, pl.DataType]:
    """The Polars schema of a Struct's fields (JSON names), used to build the staged frame."""
    hints = typing.get_type_hints(struct)
    fields = msgspec.structs.fields(struct)
    return {f.encode_name: _polars_type(hints[f.name]) for f in fields}


def _polars_type(hint: typing.Any) -> pl.DataType:
    if typing.get_origin(hint) is typing.Annotated:
        return _polars_type(typing.get_args(hint)[0])
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _polars_type(inner)
    if typing.get_origin(hint) is list:
        return pl.List(_polars_type(typing.get_args(hint)[0]))
    if hint in _SCALARS:
        return _SCALARS[hint]
    if hint is msgspec.Raw or hint is dt.datetime:
        raise TypeError(f"{hint} has no place in a staged frame")
    return pl.Struct(polars_schema(hint))
