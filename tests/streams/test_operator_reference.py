"""The window operator against recomputation from scratch (hypothesis, brute force).

Random keyed samples arrive out of order, some late, some Bad or Uncertain. Replaying the same
arrival sequence, the reference decides from the rules alone which events each window accepts
(a window takes an event while the watermark at its arrival is before ``end + lateness``), then
recomputes every window from its final event set with :func:`aggregate`. The operator's last
revision of each window must equal that, field for field; revisions must count 0, 1, 2 ...; every
rejected event must come out as TooLate; every window must close exactly once. Sessions use the
operator's acceptance decisions (checked for plausibility) and recompute the sessions from the
accepted events.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.streams import (
    Aggregation,
    BoundedOutOfOrderness,
    Hopping,
    Sample,
    Session,
    StatusCode,
    TooLate,
    Tumbling,
    Window,
    WindowClosed,
    WindowOperator,
    WindowResult,
    WindowRetracted,
    aggregate,
)

AGG = Aggregation(
    ("count", "sum", "mean", "min", "max", "first", "last", "time_average", "percent_good"),
    percentiles=(50.0,),
    treat_uncertain_as_bad=False,
    percent_data_good=80,
    percent_data_bad=50,
)
STATUSES = [
    StatusCode.GOOD,
    StatusCode.GOOD,
    StatusCode.UNCERTAIN_LAST_USABLE_VALUE,
    StatusCode.BAD_SENSOR_FAILURE,
]

events_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.builds(
            Sample,
            ts=st.integers(0, 120),
            value=st.integers(-9, 9).map(float),
            status=st.sampled_from(STATUSES),
            u=st.none() | st.just(1.0),
        ),
    ),
    max_size=40,
)


def run(
    op: WindowOperator, events: list[tuple[str, Sample]], flush: bool
) -> tuple[list[object], list[bool]]:
    """All outputs, and for each event whether it came back as TooLate."""
    out: list[object] = []
    rejected = []
    for key, sample in events:
        op.feed(key, sample)
        drained = op.drain()
        rejected.append(any(isinstance(o, TooLate) and o.sample is sample for o in drained))
        out.extend(drained)
    if flush:
        op.flush()
        out.extend(op.drain())
    return out, rejected


def arrival_watermarks(events: list[tuple[str, Sample]], delay: int) -> list[int]:
    wms, top = [], None
    for _, s in events:
        wms.append(-(2**62) if top is None else top - delay)
        top = s.ts if top is None else max(top, s.ts)
    return wms


def check_revisions_and_closing(out: list[object]) -> dict[tuple[str, Window], WindowResult]:
    last: dict[tuple[str, Window], WindowResult] = {}
    closed: set[tuple[str, Window]] = set()
    for o in out:
        if isinstance(o, WindowResult):
            ident = (o.key, o.window)
            assert ident not in closed
            prev = last.get(ident)
            assert o.revision == (0 if prev is None else prev.revision + 1) or prev is None
            last[ident] = o
        elif isinstance(o, WindowClosed):
            ident = (o.key, o.window)
            assert ident not in closed, "closed twice"
            closed.add(ident)
            assert last[ident].revision == o.revision
        elif isinstance(o, WindowRetracted):
            assert last[(o.key, o.window)].revision == o.revision
            del last[(o.key, o.window)]
    return last


@settings(max_examples=150, deadline=None)
@given(
    events=events_st,
    kind=st.sampled_from(["tumbling", "hopping"]),
    delay=st.integers(0, 15),
    lateness=st.integers(0, 25),
    flush=st.booleans(),
)
def test_tumbling_and_hopping_equal_recomputation(
    events: list[tuple[str, Sample]], kind: str, delay: int, lateness: int, flush: bool
) -> None:
    windows = Tumbling(20) if kind == "tumbling" else Hopping(30, 10)
    op = WindowOperator(
        windows, AGG, watermark=BoundedOutOfOrderness(delay), allowed_lateness=lateness
    )
    out, _ = run(op, events, flush)
    last = check_revisions_and_closing(out)

    def windows_of(ts: int) -> list[Window]:
        if isinstance(windows, Tumbling):
            s = ts - ts % windows.size
            return [Window(s, s + windows.size)]
        return [Window(s, s + windows.size) for s in windows.starts(ts)]

    wms = arrival_watermarks(events, delay)
    taken: dict[tuple[str, Window], list[Sample]] = defaultdict(list)
    accepted: list[tuple[int, str, Sample]] = []  # (arrival wm, key, sample)
    too_late = []
    for (key, s), wm in zip(events, wms, strict=True):
        live = [w for w in windows_of(s.ts) if w.end + lateness > wm]
        if not live:
            too_late.append((key, s))
            continue
        accepted.append((wm, key, s))
        for w in live:
            taken[(key, w)].append(s)
    assert [(o.key, o.sample) for o in out if isinstance(o, TooLate)] == too_late

    final_wm = max((s.ts for _, s in events), default=0) - delay
    expected = {}
    for (key, w), samples in taken.items():
        # every sample accepted before this window's purge is in its view (as prior or inside)
        view = [s for wm, k, s in accepted if k == key and wm < w.end + lateness]
        before = sorted((s for s in view if s.ts < w.start), key=Sample.sort_key)
        early = flush and w.end > final_wm
        values = aggregate(
            AGG, samples, w.start, w.end, before[-1] if before else None, early=early
        )
        expected[(key, w)] = values
    emitted = set(last)
    fired_expected = {ident for ident in expected if flush or ident[1].end <= final_wm}
    assert emitted == fired_expected
    for ident in emitted:
        assert last[ident].values == expected[ident], ident
        assert last[ident].samples == len(taken[ident])
    if flush:
        closed = {(o.key, o.window) for o in out if isinstance(o, WindowClosed)}
        assert closed == set(expected)
        assert op.live_windows == 0


@settings(max_examples=150, deadline=None)
@given(
    events=events_st,
    gap=st.integers(1, 12),
    delay=st.integers(0, 15),
    lateness=st.integers(0, 25),
)
def test_sessions_equal_recomputation_over_accepted_events(
    events: list[tuple[str, Sample]], gap: int, delay: int, lateness: int
) -> None:
    op = WindowOperator(
        Session(gap), AGG, watermark=BoundedOutOfOrderness(delay), allowed_lateness=lateness
    )
    out, rejected = run(op, events, flush=True)
    last = check_revisions_and_closing(out)
    wms = arrival_watermarks(events, delay)
    accepted: dict[str, list[Sample]] = defaultdict(list)
    for (key, s), wm, late in zip(events, wms, rejected, strict=True):
        if late:
            assert s.ts + lateness < wm  # only events behind the watermark can be too late
        else:
            accepted[key].append(s)
    final_wm = max((s.ts for _, s in events), default=0) - delay
    expected = {}
    for key, samples in accepted.items():
        samples.sort(key=Sample.sort_key)
        groups: list[list[Sample]] = []
        for s in samples:
            if groups and s.ts - groups[-1][-1].ts < gap:
                groups[-1].append(s)
            else:
                groups.append([s])
        for i, group in enumerate(groups):
            w = Window(group[0].ts, group[-1].ts + gap)
            prior = groups[i - 1][-1] if i else None
            expected[(key, w)] = aggregate(
                AGG, group, w.start, w.end, prior, early=w.end > final_wm
            )
    assert set(last) == set(expected)
    for ident, values in expected.items():
        assert last[ident].values == values, ident
