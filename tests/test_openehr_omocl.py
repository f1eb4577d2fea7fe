"""The OMOCL engine: the grammar (OMOCL/v1.0.0), every reference file loading, and how rows are found."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from _openehr_compositions import (
    BLOOD_PRESSURE,
    blood_pressure,
    coded,
    composition,
    element,
    evaluation,
    event,
    observation,
    quantity,
)

from pipelines.mapping.omocl import OmoclError, apply_catalogue, load_catalogue, load_file, load_folder
from pipelines.sources.openehr import default_mapping_dir, read_openehr

EHR = "0b8f5cf5-0d8a-4a29-8b39-0d0f0c6e4a11"
HEADER = """grammar: OMOCL/v1.0.0
type: model
metadata: {{name: {name}, version: 1.0.0}}
spec:
  system: OMOP
  version: 5.4
  openEhrConfig:
    archetype: {archetype}
mappings:
"""


def _omocl(folder: Path, name: str, archetype: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yml"
    path.write_text(HEADER.format(name=name, archetype=archetype) + body, encoding="utf-8")
    return path


def _candidates(tmp_path: Path, documents: list[dict], mappings: Path):
    for i, document in enumerate(documents):
        target = tmp_path / "ehrs" / EHR / f"c{i}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(document), encoding="utf-8")
    export = read_openehr([tmp_path / "ehrs"], time_zone="UTC")
    return apply_catalogue(export.elements, load_catalogue([mappings]))


def test_every_reference_omocl_file_loads(shared):
    files = load_folder(shared / "reference" / "omocl")
    assert len(files) == 199
    kinds = {m.type for f in files for m in f.mappings}
    assert {"Measurement", "Observation", "Include", "CustomMapping", "Person", "Visit", "Death"} <= kinds
    pulse_ox = next(f for f in files if f.archetype == "openEHR-EHR-OBSERVATION.pulse_oximetry.v1")
    first = pulse_ox.mappings[0]
    # the YAML anchor &valueAlternatives1 gives unit, ranges and operator the value's alternatives
    assert first.field("unit").alternatives == first.field("value").alternatives
    assert first.field("unit").optional and not first.field("value").optional
    assert first.field("concept_id").alternatives[0].code == 4196147


def test_our_own_omocl_files_cover_the_core_archetypes():
    archetypes = {f.archetype for f in load_folder(default_mapping_dir())}
    assert {
        "openEHR-EHR-OBSERVATION.blood_pressure.v2",
        "openEHR-EHR-OBSERVATION.pulse.v2",
        "openEHR-EHR-OBSERVATION.body_temperature.v2",
        "openEHR-EHR-OBSERVATION.respiration.v2",
        "openEHR-EHR-OBSERVATION.pulse_oximetry.v1",
        "openEHR-EHR-OBSERVATION.body_weight.v2",
        "openEHR-EHR-OBSERVATION.height.v2",
        "openEHR-EHR-OBSERVATION.body_mass_index.v2",
        "openEHR-EHR-OBSERVATION.laboratory_test_result.v1",
        "openEHR-EHR-CLUSTER.laboratory_test_analyte.v1",
        "openEHR-EHR-EVALUATION.problem_diagnosis.v1",
        "openEHR-EHR-INSTRUCTION.medication_order.v2",
        "openEHR-EHR-ACTION.medication.v1",
        "openEHR-EHR-OBSERVATION.medication_statement.v0",
        "openEHR-EHR-ACTION.procedure.v1",
        "openEHR-EHR-EVALUATION.adverse_reaction_risk.v1",
        "openEHR-EHR-EVALUATION.tobacco_smoking_summary.v1",
        "openEHR-EHR-EVALUATION.death_summary.v0",
        "openEHR-EHR-ADMIN_ENTRY.person_data.v0",
        "openEHR-EHR-ADMIN_ENTRY.episode_institution.v0",
    } <= archetypes


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('  - type: "Measurment"\n', "mappings[0]: unknown type 'Measurment'"),
        ('  - type: "Measurement"\n    value:\n      alternatives: []\n', "mappings[0].value: a field needs"),
        (
            '  - type: "Measurement"\n    value:\n      alternatives:\n        - {path: "/a", code: 1}\n',
            "mappings[0].value.alternatives[0]: an alternative is exactly one of",
        ),
        (
            '  - type: "Measurement"\n    concept_id:\n      alternatives:\n        - code: abc\n',
            "a concept id must be a whole number, found 'abc'",
        ),
        ('  - type: "Include"\n    base_path: "/items"\n', "Include needs base_path and archetype_id"),
    ],
)
def test_a_file_that_breaks_the_grammar_is_refused_naming_file_and_field(tmp_path, body, message):
    path = _omocl(tmp_path, "bad", "openEHR-EHR-OBSERVATION.x.v1", body)
    with pytest.raises(OmoclError, match=re.escape(message)) as error:
        load_file(path)
    assert str(path) in str(error.value)


def test_a_wrong_grammar_version_is_refused(tmp_path):
    path = tmp_path / "old.yml"
    path.write_text(
        "grammar: OMOCL/v0.9\nspec: {openEhrConfig: {archetype: a}}\nmappings: []\n", encoding="utf-8"
    )
    with pytest.raises(OmoclError, match=re.escape("grammar must be 'OMOCL/v1.0.0'")):
        load_file(path)


def test_every_event_gives_its_own_row_dated_by_that_event(tmp_path):
    doc = composition(
        [blood_pressure(("2024-05-01T08:00:00Z", 141.0, 90.0), ("2024-05-01T12:30:00Z", 128.0, 82.0))]
    )
    result = _candidates(tmp_path, [doc], default_mapping_dir())
    rows = result.candidates.sort("concept_const", "start")
    assert rows.select("concept_const", "value_number", "unit", "start").rows() == [
        (3004249, 141.0, "mm[Hg]", datetime(2024, 5, 1, 8, 0)),
        (3004249, 128.0, "mm[Hg]", datetime(2024, 5, 1, 12, 30)),
        (3012888, 90.0, "mm[Hg]", datetime(2024, 5, 1, 8, 0)),
        (3012888, 82.0, "mm[Hg]", datetime(2024, 5, 1, 12, 30)),
    ]
    assert rows["focus_path"].str.contains("/events[at0006]#1/", literal=True).sum() == 2


def test_alternatives_are_tried_in_order_and_optional_fields_may_stay_empty(tmp_path):
    mappings = tmp_path / "maps"
    _omocl(
        mappings,
        "diagnosis",
        "openEHR-EHR-EVALUATION.problem_diagnosis.v1",
        """  - type: "ConditionOccurrence"
    concept_id:
      alternatives:
        - path: "/data[at0001]/items[at0002]"
    condition_start_date:
      alternatives:
        - path: "/data[at0001]/items[at0077]"
        - path: "../context"
    condition_end_date:
      optional: true
      alternatives:
        - path: "/data[at0001]/items[at0030]"
""",
    )
    with_onset = evaluation(
        "openEHR-EHR-EVALUATION.problem_diagnosis.v1",
        [
            element("at0002", coded("Diabetes mellitus", "73211009", "SNOMED-CT")),
            element("at0077", {"_type": "DV_DATE", "value": "2019-04"}),
        ],
    )
    without = evaluation(
        "openEHR-EHR-EVALUATION.problem_diagnosis.v1",
        [element("at0002", coded("Hypertension", "38341003", "http://snomed.info/sct (20230731)"))],
    )
    result = _candidates(
        tmp_path, [composition([with_onset, without], start="2024-02-03T09:00:00Z")], mappings
    )
    assert result.candidates.select("concept_code", "concept_system", "start", "end").rows() == [
        ("73211009", "SNOMED-CT", datetime(2019, 4, 1), None),
        ("38341003", "http://snomed.info/sct (20230731)", datetime(2024, 2, 3, 9, 0), None),
    ]


def test_quantity_units_normal_range_and_magnitude_status(tmp_path):
    analyte = {
        "_type": "CLUSTER",
        "archetype_node_id": "openEHR-EHR-CLUSTER.laboratory_test_analyte.v1",
        "name": {"value": "analyte"},
        "items": [
            element("at0024", coded("Creatinine", "2160-0", "LOINC")),
            element(
                "at0001",
                quantity(
                    0.4,
                    "mg/dL",
                    magnitude_status="<",
                    normal_range={"lower": quantity(0.6, "mg/dL"), "upper": quantity(1.2, "mg/dL")},
                ),
            ),
        ],
    }
    panel = {
        "_type": "CLUSTER",
        "archetype_node_id": "openEHR-EHR-CLUSTER.laboratory_test_panel.v0",
        "name": {"value": "panel"},
        "items": [analyte],
    }
    lab = observation(
        "openEHR-EHR-OBSERVATION.laboratory_test_result.v1",
        [event("at0002", "2024-06-01T07:45:00Z", [analyte, panel])],
    )
    result = _candidates(tmp_path, [composition([lab])], default_mapping_dir())
    rows = result.candidates
    # Include reaches the analyte directly under the event and inside the panel
    assert rows.height == 2
    assert (
        rows.select(
            "concept_code", "value_number", "unit", "range_low", "range_high", "operator", "start"
        ).rows()
        == [
            ("2160-0", 0.4, "mg/dL", 0.6, 1.2, "<", datetime(2024, 6, 1, 7, 45)),
        ]
        * 2
    )


def test_base_path_gives_one_row_per_matched_node(tmp_path):
    def activity(code: str, start: str) -> dict:
        return {
            "_type": "ACTIVITY",
            "archetype_node_id": "at0001",
            "name": {"value": "order"},
            "description": {
                "_type": "ITEM_TREE",
                "archetype_node_id": "at0002",
                "name": {"value": "tree"},
                "items": [
                    element("at0070", coded("metformin", code, "RxNorm")),
                    {
                        "_type": "CLUSTER",
                        "archetype_node_id": "at0113",
                        "name": {"value": "details"},
                        "items": [element("at0012", {"_type": "DV_DATE_TIME", "value": start})],
                    },
                ],
            },
        }

    order = {
        "_type": "INSTRUCTION",
        "archetype_node_id": "openEHR-EHR-INSTRUCTION.medication_order.v2",
        "name": {"value": "order"},
        "narrative": {"_type": "DV_TEXT", "value": "orders"},
        "activities": [
            activity("860975", "2024-01-10T08:00:00Z"),
            activity("197361", "2024-01-11T08:00:00Z"),
        ],
    }
    result = _candidates(tmp_path, [composition([order])], default_mapping_dir())
    assert result.candidates.select("concept_code", "start").rows() == [
        ("860975", datetime(2024, 1, 10, 8, 0)),
        ("197361", datetime(2024, 1, 11, 8, 0)),
    ]


def test_concept_map_multiplication_and_a_missing_required_field(tmp_path):
    mappings = tmp_path / "maps"
    _omocl(
        mappings,
        "screening",
        "openEHR-EHR-OBSERVATION.screening.v1",
        """  - type: "Observation"
    concept_id:
      alternatives:
        - code: 4041306
    observation_date:
      alternatives:
        - path: "/data[at0001]/events[at0002]"
    value:
      alternatives:
        - conceptMap:
            path: "/data[at0001]/events[at0002]/data[at0003]/items[at0005]"
            mapping:
              at0031: 4188539
              at0032: 4188540
    quantity:
      optional: true
      alternatives:
        - multiplication:
            - path: "/data[at0001]/events[at0002]/data[at0003]/items[at0010]"
            - path: "/data[at0001]/events[at0002]/data[at0003]/items[at0011]"
  - type: "Measurement"
    concept_id:
      alternatives:
        - code: 3025315
    measurement_date:
      alternatives:
        - path: "/data[at0001]/events[at0002]/data[at0003]/items[at0099]"
    value:
      alternatives:
        - path: "/data[at0001]/events[at0002]/data[at0003]/items[at0010]"
  - type: "CustomMapping"
    name: "SomethingElse"
""",
    )
    screening = observation(
        "openEHR-EHR-OBSERVATION.screening.v1",
        [
            event(
                "at0002",
                "2024-07-01T10:00:00Z",
                [
                    element("at0005", coded("No", "at0032", "local")),
                    element("at0010", quantity(2.5, "mg")),
                    element("at0011", {"_type": "DV_COUNT", "magnitude": 3}),
                ],
            )
        ],
    )
    result = _candidates(tmp_path, [composition([screening])], mappings)
    assert result.candidates.select("concept_const", "value_const", "quantity").rows() == [
        (4041306, 4188540, 7.5)
    ]
    assert result.incomplete.select("omocl_file", "missing_field").rows() == [
        ("screening", "measurement_date")
    ]
    assert result.custom_skipped == {"SomethingElse": 1}


def test_the_reference_files_map_the_shared_samples(shared):
    export = read_openehr([shared / "samples" / "openehr" / "canonical"], time_zone="Europe/Berlin")
    result = apply_catalogue(export.elements, load_catalogue([shared / "reference" / "omocl"]))
    per_type = dict(result.candidates.group_by("omocl_type").len().iter_rows())
    assert per_type["Measurement"] > 150
    assert per_type["DrugExposure"] >= 15
    bp = result.candidates.filter(pl.col("archetype") == BLOOD_PRESSURE)
    assert sorted(bp["value_number"].to_list()) == [1.0, 60.0]
