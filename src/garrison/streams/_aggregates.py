"""Aggregates over one interval, with OPC UA Part 13's quality rules.

Theory of operation
-------------------
:func:`aggregate` is a pure function: the samples of one interval ``[start, end)`` (sorted by
:meth:`Sample.sort_key`), the sample just before ``start`` if one exists (the *prior*, Part 13's
simple bounding value, §3.1.7 / §5.4.2), and an :class:`Aggregation` naming the functions and the
Part 13 configuration (§4.2.1.2 AggregateConfigurationType). The window operator calls it on each
window it fires; anyone may call it on a batch.

Two families, as Part 13 §5.4.3.2 distinguishes them:

* **value based** (count, sum, mean, min, max, percentiles, first, last): computed from the Good
  raw values only (§5.4.3.5 Average, §5.4.3.10 Minimum, §5.4.3.25 Count: "Good raw values"); the
  status counts values: Good if ``good / total >= PercentDataGood``, else Bad if
  ``bad / total >= PercentDataBad`` (Uncertain counted as Bad when TreatUncertainAsBad), else
  Uncertain_DataSubNormal. Minimum and Maximum use their own rule (§5.4.3.10/11): Good unless
  Bad values exist or an Uncertain value lies beyond the Good extreme.
* **time based** (time_average, total, duration_*, percent_*): the interval is cut into regions,
  each starting at a sample and holding that sample's value and status until the next one
  (stepped interpolation, Part 13 §3.1.8 / §5.4.3.31 DurationGood). The region before the first
  sample takes the prior's value and status; without a prior it is *time with no data* and counts
  as Bad, as DurationGood says ("If no value exists, the first region is Bad"). time_average and
  total follow TimeAverage2/Total2 (§5.4.3.7/9): only usable (Good, or Uncertain when
  TreatUncertainAsBad is false) time is averaged; the status is the time-weighted form of the rule
  above. A Good result built from Uncertain time is downgraded to Uncertain_DataSubNormal: "the
  StatusCode of the value is still treated as Uncertain" (§5.4.3.2).

Result status bits: Calculated on computed values, Raw on first/last (and on min/max that sit at
the interval start), MultipleValues when the extreme occurs more than once, Partial when the
interval is incomplete: it starts before the first data of the key (no prior and a first sample
after ``start``, as in Part 13's start-of-data rule) or it was emitted before the watermark passed
its end (``early``). A Bad result carries no value. No Good value at all gives Bad_NoData.

Uncertainty (GUM, independent samples): sum ``sqrt(Σu²)``, mean ``sqrt(Σu²)/n``, time_average
``sqrt(Σ(dᵢuᵢ)²)/Σdᵢ`` with region durations dᵢ; propagated only when every sample used carries
one (an unknown uncertainty is not zero). Extremes, first and last carry their sample's own.
Percentiles and counts carry none.

Percentiles (p50, p95 ...) are not Part 13 aggregates; they follow Average's rules (Good values,
value-based status) and interpolate linearly between closest ranks (numpy's default).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Final

import msgspec

from garrison.core import InvalidInput

from ._sample import AggregateValue, Sample
from ._status import StatusCode

__all__ = ["AGGREGATES", "Aggregation", "aggregate", "window_status"]

AGGREGATES: Final = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "first",
    "last",
    "time_average",
    "total",
    "duration_good",
    "duration_bad",
    "duration_uncertain",
    "percent_good",
    "percent_bad",
    "percent_uncertain",
)
"""The aggregate functions an :class:`Aggregation` may name (percentiles are given apart)."""

_VALUE_BASED: Final = frozenset({"count", "sum", "mean", "min", "max", "first", "last"})
_TIME_BASED: Final = frozenset(AGGREGATES) - _VALUE_BASED

_GOOD: Final = StatusCode.GOOD
_BAD: Final = StatusCode.BAD
_NO_DATA: Final = StatusCode.BAD_NO_DATA
_SUBNORMAL: Final = StatusCode.UNCERTAIN_DATA_SUB_NORMAL
_CALC: Final = StatusCode.CALCULATED
_PARTIAL: Final = StatusCode.PARTIAL
_MULTI: Final = StatusCode.MULTIPLE_VALUES
_DATAVALUE: Final = 0x400  # InfoType = DataValue: the historian bits are meaningful


class Aggregation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which aggregates a window computes, and Part 13's configuration for them."""

    functions: tuple[str, ...] = ("count", "mean", "min", "max", "last")
    """Names from :data:`AGGREGATES`, in the order results list them."""
    percentiles: tuple[float, ...] = ()
    """Percentiles (0 < p <= 100) of the Good values, reported as ``p50``, ``p99.9`` ..."""
    treat_uncertain_as_bad: bool = True
    """Part 13 TreatUncertainAsBad (its default is True): Uncertain samples count as Bad in
    the status calculation and are not used by the time-based aggregates."""
    percent_data_bad: int = 100
    """Part 13 PercentDataBad: at least this percent Bad (by count or time) makes a result Bad."""
    percent_data_good: int = 100
    """Part 13 PercentDataGood: at least this percent Good makes a result Good; in between, the
    result is Uncertain_DataSubNormal."""

    def __post_init__(self) -> None:
        unknown = [f for f in self.functions if f not in AGGREGATES]
        if unknown:
            raise InvalidInput(
                f"Aggregation.functions: unknown aggregate {unknown[0]!r}; "
                f"expected some of {', '.join(AGGREGATES)}",
                [{"loc": ["functions"], "msg": f"unknown aggregate {unknown[0]!r}"}],
            )
        if len(set(self.functions)) != len(self.functions):
            raise InvalidInput("Aggregation.functions: an aggregate is named twice")
        for p in self.percentiles:
            if not 0 < p <= 100:
                raise InvalidInput(
                    f"Aggregation.percentiles: {p} is not in (0, 100]",
                    [{"loc": ["percentiles"], "msg": f"{p} is not in (0, 100]"}],
                )
        for name in ("percent_data_bad", "percent_data_good"):
            value = getattr(self, name)
            if not 0 <= value <= 100:  # Part 13 §4.2.1.2: Bad_AggregateInvalidInputs above 100
                raise InvalidInput(
                    f"Aggregation.{name}: {value} is not a percentage (0..100)",
                    [{"loc": [name], "msg": "must be within 0..100"}],
                )
        if not self.functions and not self.percentiles:
            raise InvalidInput("Aggregation: name at least one aggregate or percentile")

    @property
    def names(self) -> tuple[str, ...]:
        """The keys of a result: the functions, then ``p<percentile>`` for each percentile."""
        return self.functions + tuple(_percentile_name(p) for p in self.percentiles)

    @property
    def time_based(self) -> bool:
        """Whether any aggregate needs the time regions (and hence the prior sample)."""
        return any(f in _TIME_BASED for f in self.functions)


def _percentile_name(p: float) -> str:
    return f"p{p:g}"


def _counted_status(good: int, bad: int, total: int, agg: Aggregation) -> int:
    # Part 13 §5.4.3.2, with integer weights (counts or milliseconds) so the thresholds are exact.
    # Good is tested first: when both thresholds hold (e.g. 50/50), PercentDataGood wins.
    if total <= 0:
        return _NO_DATA
    if good * 100 >= agg.percent_data_good * total:
        return _GOOD
    if bad * 100 >= agg.percent_data_bad * total:
        return _BAD
    return _SUBNORMAL


def window_status(samples: Sequence[Sample], agg: Aggregation, *, partial: bool = False) -> int:
    """The quality of a window as a whole: Part 13's value-based status over all its samples,
    with the Partial bit when ``partial``. Bad_NoData for an empty window."""
    good = unc = bad = 0
    for s in samples:
        sev = (s.status >> 30) & 3
        if sev == 0:
            good += 1
        elif sev == 1:
            unc += 1
        else:
            bad += 1
    total = good + unc + bad
    status = _counted_status(good, bad + (unc if agg.treat_uncertain_as_bad else 0), total, agg)
    if status == _NO_DATA:
        return status
    return status | (_PARTIAL | _DATAVALUE if partial else 0)


def aggregate(
    agg: Aggregation,
    samples: Sequence[Sample],
    start: int,
    end: int,
    prior: Sample | None = None,
    *,
    early: bool = False,
) -> dict[str, AggregateValue]:
    """Compute ``agg`` over the samples of ``[start, end)``.

    ``samples`` must lie in the interval; they are sorted here when they are not already.
    ``prior`` is the last sample before ``start`` (any quality) if one exists: it bounds the
    time-based aggregates and tells whether the interval starts before the first data (Partial).
    ``early`` marks a result emitted before the interval was complete (Partial).
    """
    if end <= start:
        raise InvalidInput(f"aggregate: empty interval [{start}, {end})")
    ordered = list(samples)
    if any(a.sort_key() > b.sort_key() for a, b in itertools.pairwise(ordered)):
        ordered.sort(key=Sample.sort_key)
    for s in ordered:
        if not start <= s.ts < end:
            raise InvalidInput(f"aggregate: sample at {s.ts} is outside [{start}, {end})")
    return evaluate(agg, ordered, start, end, prior, early)[0]


def evaluate(
    agg: Aggregation,
    samples: Sequence[Sample],
    start: int,
    end: int,
    prior: Sample | None,
    early: bool,
) -> tuple[dict[str, AggregateValue], int]:
    # The window operator's entry: samples sorted, inside [start, end). Returns the aggregates
    # and the window's overall status. One pass for the value-based statistics, one for the
    # time regions when needed.
    partial = early or (prior is None and (not samples or samples[0].ts > start))
    pbits = _PARTIAL if partial else 0
    tuab = agg.treat_uncertain_as_bad
    fns = agg.functions

    n_good = n_unc = n_bad = 0
    gsum = 0.0
    gu2 = 0.0
    u_known = True
    gflags = 0
    gmin: Sample | None = None
    gmax: Sample | None = None
    min_mult = max_mult = 0
    umin = math.inf
    umax = -math.inf
    goods: list[float] | None = [] if agg.percentiles else None
    for s in samples:
        sev = (s.status >> 30) & 3
        if sev == 0:
            v = s.value
            n_good += 1
            gsum += v
            if s.u is None:
                u_known = False
            else:
                gu2 += s.u * s.u
            gflags |= s.flags
            if gmin is None or v < gmin.value:
                gmin, min_mult = s, 1
            elif v == gmin.value:
                min_mult += 1
            if gmax is None or v > gmax.value:
                gmax, max_mult = s, 1
            elif v == gmax.value:
                max_mult += 1
            if goods is not None:
                goods.append(v)
        elif sev == 1:
            n_unc += 1
            umin = min(umin, s.value)
            umax = max(umax, s.value)
        else:
            n_bad += 1
    total = n_good + n_unc + n_bad
    bad_weight = n_bad + (n_unc if tuab else 0)
    counted = _counted_status(n_good, bad_weight, total, agg)

    out: dict[str, AggregateValue] = {}

    def calculated(value: float | None, status: int, u: float | None = None) -> AggregateValue:
        if status == _NO_DATA:
            return AggregateValue(None, _NO_DATA, start)
        if status == _BAD:  # a Bad result carries no value (and is not "calculated")
            return AggregateValue(None, _BAD | (pbits | _DATAVALUE if pbits else 0), start)
        return AggregateValue(value, status | _CALC | pbits | _DATAVALUE, start, u, gflags)

    for name in fns:
        if name == "count":
            out[name] = calculated(float(n_good), counted)
        elif name in ("sum", "mean"):
            if n_good == 0:
                out[name] = AggregateValue(None, _NO_DATA, start)
                continue
            u = math.sqrt(gu2) if u_known else None
            if name == "sum":
                out[name] = calculated(gsum, counted, u)
            else:
                out[name] = calculated(gsum / n_good, counted, None if u is None else u / n_good)
        elif name == "min":
            out[name] = _extreme(gmin, min_mult, umin < (gmin.value if gmin else 0), bad_weight,
                                 start, pbits)  # fmt: skip
        elif name == "max":
            out[name] = _extreme(gmax, max_mult, umax > (gmax.value if gmax else 0), bad_weight,
                                 start, pbits)  # fmt: skip
        elif name == "first":
            out[name] = _raw(samples[0] if samples else None, start, pbits)
        elif name == "last":
            out[name] = _raw(samples[-1] if samples else None, start, pbits)
    if agg.percentiles:
        assert goods is not None
        goods.sort()
        for p in agg.percentiles:
            pname = _percentile_name(p)
            if not goods:
                out[pname] = AggregateValue(None, _NO_DATA, start)
            else:
                out[pname] = calculated(_percentile(goods, p), counted)
    overall = counted if counted == _NO_DATA else counted | (pbits | _DATAVALUE if pbits else 0)
    if not agg.time_based:  # already in the order of agg.names
        return out, overall
    out.update(_time_based(agg, samples, start, end, prior, pbits))
    return {name: out[name] for name in agg.names}, overall


def _extreme(
    best: Sample | None, mult: int, uncertain_beyond: bool, bad_weight: int, start: int, pbits: int
) -> AggregateValue:
    # Part 13 §5.4.3.10/11: the extreme Good raw value; Good unless Bad values exist or an
    # Uncertain value lies beyond it; Raw only when it sits on the interval start.
    if best is None:
        return AggregateValue(None, _NO_DATA, start)
    if bad_weight or uncertain_beyond:
        status = _SUBNORMAL | _CALC
    else:
        status = _GOOD | (StatusCode.RAW if best.ts == start else _CALC)
    if mult > 1:
        status |= _MULTI
    return AggregateValue(best.value, status | pbits | _DATAVALUE, best.ts, best.u, best.flags)


def _raw(s: Sample | None, start: int, pbits: int) -> AggregateValue:
    # Part 13 §5.4.3.26/27 Start/End: the raw sample with its own status, marked Raw.
    if s is None:
        return AggregateValue(None, _NO_DATA, start)
    status = StatusCode.with_historian_bits(s.status, StatusCode.RAW | pbits)
    value = None if (s.status >> 30) & 3 >= 2 else s.value
    return AggregateValue(value, status, s.ts, s.u, s.flags)


def _percentile(ordered: list[float], p: float) -> float:
    pos = (len(ordered) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _time_based(
    agg: Aggregation,
    samples: Sequence[Sample],
    start: int,
    end: int,
    prior: Sample | None,
    pbits: int,
) -> dict[str, AggregateValue]:
    tuab = agg.treat_uncertain_as_bad
    d_good = d_unc = d_bad = 0
    used = 0  # milliseconds of usable (averaged) time
    area = 0.0  # value x milliseconds
    wu2 = 0.0
    u_known = True
    flags = 0
    used_uncertain = False

    def region(s: Sample | None, d: int) -> None:
        nonlocal d_good, d_unc, d_bad, used, area, wu2, u_known, flags, used_uncertain
        if d <= 0:
            return
        sev = 2 if s is None else (s.status >> 30) & 3  # no data counts as Bad
        if sev == 0:
            d_good += d
        elif sev == 1:
            d_unc += d
        else:
            d_bad += d
        if s is not None and (sev == 0 or (sev == 1 and not tuab)):
            used += d
            area += s.value * d
            flags |= s.flags
            used_uncertain |= sev == 1
            if s.u is None:
                u_known = False
            else:
                wu2 += (s.u * d) ** 2

    current = prior
    t = start
    for s in samples:
        region(current, s.ts - t)
        current = s
        t = max(t, s.ts)
    region(current, end - t)

    width = end - start
    good_time = d_good + (0 if tuab else d_unc)
    bad_time = d_bad + (d_unc if tuab else 0)
    status = _counted_status(good_time, bad_time, width, agg)
    if status == _GOOD and used_uncertain:
        status = _SUBNORMAL
    calc = _CALC | pbits | _DATAVALUE

    out: dict[str, AggregateValue] = {}
    for name in agg.functions:
        if name in ("time_average", "total"):
            if used == 0:
                out[name] = AggregateValue(None, _NO_DATA, start)
            elif status == _BAD:
                out[name] = AggregateValue(None, _BAD | (pbits | _DATAVALUE if pbits else 0), start)
            elif name == "time_average":
                u = math.sqrt(wu2) / used if u_known else None
                out[name] = AggregateValue(area / used, status | calc, start, u, flags)
            else:  # Total2: the integral over usable time, in value x seconds
                u = math.sqrt(wu2) / 1000.0 if u_known else None
                out[name] = AggregateValue(area / 1000.0, status | calc, start, u, flags)
        elif name.startswith(("duration_", "percent_")):
            kind = name.partition("_")[2]
            ms = good_time if kind == "good" else bad_time if kind == "bad" else d_unc
            value = float(ms) if name.startswith("duration_") else ms * 100.0 / width
            out[name] = AggregateValue(value, _GOOD | calc, start)  # Part 13: always Good
    return out
