"""Aggregates against a straightforward reference implementation of the same Part 13 rules.

The reference is written independently and the slow way: statuses from exact fractions, the time
regions by walking the interval one millisecond at a time, percentiles from :mod:`statistics`.
"""

from __future__ import annotations

import math
import statistics
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import InvalidInput
from garrison.streams import (
    AGGREGATES,
    AggregateValue,
    Aggregation,
    Provenance,
    Sample,
    StatusCode,
    aggregate,
    window_status,
)

STATUSES = [
    StatusCode.GOOD,
    StatusCode.GOOD_LOCAL_OVERRIDE,
    StatusCode.UNCERTAIN_LAST_USABLE_VALUE,
    StatusCode.UNCERTAIN_SENSOR_NOT_ACCURATE,
    StatusCode.BAD_SENSOR_FAILURE,
    StatusCode.BAD_NO_COMMUNICATION,
]
CALC, PARTIAL, MULTI = StatusCode.CALCULATED, StatusCode.PARTIAL, StatusCode.MULTIPLE_VALUES
DV = 0x400


def sev(s: Sample) -> int:
    return min((s.status >> 30) & 3, 2)


def counted(good: int, bad: int, total: int, agg: Aggregation) -> int:
    if total == 0:
        return StatusCode.BAD_NO_DATA
    if Fraction(good, total) * 100 >= agg.percent_data_good:
        return StatusCode.GOOD
    if Fraction(bad, total) * 100 >= agg.percent_data_bad:
        return StatusCode.BAD
    return StatusCode.UNCERTAIN_DATA_SUB_NORMAL


def result(
    value: float | None, status: int, ts: int, partial: bool, **kw: object
) -> AggregateValue:
    if status == StatusCode.BAD_NO_DATA:
        return AggregateValue(None, status, ts)
    if status == StatusCode.BAD:
        return AggregateValue(None, status | (PARTIAL | DV if partial else 0), ts)
    return AggregateValue(value, status | CALC | (PARTIAL if partial else 0) | DV, ts, **kw)  # type: ignore[arg-type]


def reference(
    agg: Aggregation, samples: list[Sample], start: int, end: int, prior: Sample | None, early: bool
) -> dict[str, AggregateValue]:
    samples = sorted(samples, key=Sample.sort_key)
    partial = early or (prior is None and (not samples or samples[0].ts > start))
    tuab = agg.treat_uncertain_as_bad
    goods = [s for s in samples if sev(s) == 0]
    uncs = [s for s in samples if sev(s) == 1]
    bads = [s for s in samples if sev(s) == 2]
    bad_weight = len(bads) + (len(uncs) if tuab else 0)
    status = counted(len(goods), bad_weight, len(samples), agg)
    flags = 0
    for s in goods:
        flags |= s.flags
    us = [s.u for s in goods if s.u is not None]
    u_sum = math.sqrt(sum(u * u for u in us)) if goods and len(us) == len(goods) else None
    out: dict[str, AggregateValue] = {}
    for name in agg.functions:
        if name == "count":
            out[name] = result(float(len(goods)), status, start, partial, flags=flags)
        elif name in ("sum", "mean"):
            if not goods:
                out[name] = AggregateValue(None, StatusCode.BAD_NO_DATA, start)
            elif name == "sum":
                out[name] = result(
                    sum(s.value for s in goods), status, start, partial, u=u_sum, flags=flags
                )
            else:
                u = None if u_sum is None else u_sum / len(goods)
                out[name] = result(
                    sum(s.value for s in goods) / len(goods),
                    status,
                    start,
                    partial,
                    u=u,
                    flags=flags,
                )
        elif name in ("min", "max"):
            if not goods:
                out[name] = AggregateValue(None, StatusCode.BAD_NO_DATA, start)
                continue
            pick = min if name == "min" else max
            best_value = pick(s.value for s in goods)
            best = [s for s in goods if s.value == best_value]
            beyond = any(
                (u.value < best_value) if name == "min" else (u.value > best_value) for u in uncs
            )
            if bad_weight or beyond:
                code = StatusCode.UNCERTAIN_DATA_SUB_NORMAL | CALC
            else:
                code = StatusCode.GOOD | (StatusCode.RAW if best[0].ts == start else CALC)
            code |= (MULTI if len(best) > 1 else 0) | (PARTIAL if partial else 0) | DV
            out[name] = AggregateValue(best_value, code, best[0].ts, best[0].u, best[0].flags)
        elif name in ("first", "last"):
            if not samples:
                out[name] = AggregateValue(None, StatusCode.BAD_NO_DATA, start)
                continue
            s = samples[0] if name == "first" else samples[-1]
            code = (s.status & ~0x1F) | (PARTIAL if partial else 0) | DV
            out[name] = AggregateValue(None if sev(s) == 2 else s.value, code, s.ts, s.u, s.flags)
    for p in agg.percentiles:
        key = f"p{p:g}"
        values = sorted(s.value for s in goods)
        if not values:
            out[key] = AggregateValue(None, StatusCode.BAD_NO_DATA, start)
        elif len(values) == 1 or p == 100:
            out[key] = result(
                values[-1] if p == 100 else values[0], status, start, partial, flags=flags
            )
        else:
            q = statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]
            out[key] = result(q, status, start, partial, flags=flags)
    if agg.time_based:
        out.update(reference_time_based(agg, samples, start, end, prior, partial))
    return {name: out[name] for name in agg.names}


def reference_time_based(
    agg: Aggregation,
    samples: list[Sample],
    start: int,
    end: int,
    prior: Sample | None,
    partial: bool,
) -> dict[str, AggregateValue]:
    tuab = agg.treat_uncertain_as_bad
    ms = {"good": 0, "unc": 0, "bad": 0}
    area = 0.0
    used = 0
    per_sample: dict[int, int] = {}  # id(sample) -> usable milliseconds it holds
    holders: dict[int, Sample] = {}
    used_unc = False
    for t in range(start, end):  # one millisecond at a time
        holder = prior
        for s in samples:
            if s.ts <= t:
                holder = s
        if holder is None:
            ms["bad"] += 1
            continue
        level = sev(holder)
        ms[("good", "unc", "bad")[level]] += 1
        if level == 0 or (level == 1 and not tuab):
            used += 1
            area += holder.value
            used_unc |= level == 1
            per_sample[id(holder)] = per_sample.get(id(holder), 0) + 1
            holders[id(holder)] = holder
    width = end - start
    good_t = ms["good"] + (0 if tuab else ms["unc"])
    bad_t = ms["bad"] + (ms["unc"] if tuab else 0)
    status = counted(good_t, bad_t, width, agg)
    if status == StatusCode.GOOD and used_unc:
        status = StatusCode.UNCERTAIN_DATA_SUB_NORMAL
    flags = 0
    for h in holders.values():
        flags |= h.flags
    known = all(h.u is not None for h in holders.values())
    wu2 = sum(((h.u or 0.0) * per_sample[i]) ** 2 for i, h in holders.items()) if known else 0.0
    out: dict[str, AggregateValue] = {}
    for name in agg.functions:
        if name in ("time_average", "total"):
            if used == 0:
                out[name] = AggregateValue(None, StatusCode.BAD_NO_DATA, start)
            elif name == "time_average":
                u = math.sqrt(wu2) / used if known else None
                out[name] = result(area / used, status, start, partial, u=u, flags=flags)
            else:
                u = math.sqrt(wu2) / 1000 if known else None
                out[name] = result(area / 1000, status, start, partial, u=u, flags=flags)
        elif name.startswith(("duration_", "percent_")):
            kind = name.partition("_")[2]
            d = good_t if kind == "good" else bad_t if kind == "bad" else ms["unc"]
            value = float(d) if name.startswith("duration_") else d * 100 / width
            out[name] = AggregateValue(
                value, StatusCode.GOOD | CALC | (PARTIAL if partial else 0) | DV, start
            )
    return out


def same(a: AggregateValue, b: AggregateValue) -> bool:
    def close(x: float | None, y: float | None) -> bool:
        if x is None or y is None:
            return x is y
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-9)

    return (
        (a.status, a.ts, a.flags) == (b.status, b.ts, b.flags)
        and close(a.value, b.value)
        and close(a.u, b.u)
    )


samples_st = st.builds(
    Sample,
    ts=st.integers(0, 99),
    value=st.integers(-20, 20).map(float),
    status=st.sampled_from(STATUSES),
    u=st.none() | st.integers(0, 3).map(float),
    flags=st.sampled_from(
        [0, Provenance.SUBSTITUTED, Provenance.INTERPOLATED | Provenance.ANNOTATED]
    ),
)
aggregations = st.builds(
    Aggregation,
    functions=st.lists(st.sampled_from(AGGREGATES), min_size=1, max_size=6, unique=True).map(tuple),
    percentiles=st.lists(st.integers(1, 100).map(float), max_size=2, unique=True).map(tuple),
    treat_uncertain_as_bad=st.booleans(),
    percent_data_bad=st.sampled_from([0, 30, 50, 100]),
    percent_data_good=st.sampled_from([0, 50, 70, 100]),
)


@settings(max_examples=300, deadline=None)
@given(
    agg=aggregations,
    samples=st.lists(samples_st, max_size=12),
    prior=st.none() | samples_st.map(lambda s: Sample(-5, s.value, s.status, s.u, s.flags)),
    early=st.booleans(),
)
def test_aggregates_match_the_reference(
    agg: Aggregation, samples: list[Sample], prior: Sample | None, early: bool
) -> None:
    got = aggregate(agg, samples, 0, 100, prior, early=early)
    want = reference(agg, samples, 0, 100, prior, early)
    assert list(got) == list(want)
    for name in got:
        assert same(got[name], want[name]), (name, got[name], want[name])


@settings(max_examples=100, deadline=None)
@given(samples=st.lists(samples_st, min_size=1, max_size=12), agg=aggregations)
def test_results_do_not_depend_on_arrival_order(samples: list[Sample], agg: Aggregation) -> None:
    assert aggregate(agg, samples, 0, 100) == aggregate(agg, list(reversed(samples)), 0, 100)


def test_mean_propagates_uncertainty_of_independent_samples() -> None:
    samples = [Sample(0, 10.0, u=0.3), Sample(1, 20.0, u=0.4)]
    got = aggregate(Aggregation(("mean", "sum")), samples, 0, 10)
    assert got["sum"].u == pytest.approx(0.5)
    assert got["mean"].u == pytest.approx(0.25)
    # one sample without an uncertainty: the result's is unknown, not smaller
    got = aggregate(Aggregation(("mean",)), [*samples, Sample(2, 5.0)], 0, 10)
    assert got["mean"].u is None


def test_bad_samples_are_left_out_and_lower_the_status() -> None:
    samples = [Sample(0, 10.0), Sample(1, 1e9, StatusCode.BAD_SENSOR_FAILURE), Sample(2, 20.0)]
    got = aggregate(Aggregation(("mean",), percent_data_good=60), samples, 0, 10)
    assert got["mean"].value == 15.0
    assert StatusCode.describe(got["mean"].status) == "Good, Calculated"
    got = aggregate(Aggregation(("mean",)), samples, 0, 10)  # 100 % Good required
    assert StatusCode.describe(got["mean"].status) == "Uncertain_DataSubNormal, Calculated"


def test_time_with_no_data_counts_as_bad_and_marks_partial() -> None:
    got = aggregate(Aggregation(("percent_good", "time_average")), [Sample(50, 4.0)], 0, 100)
    assert got["percent_good"].value == 50.0
    assert got["time_average"].value == 4.0
    # half the time has no data: neither 100 % Good nor 100 % Bad -> Uncertain; no prior -> Partial
    assert StatusCode.describe(got["time_average"].status) == (
        "Uncertain_DataSubNormal, Calculated, Partial"
    )
    bad = aggregate(Aggregation(("time_average",), percent_data_bad=50), [Sample(50, 4.0)], 0, 100)
    assert (bad["time_average"].value, StatusCode.describe(bad["time_average"].status)) == (
        None,
        "Bad, Partial",
    )


def test_window_status_summarises_the_quality_mix() -> None:
    agg = Aggregation(percent_data_good=80, percent_data_bad=50)
    good = [Sample(i, 1.0) for i in range(4)]
    assert window_status(good, agg) == StatusCode.GOOD
    assert window_status([*good, Sample(9, 0, StatusCode.BAD)], agg) == StatusCode.GOOD
    two_bad = [*good[:2], Sample(8, 0, StatusCode.BAD), Sample(9, 0, StatusCode.BAD)]
    assert window_status(two_bad, agg) == StatusCode.BAD
    assert window_status([], agg) == StatusCode.BAD_NO_DATA


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"functions": ("median",)}, "unknown aggregate 'median'"),
        ({"percentiles": (0.0,)}, "not in (0, 100]"),
        ({"percent_data_bad": 101}, "percent_data_bad"),
        ({"functions": (), "percentiles": ()}, "at least one"),
    ],
)
def test_bad_aggregation_config_is_refused_with_a_clear_message(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace("]", r"\]")):
        Aggregation(**kwargs)  # type: ignore[arg-type]


def test_samples_outside_the_interval_are_refused() -> None:
    with pytest.raises(InvalidInput, match="outside"):
        aggregate(Aggregation(), [Sample(10, 1.0)], 0, 10)
