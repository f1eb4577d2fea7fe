"""mappings/fhir/*.yaml: every file loads, and a wrong file is refused with its name and rule."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipelines.mapping.fhir.paths import PathError, compile_path
from pipelines.mapping.fhir.spec import MappingError, load_common, load_mappings
from pipelines.mapping.fhir.spec import _mapping as read_mapping_file


def test_every_mapping_file_loads_and_names_its_resource() -> None:
    mappings = load_mappings()
    assert {
        "Patient",
        "Encounter",
        "Condition",
        "Observation",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationAdministration",
        "MedicationDispense",
        "Immunization",
        "Procedure",
        "AllergyIntolerance",
        "DiagnosticReport",
        "Device",
        "DeviceUseStatement",
        "Specimen",
        "Location",
        "Organization",
        "Practitioner",
        "PractitionerRole",
        "Coverage",
        "Medication",
    } == set(mappings)
    for name, mapping in mappings.items():
        assert mapping.source.name == f"{name}.yaml"
        assert mapping.source.read_text().startswith("#")  # each file says where its rules come from


def test_common_tables_route_domains_and_name_type_concepts() -> None:
    common = load_common()
    assert common.domain_table["Measurement"] == "measurement"
    assert common.domain_table["Condition"] == "condition_occurrence"
    assert common.type_concepts["ehr"] == 32817 and common.type_concepts["ehr_prescription"] == 32838


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("outputs:\n  - name: a\n    table: person\n    columns:\n      nope: id\n", "person has no columns"),
        (
            "outputs:\n  - name: a\n    table: persn\n    columns:\n      x: id\n",
            "not an OMOP CDM v5.4 table",
        ),
        (
            "outputs:\n  - name: a\n    default_table: measurement\n    facets:\n      concept: 'a[b'\n",
            "path",
        ),
        ("outputs:\n  - name: a\n    facets:\n      concept: code\n", "needs default_table"),
        (
            "outputs:\n  - name: a\n    default_table: measurement\n    type_concept: ehrr\n"
            "    facets:\n      concept: code\n",
            "unknown type concept",
        ),
        ("outputs: [3]\n", "not a FHIR mapping file"),
    ],
)
def test_a_wrong_mapping_file_is_refused_with_its_name(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "Thing.yaml"
    path.write_text("resource: Thing\n" + body)
    with pytest.raises(MappingError, match=message) as error:
        read_mapping_file(path, load_common())
    assert str(path) in str(error.value)


def test_paths_read_nested_elements_list_items_and_filters() -> None:
    frame = pl.DataFrame(
        {
            "extension": [
                [{"url": "a", "value": "x"}, {"url": "b", "value": "y"}],
                [{"url": "b", "value": "z"}],
            ]
        }
    )
    assert frame.select(compile_path("extension[url='b'].value")).to_series().to_list() == ["y", "z"]
    assert frame.select(compile_path("extension[1].url")).to_series().to_list() == ["b", None]
    with pytest.raises(PathError):
        compile_path("extension[url=b]")


def test_paths_read_fields_inside_lists_with_missing_items_null() -> None:
    coding = pl.Struct({"system": pl.Utf8, "code": pl.Utf8})
    frame = pl.DataFrame(
        {
            "category": [
                [{"coding": [{"system": "s", "code": "laboratory"}, {"system": "t", "code": "x"}]}],
                [{"coding": []}, {"coding": [{"system": "s", "code": "vital-signs"}]}],
                [{"coding": None}],
                [None],
                [],
                None,
            ]
        },
        schema={"category": pl.List(pl.Struct({"coding": pl.List(coding)}))},
    )
    first_code = frame.select(compile_path("category[0].coding[0].code")).to_series().to_list()
    assert first_code == ["laboratory", None, None, None, None, None]
    second = frame.select(compile_path("category[1].coding[0].system")).to_series().to_list()
    assert second == [None, "s", None, None, None, None]
    matched = frame.select(compile_path("category[0].coding[system='t'].code")).to_series().to_list()
    assert matched == ["x", None, None, None, None, None]
