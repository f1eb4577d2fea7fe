"""Concept resolution on the starter vocabulary and the Synthea27Nj shard: real ids, no dropped rows."""

from __future__ import annotations

import polars as pl
import pytest

from pipelines.mapping.concepts import (
    coverage,
    coverage_summary,
    resolve_concepts,
    resolve_units,
    write_coverage_report,
)
from pipelines.vocab import Vocabulary, load_vocabulary


@pytest.fixture(scope="module")
def starter(tmp_path_factory) -> Vocabulary:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PASSERELLE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_vocabulary(local_maps=tmp_path_factory.mktemp("no_local_maps"))


@pytest.fixture(scope="module")
def shard_vocab(shared, tmp_path_factory) -> Vocabulary:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PASSERELLE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        return load_vocabulary(
            shared / "reference/vocab/synthea27nj_shard", local_maps=tmp_path_factory.mktemp("none")
        )


def _one(system: str, code: str) -> pl.DataFrame:
    return pl.DataFrame({"system": [system], "code": [code]})


@pytest.mark.parametrize(
    ("system", "code", "source_concept_id", "concept_id", "domain_id"),
    [
        ("http://hl7.org/fhir/sid/icd-10-cm", "I10", 35207668, 320128, "Condition"),
        ("urn:oid:2.16.840.1.113883.6.90", "E11", 1567956, 201826, "Condition"),
        ("http://snomed.info/sct", "44054006", 201826, 201826, "Condition"),
        ("http://snomed.info/sct (20230731)", "840539006", 37311061, 37311061, "Condition"),
        ("SNOMED-CT", "59621000", 320128, 320128, "Condition"),
        ("http://loinc.org", "8867-4", 3027018, 3027018, "Measurement"),
        ("LOINC", "8480-6", 3004249, 3004249, "Measurement"),
        ("http://hl7.org/fhir/sid/cvx", "140", 40213154, 40213154, "Drug"),
        ("RxNorm", "29046", 1308216, 1308216, "Drug"),
        ("Gender", "F", 8532, 8532, "Gender"),
        ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "EMER", 0, 9203, "Visit"),
    ],
)
def test_codes_of_any_system_resolve_to_their_standard_concept(
    starter, system, code, source_concept_id, concept_id, domain_id
):
    row = resolve_concepts(_one(system, code), starter).row(0, named=True)
    assert (row["source_concept_id"], row["concept_id"], row["domain_id"]) == (
        source_concept_id,
        concept_id,
        domain_id,
    )
    assert row["source_value"] == code


def test_icd10cm_code_lands_in_condition_domain_through_maps_to(starter):
    out = resolve_concepts(_one("ICD10CM", "I50"), starter, prefix="condition_")
    assert out.select("condition_source_concept_id", "condition_concept_id", "condition_domain_id").row(
        0
    ) == (
        1569178,
        316139,
        "Condition",
    )


def test_one_to_many_maps_to_fans_out_all_targets(starter):
    frame = pl.DataFrame(
        {"system": ["http://hl7.org/fhir/sid/icd-10-cm", "LOINC"], "code": ["I48", "8867-4"]}
    )
    out = resolve_concepts(frame, starter)
    assert out.height == 3
    assert sorted(out.filter(pl.col("code") == "I48")["concept_id"].to_list()) == [313217, 314665]


def test_upgraded_concept_follows_its_replacement(starter):
    out = resolve_concepts(_one("UCUM", "[degC]"), starter)
    assert out.select("source_concept_id", "concept_id").row(0) == (8653, 586323)


def test_unknown_system_and_unmapped_code_give_zero_and_keep_every_row(starter):
    frame = pl.DataFrame(
        {
            "system": ["urn:oid:1.2.36.1.2001.1005.17", "http://snomed.info/sct", None, "http://loinc.org"],
            "code": ["GNFLU", "999999999", "x", None],
            "position": [0, 1, 2, 3],
        }
    )
    out = resolve_concepts(frame, starter)
    assert out["position"].to_list() == [0, 1, 2, 3]
    assert out["concept_id"].to_list() == [0, 0, 0, 0]
    assert out["source_concept_id"].to_list() == [0, 0, 0, 0]
    assert out["domain_id"].null_count() == 4
    assert out["source_value"].to_list() == ["GNFLU", "999999999", "x", None]


def test_row_order_is_kept(starter):
    codes = ["8867-4", "8480-6", "8462-4", "8867-4", "zzz", "8310-5"]
    out = resolve_concepts(pl.DataFrame({"system": ["http://loinc.org"] * 6, "code": codes}), starter)
    assert out["concept_id"].to_list() == [3027018, 3004249, 3012888, 3027018, 0, 3020891]


def test_existing_output_column_is_refused(starter):
    with pytest.raises(ValueError, match="prefix"):
        resolve_concepts(pl.DataFrame({"system": ["LOINC"], "code": ["1"], "concept_id": [1]}), starter)


def test_units_resolve_with_synonyms_and_unknown_units_give_zero(starter):
    frame = pl.DataFrame(
        {"unit": ["mmHg", "mm[Hg]", "U/L", "/min", "Cel", "kg/m2", "[lb_av]", "furlong", None]}
    )
    out = resolve_units(frame, starter)
    assert out["unit_concept_id"].to_list() == [8876, 8876, 8645, 8541, 586323, 9531, 8739, 0, 0]
    assert out["unit_source_value"].to_list() == frame["unit"].to_list()


def test_local_source_to_concept_map_takes_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PASSERELLE_CACHE_DIR", str(tmp_path / "cache"))
    local = tmp_path / "local"
    local.mkdir()
    (local / "site.csv").write_text(
        "source_code,source_concept_id,source_vocabulary_id,source_code_description,target_concept_id,"
        "target_vocabulary_id,valid_start_date,valid_end_date,invalid_reason\n"
        "GLU-S,0,MyHospitalLab,Glucose serum,3004501,LOINC,1970-01-01,2099-12-31,\n"
        "I10,0,ICD10CM,override,201826,SNOMED,1970-01-01,2099-12-31,\n"
        "OLD,0,MyHospitalLab,retired,3000963,LOINC,1970-01-01,2000-12-31,D\n"
    )
    (local / "MyHospitalLab.usagi.csv").write_text(
        "sourceCode,sourceName,sourceFrequency,matchScore,mappingStatus,conceptId,conceptName\n"
        "HB,Haemoglobin,10,1.0,APPROVED,3000963,Hemoglobin\n"
        "PLT,Platelets,5,0.5,UNCHECKED,3024929,Platelets\n"
    )
    vocab = load_vocabulary(local_maps=local)
    frame = pl.DataFrame(
        {
            "system": ["MyHospitalLab", "ICD10CM", "MyHospitalLab", "MyHospitalLab", "MyHospitalLab"],
            "code": ["GLU-S", "I10", "OLD", "HB", "PLT"],
        }
    )
    out = resolve_concepts(frame, vocab)
    assert out["concept_id"].to_list() == [3004501, 201826, 0, 3000963, 0]
    assert out["domain_id"].to_list()[:2] == ["Measurement", "Condition"]


def test_shard_resolves_snomed_loinc_rxnorm_and_ucum(shard_vocab):
    frame = pl.DataFrame(
        {
            "system": [
                "http://snomed.info/sct",
                "http://loinc.org",
                "RxNorm",
                "http://snomed.info/sct",
                "UCUM",
            ],
            "code": ["195967001", "29463-7", "29046", "275272006", "K/uL"],
        }
    )
    out = resolve_concepts(frame, shard_vocab)
    assert out.select("code", "source_concept_id", "concept_id", "domain_id").rows() == [
        ("195967001", 317009, 317009, "Condition"),
        ("29463-7", 3025315, 3025315, "Measurement"),
        ("29046", 1308216, 1308216, "Drug"),
        ("275272006", 4166590, 4132546, "Condition"),  # non-standard SNOMED -> Maps to
        ("K/uL", 8792, 8848, "Unit"),  # non-standard UCUM -> 10*3/uL
    ]


def test_shard_maps_to_target_missing_from_concept_gives_zero_not_a_dangling_id(shard_vocab):
    # 15777000 Prediabetes (40316773) Maps to 4311629, a concept the shard does not carry
    row = resolve_concepts(_one("http://snomed.info/sct", "15777000"), shard_vocab).row(0, named=True)
    assert (row["source_concept_id"], row["concept_id"], row["domain_id"]) == (40316773, 0, None)


def test_coverage_report_lists_unmapped_codes_most_frequent_first(starter, tmp_path):
    frame = pl.DataFrame(
        {
            "system": ["http://loinc.org"] * 3 + ["http://acme.org/lab/codes/tests"] * 4 + ["LOINC"],
            "code": ["8867-4", "LOCAL-1", "LOCAL-1", "A", "A", "A", "B", "8480-6"],
            "display": [None, "Local one", None, "Acme A", None, None, "Acme B", None],
        }
    )
    resolved = resolve_concepts(frame, starter)
    counts = coverage(resolved, starter, table="measurement", name="display")
    path = tmp_path / "coverage_unmapped.csv"
    assert write_coverage_report(counts, path) == 3
    report = pl.read_csv(path)
    assert report.rows() == [
        ("A", "Acme A", 3, "http://acme.org/lab/codes/tests", "measurement"),
        ("LOCAL-1", "Local one", 2, "LOINC", "measurement"),
        ("B", "Acme B", 1, "http://acme.org/lab/codes/tests", "measurement"),
    ]
    summary = coverage_summary(counts).filter(pl.col("source_vocabulary_id") == "LOINC").row(0, named=True)
    assert (summary["rows"], summary["mapped_rows"], summary["unmapped_codes"]) == (4, 2, 1)


def test_local_map_file_in_an_unknown_format_is_named_in_the_error(tmp_path, monkeypatch, starter):
    monkeypatch.setenv("PASSERELLE_CACHE_DIR", str(tmp_path / "cache"))
    local = tmp_path / "local"
    local.mkdir()
    (local / "notes.csv").write_text("a,b\n1,2\n")
    vocab = load_vocabulary(local_maps=local)
    from pipelines.errors import PasserelleError

    with pytest.raises(PasserelleError, match=r"notes\.csv"):
        resolve_concepts(_one("LOINC", "8867-4"), vocab)


def test_a_hash_collision_falls_back_to_exact_grouping(starter, monkeypatch):
    import pipelines.mapping.concepts as concepts

    monkeypatch.setattr(concepts, "_grouping_hash", lambda column, seed: pl.lit(7, dtype=pl.UInt64))
    frame = pl.DataFrame(
        {"system": ["LOINC", "LOINC", "SNOMED", "LOINC"], "code": ["8867-4", "8480-6", "44054006", "8867-4"]}
    )
    assert resolve_concepts(frame, starter)["concept_id"].to_list() == [3027018, 3004249, 201826, 3027018]
    units = resolve_units(pl.DataFrame({"unit": ["kg", "cm", "kg"]}), starter)
    assert units["unit_concept_id"].to_list() == [9529, 8582, 9529]


def test_maps_to_value_gives_value_as_concept_id(shared, tmp_path, monkeypatch):
    # A site-local concept (ids above 2,000,000,000 are OMOP's range for them) mapped the way OHDSI maps
    # "encounter for general examination" codes: Maps to 4203722 Patient encounter procedure, Maps to
    # value 4036803 General examination of patient (both real concepts of the shard).
    monkeypatch.setenv("PASSERELLE_CACHE_DIR", str(tmp_path / "cache"))
    shard = shared / "reference/vocab/synthea27nj_shard"
    folder = tmp_path / "vocab"
    folder.mkdir()
    concept = pl.read_csv(shard / "CONCEPT.csv", infer_schema=False).filter(
        pl.col("concept_id").is_in(["4203722", "4036803"])
    )
    local = (
        "2000000001,General exam (site code),Observation,SiteCodes,Procedure,,GENEX,1970-01-01,2099-12-31,\n"
    )
    (folder / "CONCEPT.csv").write_text(concept.write_csv() + local)
    (folder / "CONCEPT_RELATIONSHIP.csv").write_text(
        "concept_id_1,concept_id_2,relationship_id,valid_start_date,valid_end_date,invalid_reason\n"
        "2000000001,4203722,Maps to,1970-01-01,2099-12-31,\n"
        "2000000001,4036803,Maps to value,1970-01-01,2099-12-31,\n"
    )
    vocab = load_vocabulary(folder, local_maps=tmp_path / "none")
    row = resolve_concepts(_one("SiteCodes", "GENEX"), vocab).row(0, named=True)
    assert (row["concept_id"], row["value_as_concept_id"], row["domain_id"]) == (
        4203722,
        4036803,
        "Observation",
    )


_MIXED = pl.DataFrame(
    {
        "system": [
            "http://loinc.org",
            "ICD10CM",
            None,
            "http://hl7.org/fhir/sid/icd-10-cm",
            "LOINC",
            "SNOMED",
        ],
        "code": ["8867-4", "I48", "x", "I10", None, "44054006"],
        "position": [0, 1, 2, 3, 4, 5],
    }
)


@pytest.mark.parametrize(
    "dtype",
    [
        pl.Categorical(),
        pl.Enum(sorted(set(_MIXED["system"].drop_nulls()) | set(_MIXED["code"].drop_nulls()))),
    ],
)
def test_categorical_input_gives_the_same_frame_as_text_input(starter, dtype):
    text = resolve_concepts(_MIXED, starter)
    coded = resolve_concepts(_MIXED.with_columns(pl.col("system", "code").cast(dtype)), starter)
    assert coded.drop("system", "code").equals(text.drop("system", "code"))
    assert coded["code"].cast(pl.Utf8).equals(text["code"])
    # real ids, the I48 fan-out appended after all rows, the null code kept
    assert coded["concept_id"].to_list() == [3027018, 313217, 0, 320128, 0, 201826, 314665]
    assert coded["source_value"].to_list() == ["8867-4", "I48", "x", "I10", None, "44054006", "I48"]


def test_categorical_units_give_the_same_concepts_as_text_units(starter):
    units = pl.DataFrame({"unit": ["mmHg", "kg", None, "furlong", "kg", "Cel"]})
    text = resolve_units(units, starter)
    coded = resolve_units(units.with_columns(pl.col("unit").cast(pl.Categorical)), starter)
    assert (
        coded["unit_concept_id"].to_list()
        == text["unit_concept_id"].to_list()
        == [8876, 9529, 0, 0, 9529, 586323]
    )
    assert coded["unit_source_value"].equals(text["unit_source_value"])


@pytest.mark.parametrize("bucket_bits", [20, 4])
def test_many_distinct_codes_group_exactly_across_bucket_rounds(starter, monkeypatch, bucket_bits):
    # 3,000 distinct codes in 6,000 rows: in a first table of 16 k buckets some collide and their rows
    # take further rounds; with 16 buckets the rounds cannot place them all and exact grouping takes over
    import pipelines.mapping.concepts as concepts

    monkeypatch.setattr(concepts, "_BUCKET_BITS", bucket_bits)
    codes = [f"8867-4-{i}" for i in range(2999)] + ["8867-4"]
    frame = pl.DataFrame({"system": ["LOINC"] * 6000, "code": codes * 2})
    out = resolve_concepts(frame, starter)
    assert out.height == 6000
    assert out["source_value"].equals(frame["code"].alias("source_value"))
    assert out["concept_id"].to_list() == ([0] * 2999 + [3027018]) * 2


def test_an_empty_frame_gives_the_columns_and_no_rows(starter):
    empty = pl.DataFrame(schema={"system": pl.Utf8, "code": pl.Utf8})
    out = resolve_concepts(empty, starter)
    assert out.height == 0
    assert out.columns == [
        "system",
        "code",
        "source_concept_id",
        "concept_id",
        "domain_id",
        "value_as_concept_id",
        "source_value",
    ]
    assert resolve_units(pl.DataFrame(schema={"unit": pl.Utf8}), starter).columns == [
        "unit",
        "unit_concept_id",
        "unit_source_value",
    ]


def test_rows_split_over_threads_and_blocks_give_the_same_frame(starter, monkeypatch):
    # the frame-sized path (two threads of 64 k-row blocks from 2 M rows on) on a small frame: 6,000 rows
    # in parts of 1,000 rows (as many threads as Polars has) and blocks of 256
    import pipelines.mapping.concepts as concepts

    codes = ["8867-4", "8480-6", "I48", "zzz", None] + [f"x{i}" for i in range(995)]
    systems = ["LOINC", "http://loinc.org", "http://hl7.org/fhir/sid/icd-10-cm", "LOINC", "LOINC"]
    frame = pl.DataFrame({"system": (systems + ["LOINC"] * 995) * 6, "code": codes * 6})
    whole = resolve_concepts(frame, starter)
    monkeypatch.setattr(concepts, "_ROWS_PER_THREAD", 1000)
    monkeypatch.setattr(concepts, "_BLOCK", 256)
    split = resolve_concepts(frame, starter)
    assert split.equals(whole)
    assert split.height == 6006  # I48 maps to two concepts: one more row for each of its 6 rows
    assert split["concept_id"].head(5).to_list() == [3027018, 3004249, 313217, 0, 0]


def test_streamed_keys_of_a_frame_in_many_chunks_give_the_same_frame(starter, monkeypatch):
    # the streaming engine's hashing (10 M-row frames) on a small frame read in pieces: its key chunks are
    # walked as they come, in blocks of 256 rows over two threads
    import pipelines.mapping.concepts as concepts

    codes = ["8867-4", "8480-6", "I48", "zzz", None] + [f"x{i}" for i in range(995)]
    systems = ["LOINC", "http://loinc.org", "http://hl7.org/fhir/sid/icd-10-cm", "LOINC", "LOINC"]
    piece = pl.DataFrame({"system": systems + ["LOINC"] * 995, "code": codes})
    frame = pl.concat([piece, piece.head(700), piece, piece.tail(300)], rechunk=False)
    assert frame.n_chunks() == 4
    whole = resolve_concepts(frame.rechunk(), starter)
    monkeypatch.setattr(concepts, "_STREAMED_ROWS", 0)
    monkeypatch.setattr(concepts, "_ROWS_PER_THREAD", 1000)
    monkeypatch.setattr(concepts, "_BLOCK", 256)
    streamed = resolve_concepts(frame, starter)
    assert streamed.equals(whole)
    assert streamed.height == 3003  # I48 (rows 2, 1002, 1702) fans out to two concepts
    assert streamed["concept_id"].head(5).to_list() == [3027018, 3004249, 313217, 0, 0]
    coded = resolve_concepts(frame.with_columns(pl.col("system", "code").cast(pl.Categorical)), starter)
    assert coded.drop("system", "code").equals(streamed.drop("system", "code"))


def test_codes_missing_from_the_first_rounds_sample_are_placed_in_the_next_round(starter, monkeypatch):
    # the first round's table holds every 8th row only: here the codes of the other rows occur once
    # each, so their buckets are empty or taken by a sampled code and they all take a second round
    import pipelines.mapping.concepts as concepts

    rounds = []
    place = concepts._place

    def counted(blocks, count, *args):
        rounds.append(count)
        return place(blocks, count, *args)

    monkeypatch.setattr(concepts, "_place", counted)
    codes = [("8867-4" if i % 8 == 0 else f"once-{i}") for i in range(800)]
    codes[801 % 800] = "8480-6"
    frame = pl.DataFrame({"system": ["LOINC"] * 800, "code": codes})
    out = resolve_concepts(frame, starter)
    assert rounds[0] == 800 and rounds[1] == 700  # the 700 rows outside the sample
    expected = [3027018 if i % 8 == 0 else 3004249 if i == 1 else 0 for i in range(800)]
    assert out["concept_id"].to_list() == expected
    assert out["source_value"].equals(frame["code"].alias("source_value"))


def test_keys_and_checks_chunked_differently_are_joined_before_the_blocks_are_cut(starter, monkeypatch):
    import pipelines.mapping.concepts as concepts

    row_keys = concepts._row_keys

    def unevenly_chunked(keys: pl.DataFrame) -> pl.DataFrame:
        hashed = row_keys(keys)
        key = hashed.get_column("key")
        return hashed.with_columns(pl.concat([key.head(2), key.tail(key.len() - 2)], rechunk=False))

    monkeypatch.setattr(concepts, "_row_keys", unevenly_chunked)
    frame = pl.DataFrame(
        {"system": ["LOINC", "LOINC", "SNOMED", "LOINC"], "code": ["8867-4", "8480-6", "44054006", "8867-4"]}
    )
    assert unevenly_chunked(frame).get_column("key").n_chunks() == 2
    assert resolve_concepts(frame, starter)["concept_id"].to_list() == [3027018, 3004249, 201826, 3027018]


def test_equal_range_counts_runs_of_keys_up_to_the_end_of_the_index():
    import numpy as np

    from pipelines.mapping.concepts import _equal_range

    keys = np.array([2, 5, 5, 5, 9, 12, 12], dtype=np.uint64)
    start, count = _equal_range(keys, np.array([1, 5, 9, 10, 12, 13], dtype=np.uint64))
    assert start.tolist() == [0, 1, 4, 5, 5, 7]
    assert count.tolist() == [0, 3, 1, 0, 2, 0]
