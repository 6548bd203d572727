"""OPC UA Part 13 examples as test cases.

Sources (read through the project's reference search; cited, not copied):

* Part 13 v1.04 Annex A.1.1 "Historian 1" data set (reference.opcfoundation.org/Core/Part13/v104/
  docs/A.1.1) with its configuration: TreatUncertainAsBad = False, PercentDataBad = 100,
  PercentDataGood = 100. The 12:00:00 Bad_NoData row is the historian's "point created"
  placeholder, which servers skip (UA-.NETStandard AggregateCalculator.QueueRawValue ignores
  Bad_NoData placeholders); it is not a sample here.
* Annex tables for Historian 1: Count (16 s), Average (5 s; rows as mirrored in node-opcua's
  packages/node-opcua-aggregates/test/test_aggregates.ts), MinimumActualTime A.10 and
  MaximumActualTime A.11 (16 s), DurationGood A.29 (16 s).
* OPC Foundation UA-.NETStandard Tests/Opc.Ua.Server.Tests/AggregateCttRegressionTests.cs, which
  states Part 13 oracles for PercentGood/PercentBad under both TreatUncertainAsBad settings and
  for Start/End.

Each interval is computed the way a window is: its samples, the sample before it as the prior,
and Partial when the historian's end of data falls strictly inside it (Part 13's end-of-data
rule; a stream marks the same thing with ``early``).

Rows not used, and why: DurationGood 12:00:32 and 12:01:04 (the v1.04 table says 0 where the
normative text of §5.4.3.31 gives 8000 and 16000: the region from the Good bound at 12:00:30 and
the Uncertain region with TreatUncertainAsBad = False are Good; v1.04 carries an errata notice)
and 12:01:20 (10001: the table's artefact for time after the end of data). TimeAverage/
TimeAverage2 (A.4/A.5) use sloped interpolation to bounds outside the interval, which a window
operator does not have when it fires; garrison's time_average is stepped (see docs/streams.md).
"""

from __future__ import annotations

import pytest

from garrison.streams import AggregateValue, Aggregation, Sample, StatusCode, aggregate

S = 1000  # ms per second
G, U, B = StatusCode.GOOD, StatusCode.UNCERTAIN, StatusCode.BAD
HISTORIAN1 = [
    Sample(10 * S, 10, G),
    Sample(20 * S, 20, G),
    Sample(30 * S, 30, G),
    Sample(40 * S, 40, B),
    Sample(50 * S, 50, G),
    Sample(60 * S, 60, G),
    Sample(70 * S, 70, U),
    Sample(80 * S, 80, G),
    Sample(90 * S, 90, G),
]
END_OF_DATA = 90 * S
H1_CONFIG = {"treat_uncertain_as_bad": False, "percent_data_bad": 100, "percent_data_good": 100}

NO_DATA = StatusCode.BAD_NO_DATA


def processed(name: str, interval_s: int, **config: object) -> list[AggregateValue]:
    """Part 11 ReadProcessed over 12:00:00-12:01:40 in ``interval_s`` steps."""
    agg = Aggregation((name,), **{**H1_CONFIG, **config})  # type: ignore[arg-type]
    out = []
    for start in range(0, 100 * S, interval_s * S):
        end = min(start + interval_s * S, 100 * S)
        inside = [s for s in HISTORIAN1 if start <= s.ts < end]
        before = [s for s in HISTORIAN1 if s.ts < start]
        early = start < END_OF_DATA < end
        out.append(
            aggregate(agg, inside, start, end, before[-1] if before else None, early=early)[name]
        )
    return out


def shape(v: AggregateValue) -> tuple[float | None, str]:
    """Value and status as the annex writes them ("Good, Calculated, Partial")."""
    return v.value, StatusCode.describe(v.status)


def test_count_historian1_16s() -> None:
    assert [shape(v) for v in processed("count", 16)] == [
        (1, "Good, Calculated, Partial"),
        (2, "Good, Calculated"),
        (None, "Bad"),
        (2, "Good, Calculated"),
        (0, "Uncertain_DataSubNormal, Calculated"),
        (2, "Good, Calculated, Partial"),
        (None, "Bad_NoData"),
    ]


def test_average_historian1_5s() -> None:
    good_at = {10, 20, 30, 50, 60, 80, 90}  # the Bad 40 and Uncertain 70 give Bad_NoData
    expected = [
        (float(t), "Good, Calculated") if t in good_at else (None, "Bad_NoData")
        for t in range(0, 100, 5)
    ]
    assert [shape(v) for v in processed("mean", 5)] == expected


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        (  # A.10 MinimumActualTime
            "min",
            [(10, 10, True), (20, 20, False), None, (50, 50, False), None, (80, 80, True), None],
        ),
        (  # A.11 MaximumActualTime
            "max",
            [(10, 10, True), (30, 30, False), None, (60, 60, False), None, (90, 90, True), None],
        ),
    ],
)
def test_min_max_actual_time_historian1_16s(
    name: str, rows: list[tuple[int, int, bool] | None]
) -> None:
    for got, row in zip(processed(name, 16), rows, strict=True):
        if row is None:
            assert (got.value, got.status) == (None, NO_DATA)
            continue
        at, value, partial = row
        assert got.value == value
        assert got.ts == at * S
        assert StatusCode.code_bits(got.status) == StatusCode.GOOD
        assert StatusCode.is_partial(got.status) is partial


def test_duration_good_historian1_16s_rows_consistent_with_the_normative_text() -> None:
    got = processed("duration_good", 16)
    assert shape(got[0]) == (6000.0, "Good, Calculated, Partial")
    assert shape(got[1]) == (16000.0, "Good, Calculated")
    assert shape(got[3]) == (14000.0, "Good, Calculated")


@pytest.mark.parametrize(
    ("name", "uncertain_as_bad", "expected"),
    [
        ("percent_good", False, 50.0),
        ("percent_bad", False, 50.0),
        ("percent_good", True, 25.0),
        ("percent_bad", True, 75.0),
    ],
)
def test_percent_good_bad_follow_treat_uncertain_as_bad(
    name: str, uncertain_as_bad: bool, expected: float
) -> None:
    samples = [Sample(0, 1, G), Sample(5 * S, 1, U), Sample(10 * S, 1, B), Sample(15 * S, 1, B)]
    agg = Aggregation((name,), treat_uncertain_as_bad=uncertain_as_bad)
    got = aggregate(agg, samples, 0, 20 * S)[name]
    assert shape(got) == (expected, "Good, Calculated")


def test_start_and_end_return_the_raw_samples() -> None:
    samples = [Sample(0, 0.0), Sample(5 * S, 5.0)]
    got = aggregate(Aggregation(("first", "last")), samples, 0, 10 * S)
    assert (got["first"].value, got["first"].ts, StatusCode.describe(got["first"].status)) == (
        0.0,
        0,
        "Good",
    )
    assert (got["last"].value, got["last"].ts, StatusCode.describe(got["last"].status)) == (
        5.0,
        5 * S,
        "Good",
    )
