"""Loading vocabularies: Athena TSV and CDM-export CSV, the content-keyed cache, bad files named."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from pipelines.errors import PasserelleError
from pipelines.project_files import data_dir
from pipelines.vocab import load_vocabulary
from pipelines.vocab.aliases import normalize_system, vocabulary_ids
from pipelines.vocab.cache import content_key

STARTER = data_dir("vocab") / "starter"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PASSERELLE_CACHE_DIR", str(tmp_path / "cache"))


def test_starter_loads_with_its_release_and_real_concepts():
    vocab = load_vocabulary()
    assert vocab.version.startswith("starter v1")
    concept = vocab.concept.collect()
    assert concept.height == vocab.tables["concept"]["rows"] > 300
    by_id = dict(concept.select("concept_id", "concept_name").iter_rows())
    assert by_id[8507] == "MALE" and by_id[8532] == "FEMALE"
    assert by_id[32817] == "EHR" and by_id[32838] == "EHR prescription"
    assert by_id[9201] == "Inpatient Visit"
    assert concept.schema["valid_start_date"] == pl.Date
    assert vocab.tables["concept_synonym"]["status"] == "empty"


def test_starter_drugs_reach_their_ingredient_through_concept_ancestor():
    vocab = load_vocabulary()
    ancestors = vocab.concept_ancestor.filter(pl.col("descendant_concept_id") == 19059056).collect()
    # aspirin 81 MG Oral Tablet -> aspirin
    assert set(ancestors["ancestor_concept_id"]) == {19059056, 1112807}


def test_shard_loads_comma_separated_export_and_reports_missing_and_empty_tables(shared):
    vocab = load_vocabulary(shared / "reference/vocab/synthea27nj_shard")
    assert vocab.version == "v5.0 09-APR-22*"
    assert vocab.tables["concept"]["rows"] == 2294
    assert vocab.tables["concept_relationship"]["rows"] == 266588
    assert vocab.tables["concept_ancestor"]["status"] == "empty"
    assert vocab.tables["drug_strength"]["status"] == "missing"
    assert vocab.drug_strength.collect().height == 0
    prediabetes = vocab.concept.filter(pl.col("concept_id") == 40316773).collect().row(0, named=True)
    assert prediabetes["standard_concept"] is None  # the export writes "" for no value
    assert str(prediabetes["valid_end_date"]) == "2002-01-31"


def test_cache_is_built_once_and_reused():
    first = load_vocabulary()
    second = load_vocabulary()
    assert (first.built, second.built) == (True, False)
    assert first.cache_dir == second.cache_dir


def test_cache_key_follows_content_not_size_or_mtime(tmp_path):
    folder = tmp_path / "vocab"
    shutil.copytree(STARTER, folder)
    before = content_key(folder)
    vocabulary = folder / "VOCABULARY.csv"
    text = vocabulary.read_text()
    stat = vocabulary.stat()
    vocabulary.write_text(text.replace("starter v1", "starter v2"))  # same size
    import os

    os.utime(vocabulary, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_key(folder) != before
    assert load_vocabulary(folder).version.startswith("starter v2")


def test_athena_names_with_stray_quotes_load_unchanged(tmp_path):
    folder = tmp_path / "vocab"
    shutil.copytree(STARTER, folder)
    with (folder / "CONCEPT.csv").open("a") as handle:
        handle.write(
            '2000000001\t"Quoted" start and a stray " inside\tObservation\tSNOMED\tClinical Finding'
            "\t\tLOCAL1\t19700101\t20991231\t\n"
        )
    concept = load_vocabulary(folder).concept.filter(pl.col("concept_id") == 2000000001).collect()
    assert concept["concept_name"].item() == '"Quoted" start and a stray " inside'


def test_bad_value_is_reported_with_file_line_and_column(tmp_path):
    folder = tmp_path / "vocab"
    shutil.copytree(STARTER, folder)
    lines = (folder / "CONCEPT_RELATIONSHIP.csv").read_text().splitlines()
    lines[3] = (
        lines[3].replace("\t", "\tnot-a-number", 1).split("\t", 1)[0] + "\tx\tMaps to\t19700101\t20991231\t"
    )
    (folder / "CONCEPT_RELATIONSHIP.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(PasserelleError, match=r"CONCEPT_RELATIONSHIP\.csv: line 4: column concept_id_2"):
        load_vocabulary(folder)


def test_missing_columns_and_missing_concept_file_are_errors(tmp_path):
    folder = tmp_path / "vocab"
    folder.mkdir()
    (folder / "CONCEPT.csv").write_text("concept_id\tconcept_name\n1\tx\n")
    with pytest.raises(
        PasserelleError, match=r"CONCEPT\.csv: not a CONCEPT table, missing column\(s\) domain_id"
    ):
        load_vocabulary(folder)
    (folder / "CONCEPT.csv").unlink()
    (folder / "VOCABULARY.csv").write_text((STARTER / "VOCABULARY.csv").read_text())
    with pytest.raises(PasserelleError, match=r"no CONCEPT\.csv"):
        load_vocabulary(folder)


def test_not_a_folder_is_an_error(tmp_path):
    with pytest.raises(PasserelleError, match="no such vocabulary folder"):
        load_vocabulary(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("system", "vocabulary_id"),
    [
        ("http://snomed.info/sct", "SNOMED"),
        ("http://snomed.info/sct (20230731)", "SNOMED"),
        ("http://snomed.info/sct|http://snomed.info/sct/900000000000207008/version/20230731", "SNOMED"),
        ("SNOMED-CT", "SNOMED"),
        ("urn:oid:2.16.840.1.113883.6.96", "SNOMED"),
        ("http://loinc.org/", "LOINC"),
        ("LOINC(2.74)", "LOINC"),
        ("http://hl7.org/fhir/sid/icd-10", "ICD10"),
        ("ICD10", "ICD10"),
        ("http://fhir.de/CodeSystem/bfarm/icd-10-gm", "ICD10GM"),
        ("http://fhir.de/CodeSystem/bfarm/atc", "ATC"),
        ("http://hl7.org/fhir/sid/ndc", "NDC"),
        ("http://unitsofmeasure.org", "UCUM"),
        ("http://terminology.hl7.org/CodeSystem/v3-AdministrativeGender", "Gender"),
        ("local", "local"),
        ("Visit", "Visit"),  # an OMOP vocabulary_id passes through
        ("urn:oid:1.2.36.1.2001.1005.17", None),
        (None, None),
    ],
)
def test_code_system_aliases(system, vocabulary_id):
    assert vocabulary_ids([system], {"Visit", "SNOMED"}) == [vocabulary_id]


def test_every_alias_row_cites_a_source():
    for name in ("code_systems.csv", "ucum_synonyms.csv", "concept_maps.csv"):
        frame = pl.read_csv(data_dir("vocab") / "aliases" / name, infer_schema=False)
        assert frame["source"].null_count() == 0, name


def test_normalize_system_keeps_distinct_systems_distinct():
    assert normalize_system("http://hl7.org/fhir/sid/icd-10") != normalize_system(
        "http://hl7.org/fhir/sid/icd-10-cm"
    )


def test_crlf_line_endings_load_like_lf(tmp_path):
    folder = tmp_path / "vocab"
    shutil.copytree(STARTER, folder)
    for name in ("CONCEPT.csv", "CONCEPT_ANCESTOR.csv"):
        path = folder / name
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    vocab = load_vocabulary(folder)
    ancestor = vocab.concept_ancestor.filter(pl.col("descendant_concept_id") == 19059056).collect()
    assert ancestor["max_levels_of_separation"].max() == 1
    male = vocab.concept.filter(pl.col("concept_id") == 8507).collect().row(0, named=True)
    assert (male["invalid_reason"], male["concept_code"]) == (None, "M")
