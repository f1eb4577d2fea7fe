"""Every code the generator writes resolves to a standard concept of the starter vocabulary."""

from __future__ import annotations

import gzip
import json

import polars as pl
import pytest

from pipelines.mapping.concepts import resolve_concepts, resolve_units
from pipelines.synthetic import generate
from pipelines.synthetic.catalogue import load_catalogue
from pipelines.vocab import load_vocabulary

# code systems whose codes become OMOP concepts (the others are FHIR/openEHR structure: categories,
# statuses, interpretation flags, languages, the openEHR setting terminology)
CONCEPT_SYSTEMS = {
    "http://snomed.info/sct",
    "SNOMED-CT",
    "http://loinc.org",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://hl7.org/fhir/sid/cvx",
    "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "http://hl7.org/fhir/administrative-gender",
}
OMOP_VOCABULARY = {"SNOMED": "SNOMED", "LOINC": "LOINC", "RxNorm": "RxNorm", "CVX": "CVX"}


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


@pytest.fixture(scope="module")
def emitted(tmp_path_factory) -> tuple[set[tuple[str, str]], set[str]]:
    """(system, code) pairs and UCUM units found in every generated file, FHIR and openEHR."""
    out = tmp_path_factory.mktemp("codes")
    generate(out, 120, seed=1)
    documents = [json.loads(p.read_bytes()) for p in (out / "fhir/bundles").glob("*.json")]
    documents += [json.loads(p.read_bytes()) for p in (out / "openehr/aql").glob("*.json")]
    for path in (out / "fhir/bulk").iterdir():
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        documents += [json.loads(line) for line in raw.splitlines() if line.endswith(b"}")]
    codes: set[tuple[str, str]] = set()
    units: set[str] = set()
    for document in documents:
        _collect(document, codes, units)
    return codes, units


def _collect(node, codes: set, units: set) -> None:
    if isinstance(node, dict):
        if "system" in node and "code" in node:
            if node["system"] == "http://unitsofmeasure.org":
                units.add(node["code"])
            elif node["system"] in CONCEPT_SYSTEMS:
                codes.add((node["system"], node["code"]))
        if node.get("_type") == "CODE_PHRASE" and node["terminology_id"]["value"] in CONCEPT_SYSTEMS:
            codes.add((node["terminology_id"]["value"], node["code_string"]))
        if node.get("_type") == "DV_QUANTITY":
            units.add(node["units"])
        for value in node.values():
            _collect(value, codes, units)
    elif isinstance(node, list):
        for value in node:
            _collect(value, codes, units)


def test_every_emitted_code_maps_to_a_standard_concept(vocab, emitted) -> None:
    codes, _ = emitted
    assert len(codes) > 60
    frame = pl.DataFrame(sorted(codes), schema=["system", "code"], orient="row")
    resolved = resolve_concepts(frame, vocab)
    unmapped = resolved.filter(pl.col("concept_id") == 0).select("system", "code").rows()
    assert unmapped == []


def test_every_catalogue_code_is_a_standard_concept_of_the_starter_vocabulary(vocab) -> None:
    """Also the codes a small run may not happen to draw (rare conditions, vaccines of some ages)."""
    rows = [
        (OMOP_VOCABULARY[vocabulary], code)
        for vocabulary, codes in load_catalogue().codes().items()
        if vocabulary in OMOP_VOCABULARY
        for code in sorted(codes)
    ]
    frame = pl.DataFrame(rows, schema=["system", "code"], orient="row")
    resolved = resolve_concepts(frame, vocab)
    assert resolved.filter(pl.col("concept_id") == 0).rows() == []
    standard = (
        vocab.concept.filter(pl.col("standard_concept") == "S")
        .select("concept_id")
        .collect()
        .get_column("concept_id")
    )
    assert resolved.filter(~pl.col("source_concept_id").is_in(standard.implode())).rows() == []


def test_every_emitted_unit_is_a_ucum_concept(vocab, emitted) -> None:
    _, units = emitted
    assert {"mm[Hg]", "/min", "Cel", "kg", "cm", "kg/m2", "%", "mg/dL", "mmol/L", "10*3/uL"} <= units
    resolved = resolve_units(pl.DataFrame({"unit": sorted(units)}), vocab)
    assert resolved.filter(pl.col("unit_concept_id") == 0).rows() == []


def test_codes_land_in_the_domain_of_their_resource(vocab) -> None:
    """Spot checks with real OMOP concept ids, so a changed code is noticed."""
    frame = pl.DataFrame(
        {
            "system": [
                "http://snomed.info/sct",
                "http://loinc.org",
                "http://hl7.org/fhir/sid/cvx",
                "http://www.nlm.nih.gov/research/umls/rxnorm",
                "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "SNOMED-CT",
                "http://snomed.info/sct",
            ],
            "code": ["44054006", "8480-6", "140", "6809", "EMER", "59621000", "171207006"],
        }
    )
    resolved = resolve_concepts(frame, vocab)
    assert resolved.select("concept_id", "domain_id").rows() == [
        (201826, "Condition"),
        (3004249, "Measurement"),
        (40213154, "Drug"),
        (1503297, "Drug"),
        (9203, "Visit"),
        (320128, "Condition"),
        (4064377, "Measurement"),  # a SNOMED procedure code of the Measurement domain
    ]
