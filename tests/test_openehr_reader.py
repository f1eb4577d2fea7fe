"""The openEHR reader: canonical JSON flattened once, typed values, times, inputs and bad input."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
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

from pipelines.errors import PasserelleError
from pipelines.sources.openehr import read_openehr
from pipelines.sources.openehr.times import configured_zone, parse_time

EHR = "7d44b88c-4199-4bad-97dc-d78268e01398"
OTHER_EHR = "2f1a7e0b-5d1c-4bd6-9a0e-9f3f2c7b1a10"


def _write(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def _every_type() -> dict:
    items = [
        element(
            "at0001",
            quantity(
                120.0,
                "mm[Hg]",
                magnitude_status="<",
                normal_range={
                    "lower": {"_type": "DV_QUANTITY", "magnitude": 90.0, "units": "mm[Hg]"},
                    "upper": {"_type": "DV_QUANTITY", "magnitude": 140.0, "units": "mm[Hg]"},
                },
            ),
        ),
        element("at0002", {"_type": "DV_COUNT", "magnitude": 3}),
        element("at0003", {"_type": "DV_PROPORTION", "numerator": 97.0, "denominator": 100.0, "type": 2}),
        element("at0004", coded("Current smoker", "77176002", "SNOMED-CT")),
        element("at0005", {"_type": "DV_TEXT", "value": "free text"}),
        element(
            "at0006", {"_type": "DV_ORDINAL", "value": 2, "symbol": coded("moderate", "at0010", "local")}
        ),
        element(
            "at0007",
            {"_type": "DV_SCALE", "value": 4.5, "symbol": coded("four and a half", "at0011", "local")},
        ),
        element("at0008", {"_type": "DV_BOOLEAN", "value": True}),
        element("at0009", {"_type": "DV_DATE_TIME", "value": "2024-03-05T23:30:00Z"}),
        element("at0010", {"_type": "DV_DATE", "value": "2020-06"}),
        element("at0011", {"_type": "DV_TIME", "value": "14:30:05"}),
        element("at0012", {"_type": "DV_DURATION", "value": "PT1H30M"}),
        element("at0013", {"_type": "DV_IDENTIFIER", "id": "A-17", "type": "lab order"}),
        element(
            "at0014", {"_type": "DV_INTERVAL", "lower": quantity(1.0, "mg"), "upper": quantity(5.0, "mg")}
        ),
        element(
            "at0015",
            {
                "_type": "DV_MULTIMEDIA",
                "uri": {"value": "https://img.example/1"},
                "media_type": {"terminology_id": {"value": "IANA_media-types"}, "code_string": "image/png"},
            },
        ),
        element("at0016", {"_type": "DV_PARSABLE", "value": "<b>x</b>", "formalism": "text/html"}),
        element("at0017", None, null_flavour="253"),
    ]
    section = {
        "_type": "SECTION",
        "archetype_node_id": "openEHR-EHR-SECTION.adhoc.v1",
        "name": {"value": "section"},
        "items": [
            evaluation(
                "openEHR-EHR-EVALUATION.test.v1",
                [
                    {
                        "_type": "CLUSTER",
                        "archetype_node_id": "openEHR-EHR-CLUSTER.test.v1",
                        "name": {"value": "c"},
                        "items": items,
                    }
                ],
            )
        ],
    }
    return composition([section], start="2024-03-05T10:15:00+01:00")


def test_every_data_value_type_lands_in_its_typed_column(tmp_path):
    export = read_openehr([_write(tmp_path / EHR / "c.json", _every_type())], time_zone="Europe/Berlin")
    rows = {r["node_id"]: r for r in export.elements.filter(pl.col("is_element")).to_dicts()}
    assert export.quarantine.height == 0
    assert len(rows) == 17
    q = rows["at0001"]
    assert (q["rm_type"], q["value_number"], q["value_units"]) == ("DV_QUANTITY", 120.0, "mm[Hg]")
    assert (q["normal_low"], q["normal_high"], q["magnitude_status"]) == (90.0, 140.0, "<")
    assert rows["at0002"]["value_number"] == 3.0
    assert (rows["at0003"]["value_number"], rows["at0003"]["value_units"]) == (97.0, "%")
    assert (rows["at0004"]["value_code"], rows["at0004"]["value_terminology"]) == ("77176002", "SNOMED-CT")
    assert rows["at0005"]["value_text"] == "free text"
    assert (rows["at0006"]["value_number"], rows["at0006"]["value_code"]) == (2.0, "at0010")
    assert rows["at0007"]["value_number"] == 4.5
    assert rows["at0008"]["value_boolean"] is True
    assert rows["at0009"]["value_datetime"] == datetime(2024, 3, 6, 0, 30)  # 23:30Z is 00:30 in Berlin
    assert (rows["at0010"]["value_datetime"], rows["at0010"]["value_precision"]) == (
        datetime(2020, 6, 1),
        "month",
    )
    assert rows["at0011"]["value_time"] == time(14, 30, 5)
    assert (rows["at0012"]["value_duration"], rows["at0012"]["value_number"]) == ("PT1H30M", 5400.0)
    assert rows["at0013"]["value_text"] == "A-17"
    assert (rows["at0014"]["value_lower"], rows["at0014"]["value_upper"], rows["at0014"]["value_units"]) == (
        1.0,
        5.0,
        "mg",
    )
    assert (rows["at0015"]["value_text"], rows["at0015"]["value_code"]) == (
        "https://img.example/1",
        "image/png",
    )
    assert (rows["at0016"]["value_text"], rows["at0016"]["value_code"]) == ("<b>x</b>", "text/html")
    assert (rows["at0017"]["rm_type"], rows["at0017"]["null_flavour"]) == (None, "253")
    assert q["path"] == (
        "/content[openEHR-EHR-SECTION.adhoc.v1]/items[openEHR-EHR-EVALUATION.test.v1]/data[at0001]"
        "/items[openEHR-EHR-CLUSTER.test.v1]/items[at0001]"
    )
    assert q["node_path"].startswith(
        "/content[openEHR-EHR-SECTION.adhoc.v1]#0/items[openEHR-EHR-EVALUATION.test.v1]#0"
    )
    assert (q["entry_type"], q["entry_archetype"], q["archetype"]) == (
        "EVALUATION",
        "openEHR-EHR-EVALUATION.test.v1",
        "openEHR-EHR-CLUSTER.test.v1",
    )
    assert (q["ehr_id"], q["composition_uid"], q["composition_version"]) == (
        EHR,
        "8849182c-82ad-4088-a07f-48ead4180515",
        "1",
    )


def test_each_event_keeps_its_own_time_and_width_and_naive_times_are_read_in_the_zone(tmp_path):
    doc = composition(
        [
            observation(
                BLOOD_PRESSURE,
                [
                    event("at0006", "2024-03-05T08:00:00", [element("at0004", quantity(130.0, "mm[Hg]"))]),
                    event(
                        "at0007",
                        "2024-03-05T09:00:00+00:00",
                        [element("at0004", quantity(125.0, "mm[Hg]"))],
                        width="PT1H",
                    ),
                ],
            )
        ],
        start="2024-03-05T08:00:00",
    )
    export = read_openehr([_write(tmp_path / EHR / "bp.json", doc)], time_zone="America/New_York")
    values = export.elements.filter(pl.col("is_element")).sort("value_number")
    assert values["event_type"].to_list() == ["INTERVAL_EVENT", "POINT_EVENT"]
    assert values["event_time"].to_list() == [datetime(2024, 3, 5, 4, 0), datetime(2024, 3, 5, 8, 0)]
    assert values["event_width"].to_list() == ["PT1H", None]
    assert values["context_start"].to_list() == [datetime(2024, 3, 5, 8, 0)] * 2
    assert values["node_path"].to_list()[0].endswith("/events[at0007]#1/data[at0003]/items[at0004]#0")


def test_aql_pages_and_folders_per_ehr_give_the_ehr_of_every_composition(tmp_path):
    page = {
        "q": "SELECT e/ehr_id/value, c FROM EHR e CONTAINS COMPOSITION c",
        "columns": [{"name": "#0", "path": "/ehr_id/value"}, {"name": "#1", "path": ""}],
        "rows": [
            [EHR, composition([blood_pressure(("2024-01-02T08:00:00Z", 120.0, 80.0))], uid="a1::cdr::1")],
            [
                OTHER_EHR,
                composition([blood_pressure(("2024-01-03T08:00:00Z", 118.0, 76.0))], uid="a2::cdr::2"),
            ],
        ],
    }
    pages = tmp_path / "aql"
    _write(pages / "page-1.json", page)
    folder = tmp_path / "ehrs"
    _write(
        folder / EHR / "visit.json",
        composition([blood_pressure(("2024-01-04T08:00:00Z", 121.0, 81.0))], uid="b1::cdr::1"),
    )
    _write(
        folder / EHR / "ehr_status.json",
        {"_type": "EHR_STATUS", "archetype_node_id": "openEHR-EHR-EHR_STATUS.generic.v1"},
    )
    export = read_openehr([pages, folder])
    compositions = export.compositions.sort("composition_uid")
    assert compositions.select("composition_uid", "composition_version", "ehr_id", "position").rows() == [
        ("a1", "1", EHR, 0),
        ("a2", "2", OTHER_EHR, 1),
        ("b1", "1", EHR, 0),
    ]
    assert export.inputs == {"COMPOSITION": 3, "EHR_STATUS": 1}
    assert export.ehrs.sort("ehr_id").select("ehr_id", "has_status").rows() == [
        (OTHER_EHR, False),
        (EHR, True),
    ]


def test_a_composition_without_uid_is_named_by_a_digest_of_its_whole_content(tmp_path):
    # the digest covers every attribute of the composition, also those the reader does not keep
    first = composition([blood_pressure(("2024-01-02T08:00:00Z", 120.0, 80.0))], uid=None)
    second = {**first, "composer": {"_type": "PARTY_IDENTIFIED", "name": "Dr B"}}
    page = {"columns": [{"path": "/ehr_id/value"}, {"path": "c"}], "rows": [[EHR, first], [EHR, second]]}
    _write(tmp_path / "aql" / "page.json", page)
    _write(tmp_path / "ehrs" / OTHER_EHR / "one.json", first)
    export = read_openehr([tmp_path / "aql", tmp_path / "ehrs"])

    def digest(ehr_id: str, document: dict) -> str:
        text = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
        return "sha1-" + hashlib.sha1(ehr_id.encode() + text).hexdigest()[:32]

    expected = [(digest(EHR, first), EHR), (digest(EHR, second), EHR), (digest(OTHER_EHR, first), OTHER_EHR)]
    assert export.compositions.select("composition_uid", "ehr_id").rows() == expected
    assert len({uid for uid, _ in expected}) == 3


def test_bad_input_is_quarantined_with_file_path_and_reason_and_the_rest_still_loads(tmp_path):
    folder = tmp_path / EHR
    (folder).mkdir()
    (folder / "broken.json").write_text('{"columns": [', encoding="utf-8")
    unknown = composition([blood_pressure(("2024-01-02T08:00:00Z", 120.0, 80.0))], uid="u1::cdr::1")
    unknown["content"][0]["data"]["events"][0]["data"]["items"][0]["value"]["_type"] = "DV_WHATEVER"
    _write(folder / "unknown.json", unknown)
    no_time = composition([blood_pressure(("2024-01-02T08:00:00Z", 120.0, 80.0))], uid="t1::cdr::1")
    del no_time["content"][0]["data"]["events"][0]["time"]
    _write(folder / "no_time.json", no_time)
    _write(
        folder / "good.json",
        composition([blood_pressure(("2024-01-02T08:00:00Z", 120.0, 80.0))], uid="g1::cdr::1"),
    )
    _write(
        folder / "page.json",
        {"columns": [{"path": "/ehr_id/value"}], "rows": [[EHR, {"not": "a composition"}]]},
    )
    export = read_openehr([folder])
    quarantine = export.quarantine.sort("source_file")
    assert quarantine.select("record_type", "record_id", "reason_code").rows() == [
        ("FILE", None, "malformed_json"),
        ("COMPOSITION", "t1", "missing_time"),
        ("COMPOSITION", None, "malformed"),
        ("COMPOSITION", "u1", "unknown_rm_type"),
    ]
    reasons = dict(zip(quarantine["record_id"].fill_null("-"), quarantine["reason"], strict=True))
    assert reasons["t1"] == (
        f"a required time is missing at /content[{BLOOD_PRESSURE}]#0/data[at0001]/events[at0006]#0/time"
    )
    assert "'DV_WHATEVER'" in reasons["u1"] and "/items[at0004]#0" in reasons["u1"]
    assert quarantine["source_file"].str.ends_with(".json").all()
    assert export.compositions["composition_uid"].to_list() == ["g1"]
    assert export.inputs == {"FILE": 1, "COMPOSITION": 4}
    quarantined = quarantine.filter(pl.col("record_type") == "COMPOSITION").height
    assert export.inputs["COMPOSITION"] == export.compositions.height + quarantined


def test_a_newer_version_of_a_composition_replaces_the_older_one_in_the_batch(tmp_path):
    _write(
        tmp_path / EHR / "v1.json",
        composition([blood_pressure(("2024-01-02T08:00:00Z", 120.0, 80.0))], uid="x::cdr::1"),
    )
    _write(
        tmp_path / EHR / "v2.json",
        composition([blood_pressure(("2024-01-02T08:00:00Z", 135.0, 85.0))], uid="x::cdr::2"),
    )
    export = read_openehr([tmp_path])
    assert export.compositions.select("composition_uid", "composition_version").rows() == [("x", "2")]
    assert export.superseded == 1
    systolic = export.elements.filter(pl.col("node_id") == "at0004")["value_number"].to_list()
    assert systolic == [135.0]


def test_every_shared_sample_composition_is_read(shared):
    folder = shared / "samples" / "openehr" / "canonical"
    export = read_openehr([folder], time_zone="Europe/Berlin")
    assert export.quarantine.height == 0
    # two sample files of one folder hold the same composition: without a uid, the same content in
    # the same EHR is the same composition, counted once and the copy as superseded
    assert (export.compositions.height, export.superseded, export.inputs["COMPOSITION"]) == (75, 1, 76)
    assert export.elements.filter(pl.col("is_element")).height > 1500
    bp = export.elements.filter(
        pl.col("template_id") == "Blutdruck", pl.col("is_element"), pl.col("value_units") == "mm[Hg]"
    )
    assert sorted(bp["value_number"].to_list()) == [1.0, 60.0]
    assert bp["event_time"].dt.date().to_list() == [date(2012, 9, 17)] * 2


@pytest.mark.parametrize(
    ("text", "zone", "value", "precision"),
    [
        ("2024-03-05T23:30:00Z", "Europe/Berlin", datetime(2024, 3, 6, 0, 30), "time"),
        ("2024-03-05T23:30:00+01:00", "UTC", datetime(2024, 3, 5, 22, 30), "time"),
        ("2024-03-05T23:30:00", "Europe/Berlin", datetime(2024, 3, 5, 23, 30), "time"),
        ("2024-07-01T08:00:00.250-04:00", "Europe/Berlin", datetime(2024, 7, 1, 14, 0, 0, 250000), "time"),
        ("20240305T101500+0100", "UTC", datetime(2024, 3, 5, 9, 15), "time"),
        ("2019-04-17", "Europe/Berlin", datetime(2019, 4, 17), "day"),
        ("2019-04", "Europe/Berlin", datetime(2019, 4, 1), "month"),
        ("2019", "Europe/Berlin", datetime(2019, 1, 1), "year"),
    ],
)
def test_times_follow_the_one_zone_rule_and_partial_dates_take_the_first_day(text, zone, value, precision):
    read = parse_time(text, configured_zone(zone))
    assert (read.value, read.precision) == (value, precision)


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC"])
def test_a_time_with_an_offset_read_in_utc_is_the_instant_astimezone_gives(zone):
    texts = [
        "2024-03-05T23:30:00+01:00",
        "2024-12-31T22:15:00.125-05:00",
        "2024-01-01T03:00:00+05:30",
        "2023-06-30T20:00:00-09:30",
        "2024-02-29T00:00:00Z",
        "20240305T101500+0100",
    ]
    for text in texts:
        instant = datetime.fromisoformat(text).astimezone(ZoneInfo(zone)).replace(tzinfo=None)
        assert parse_time(text, configured_zone(zone)) == (instant, "time"), text


def test_an_impossible_date_is_not_a_date_and_an_unknown_zone_is_a_user_error():
    assert parse_time("2024-02-30", configured_zone("UTC")) is None
    assert parse_time("yesterday", configured_zone("UTC")) is None
    with pytest.raises(PasserelleError, match="unknown time zone 'Mars/Olympus'"):
        configured_zone("Mars/Olympus")


def test_data_values_written_without_their_type_are_recognised_by_their_keys(tmp_path):
    items = [
        element("at0001", {"magnitude": 72.0, "units": "/min"}),
        element("at0002", {"magnitude": 3}),
        element("at0003", {"value": 2, "symbol": coded("two", "at0010", "local")}),
        element("at0004", {"value": True}),
        element("at0005", {"value": "plain text"}),
    ]
    doc = composition([evaluation("openEHR-EHR-EVALUATION.test.v1", items)])
    export = read_openehr([_write(tmp_path / EHR / "c.json", doc)])
    rows = export.elements.filter(pl.col("is_element")).sort("node_id")
    assert rows.select("rm_type", "value_number", "value_units", "value_boolean", "value_text").rows() == [
        ("DV_QUANTITY", 72.0, "/min", None, None),
        ("DV_COUNT", 3.0, None, None, None),
        ("DV_ORDINAL", 2.0, None, None, "two"),
        ("DV_BOOLEAN", None, None, True, None),
        ("DV_TEXT", None, None, None, "plain text"),
    ]


def test_a_name_or_width_that_is_not_an_object_is_quarantined_not_a_crash(tmp_path):
    """A DV_TEXT name or a DV_DURATION width given as a bare string: the composition is quarantined
    with the path of the attribute (it raised AttributeError out of the run before), also when a
    good composition of the same structure came first (read by shapes.py, not the general walk)."""
    readings = [blood_pressure(("2024-01-02T08:00:00Z", 120.0, 80.0))]
    good, bad_name, bad_width = (composition(readings, uid=f"{u}::cdr::1") for u in ("g1", "n1", "w1"))
    bad_name["content"][0]["data"]["events"][0]["data"]["items"][0]["name"] = "Systolic"
    bad_width["content"][0]["data"]["events"][0]["width"] = "PT1M"
    for first in ([], [good]):
        rows = [[EHR, c] for c in [*first, bad_name, bad_width]]
        _write(
            tmp_path / "aql" / "page.json",
            {"columns": [{"path": "/ehr_id/value"}, {"path": "c"}], "rows": rows},
        )
        export = read_openehr([tmp_path / "aql"])
        quarantine = export.quarantine.sort("record_id")
        assert quarantine.select("record_id", "reason_code").rows() == [
            ("n1", "malformed"),
            ("w1", "malformed"),
        ]
        reasons = quarantine["reason"].to_list()
        assert reasons[0].startswith("expected an object at /content[") and reasons[0].endswith("#0/name")
        assert reasons[1].endswith("/events[at0006]#0/width")
        assert export.compositions["composition_uid"].to_list() == (["g1"] if first else [])
