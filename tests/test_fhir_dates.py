"""FHIR date strings -> OMOP dates: partial dates, offsets, the local zone, impossible dates."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest

from pipelines.mapping.fhir.dates import parse

CASES = [
    # text, expected date, expected UTC datetime, precision, impossible
    ("2019", date(2019, 1, 1), None, "year", False),
    ("2019-03", date(2019, 3, 1), None, "month", False),
    ("2019-03-07", date(2019, 3, 7), None, "day", False),
    ("2019-03-07T23:30:00-02:00", date(2019, 3, 8), datetime(2019, 3, 8, 1, 30), "day", False),
    ("2015-02-07T13:28:17.239+02:00", date(2015, 2, 7), datetime(2015, 2, 7, 11, 28, 17), "day", False),
    ("2019-03-07T10:00:00Z", date(2019, 3, 7), datetime(2019, 3, 7, 10), "day", False),
    ("2019-02-29", None, None, "day", True),
    ("2019-13-01", None, None, "day", True),
    ("2019-03-07T24:10:00Z", date(2019, 3, 7), None, "day", True),
    ("yesterday", None, None, None, True),
    (None, None, None, None, False),
]


@pytest.mark.parametrize(("text", "day", "instant", "precision", "impossible"), CASES)
def test_fhir_dates(text, day, instant, precision, impossible) -> None:
    row = parse(pl.Series([text], dtype=pl.Utf8), time_zone="UTC").row(0, named=True)
    assert (row["date"], row["datetime"], row["precision"], row["impossible"]) == (
        day,
        instant,
        precision,
        impossible,
    )


def test_times_without_offset_are_read_in_the_configured_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASSERELLE_TIME_ZONE", "Europe/Paris")
    rows = parse(pl.Series(["2021-07-01T12:00:00", "2021-03-28T02:30:00", "2021-07-01T12:00:00Z"]))
    assert rows["datetime"].to_list() == [datetime(2021, 7, 1, 10), None, datetime(2021, 7, 1, 12)]
    # 02:30 on 28 March 2021 does not exist in Paris (clocks jump from 02:00 to 03:00)
    assert rows["impossible"].to_list() == [False, True, False]


def test_repeated_strings_each_get_their_own_value() -> None:
    # parse reads each distinct string once and puts the result back on every row that has it
    texts = [case[0] for case in CASES]
    column = texts + texts[::-1] + texts
    rows = parse(pl.Series(column, dtype=pl.Utf8), time_zone="UTC").rows()
    one_by_one = [parse(pl.Series([text], dtype=pl.Utf8), time_zone="UTC").row(0) for text in column]
    assert rows == one_by_one
    assert rows[0] == (date(2019, 1, 1), None, "year", False)
