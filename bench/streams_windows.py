"""Keyed, quality-aware windowed aggregation: garrison's WindowOperator against Bytewax and a loop.

The job, the same for every contender: telemetry from K devices (keys), one reading per device
every 10 s of event time, arriving up to 2 s out of order; 2 % of readings Bad, 3 % Uncertain.
Per device and 60 s tumbling window: count of Good readings, mean, min, max of the Good values,
the last reading, and the window's OPC UA Part 13 status (Good / Uncertain_DataSubNormal / Bad
by the share of Good and Bad readings). Events per window per key are the same at every key
count (6), so "flat as keys grow" compares like with like.

Contenders:

* garrison — ``WindowOperator(Tumbling(60 s), Aggregation(count, mean, min, max, last))`` with a
  2 s bounded-out-of-orderness watermark: windows fire as the watermark passes, results carry
  revisions and statuses (its full machinery, nothing switched off).
* bytewax — ``fold_window`` over an ``EventClock`` and a ``TumblingWindower``, the folder doing
  the same quality bookkeeping, run with ``bytewax.testing.run_main`` (one worker, in process),
  input batches of 16 384 and a watermark held back so its windows close at the end of input
  (see ``BYTEWAX_WAIT``: with system time in its watermark a fast replay gives wrong windows).
* python loop — the limit: one plain loop over the events with a dict of per-(key, window)
  accumulators and a deadline dict for closing; no lateness, revisions or snapshots.

Throughput is events / wall-clock second of the whole job (feeding, closing, collecting the
results), median of the rounds; inputs are built before the clock starts, in each contender's
native form (garrison ``Sample`` structs, Bytewax tuples with aware datetimes).
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import Any

from garrison.streams import (
    Aggregation,
    BoundedOutOfOrderness,
    Sample,
    StatusCode,
    Tumbling,
    WindowOperator,
    WindowResult,
)

from ._harness import Row, median, note, progress

PILLAR = "streams"

WINDOW_MS = 60_000
PERIOD_MS = 10_000
JITTER_MS = 2_000
KEY_COUNTS = (1_000, 100_000)
QUICK_KEY_COUNTS = (1_000, 10_000)
EVENTS = 600_000
"""Enough for every one of 100 000 keys to fill one window with its 6 readings."""
BYTEWAX_WAIT = timedelta(days=1)
"""Bytewax's EventClock moves its watermark with *system* time too (latest event time - wait +
system time since). Replayed as fast as it can go, a short wait lets system time push the
watermark past the data and every event lands in a fresh, instantly closed window (with 2 s it
emitted 550 807 windows for 100 000); a long wait keeps the watermark event-time driven, so
its windows close at the end of input, all correct."""
SLOW_RUN_S = 60.0
"""A contender whose first round takes longer than this runs once (Bytewax at 100 000 keys)."""
BYTEWAX_BATCH = 16_384
"""Bytewax's input batch size: its throughput with many keys depends on it (each activation
visits every key's window state), so it gets a large one; 1 024 is 2-3x slower at 8 000 keys."""
GOOD, UNC, BAD = (
    StatusCode.GOOD,
    StatusCode.UNCERTAIN_LAST_USABLE_VALUE,
    StatusCode.BAD_SENSOR_FAILURE,
)
T0 = 1_700_000_000_000 - 1_700_000_000_000 % WINDOW_MS


def make_events(keys: int, n: int, seed: int = 7) -> list[tuple[str, Sample]]:
    """``n`` readings from ``keys`` devices in arrival order (event time jittered)."""
    rng = random.Random(seed)
    names = [f"dev-{i:06d}" for i in range(keys)]
    phase = [rng.randrange(PERIOD_MS) for _ in range(keys)]
    out = []
    for i in range(n):
        k = i % keys
        ts = T0 + (i // keys) * PERIOD_MS + phase[k]
        r = rng.random()
        status = BAD if r < 0.02 else UNC if r < 0.05 else GOOD
        arrival = ts + rng.randrange(JITTER_MS)
        out.append((arrival, names[k], Sample(ts, round(rng.gauss(50, 10), 2), status)))
    out.sort(key=lambda e: e[0])
    return [(key, s) for _, key, s in out]


def part13_status(good: int, unc: int, bad: int) -> int:
    """Value-based status with the defaults (TreatUncertainAsBad, 100 / 100)."""
    total = good + unc + bad
    if good == total:
        return GOOD
    if bad + unc == total:
        return StatusCode.BAD
    return StatusCode.UNCERTAIN_DATA_SUB_NORMAL


# -- contenders ------------------------------------------------------------------------------


def run_garrison(events: list[tuple[str, Sample]]) -> int:
    op = WindowOperator(
        Tumbling(WINDOW_MS),
        Aggregation(("count", "mean", "min", "max", "last")),
        watermark=BoundedOutOfOrderness(JITTER_MS),
    )
    op.feed_many(events)
    op.flush()
    return sum(isinstance(out, WindowResult) for out in op.drain())


def run_loop(events: list[tuple[str, Sample]]) -> int:
    # [good, unc, bad, sum, min, max, last_ts, last_value, last_status]
    windows: dict[tuple[str, int], list[Any]] = {}
    due: dict[int, list[tuple[str, int]]] = {}
    results: list[tuple[str, int, int, float | None, float, float, float, int]] = []
    max_ts = -(2**62)
    next_close = None

    def close(ident: tuple[str, int]) -> None:
        a = windows.pop(ident)
        mean = a[3] / a[0] if a[0] else None
        results.append(
            (ident[0], ident[1], part13_status(a[0], a[1], a[2]), mean, a[4], a[5], a[7], a[8])
        )

    for key, s in events:
        ts = s.ts
        start = ts - ts % WINDOW_MS
        ident = (key, start)
        a = windows.get(ident)
        if a is None:
            a = windows[ident] = [0, 0, 0, 0.0, float("inf"), float("-inf"), -1, 0.0, 0]
            due.setdefault(start + WINDOW_MS, []).append(ident)
            if next_close is None or start + WINDOW_MS < next_close:
                next_close = start + WINDOW_MS
        sev = s.status >> 30
        if sev == 0:
            v = s.value
            a[0] += 1
            a[3] += v
            if v < a[4]:
                a[4] = v
            if v > a[5]:
                a[5] = v
        elif sev == 1:
            a[1] += 1
        else:
            a[2] += 1
        if ts >= a[6]:
            a[6], a[7], a[8] = ts, s.value, s.status
        if ts > max_ts:
            max_ts = ts
            wm = ts - JITTER_MS
            while next_close is not None and next_close <= wm:
                for ident in due.pop(next_close):
                    close(ident)
                next_close = min(due) if due else None
    for end in sorted(due):
        for ident in due[end]:
            close(ident)
    return len(results)


def bytewax_events(
    events: list[tuple[str, Sample]],
) -> list[tuple[str, tuple[datetime, float, int]]]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return [(k, (epoch + timedelta(milliseconds=s.ts), s.value, s.status)) for k, s in events]


def run_bytewax(items: list[tuple[str, tuple[datetime, float, int]]]) -> int:
    import bytewax.operators as op
    import bytewax.operators.windowing as win
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    def builder() -> list[Any]:
        return [0, 0, 0, 0.0, float("inf"), float("-inf"), None, 0.0, 0]

    def folder(a: list[Any], item: tuple[datetime, float, int]) -> list[Any]:
        dt, v, status = item
        sev = status >> 30
        if sev == 0:
            a[0] += 1
            a[3] += v
            if v < a[4]:
                a[4] = v
            if v > a[5]:
                a[5] = v
        elif sev == 1:
            a[1] += 1
        else:
            a[2] += 1
        if a[6] is None or dt >= a[6]:
            a[6], a[7], a[8] = dt, v, status
        return a

    def merger(a: list[Any], b: list[Any]) -> list[Any]:
        return a  # tumbling windows never merge

    def finish(kv: tuple[str, tuple[int, list[Any]]]) -> tuple[str, int, int, float | None]:
        key, (window_id, a) = kv
        mean = a[3] / a[0] if a[0] else None
        return key, window_id, part13_status(a[0], a[1], a[2]), mean

    out: list[Any] = []
    flow = Dataflow("quality_windows")
    stream = op.input("in", flow, TestingSource(items, batch_size=BYTEWAX_BATCH))
    keyed = op.key_on("key", stream, lambda kv: kv[0])
    values = op.map_value("value", keyed, lambda kv: kv[1])
    clock: win.EventClock[Any] = win.EventClock(
        lambda item: item[0], wait_for_system_duration=BYTEWAX_WAIT
    )
    windower = win.TumblingWindower(
        length=timedelta(milliseconds=WINDOW_MS),
        align_to=datetime(1970, 1, 1, tzinfo=UTC),
    )
    folded = win.fold_window("fold", values, clock, windower, builder, folder, merger)
    op.output("out", op.map("finish", folded.down, finish), TestingSink(out))
    run_main(flow)  # type: ignore[no-untyped-call]
    return sum(1 for _ in out)


# -- measuring -------------------------------------------------------------------------------


def timed(fn: Callable[[Any], int], data: Any) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    result = fn(data)
    return time.perf_counter() - start, result


def run(quick: bool) -> list[Row]:
    n = 60_000 if quick else EVENTS
    rounds = 1 if quick else 3
    key_counts = QUICK_KEY_COUNTS if quick else KEY_COUNTS
    note("job", f"{n:,} readings, 60 s tumbling windows, 10 s period per key, 2 s jitter, "
                "2 % Bad / 3 % Uncertain")  # fmt: skip
    note("versions", f"bytewax {version('bytewax')} (input batch {BYTEWAX_BATCH:,}), "
                     f"msgspec {version('msgspec')}")  # fmt: skip
    rates: dict[tuple[int, str], float] = {}
    with progress("streams_windows", len(key_counts) * rounds) as advance:
        for keys in key_counts:
            events = make_events(keys, n)
            bw = bytewax_events(events)
            samples: dict[str, list[float]] = {"garrison": [], "bytewax": [], "python loop": []}
            windows: dict[str, int] = {}
            for r in range(rounds):
                order: list[tuple[str, Callable[[Any], int], Any]] = [
                    ("garrison", run_garrison, events),
                    ("bytewax", run_bytewax, bw),
                    ("python loop", run_loop, events),
                ]
                random.Random(r).shuffle(order)
                for name, fn, data in order:
                    if r and samples[name] and n / samples[name][0] > SLOW_RUN_S:
                        continue  # one run of a contender this slow is measurement enough
                    seconds, windows[name] = timed(fn, data)
                    samples[name].append(n / seconds)
                advance(f"{keys:,} keys round {r + 1}")
            for name, values in samples.items():
                rates[(keys, name)] = median(values)
            summary = ", ".join(f"{k} {v:,}" for k, v in windows.items())
            note(f"windows at {keys:,} keys", summary)
    rows = []
    for keys in key_counts:
        rows.append(
            Row(
                metric=f"events/s · {keys:,} keys",
                unit="events/s",
                garrison=rates[(keys, "garrison")],
                peers={"bytewax": rates[(keys, "bytewax")]},
                vs="bytewax",
                limit=rates[(keys, "python loop")],
                notes="limit = the plain Python loop",
            )
        )
    lo, hi = key_counts
    rows.append(
        Row(
            metric=f"flatness: rate at {hi:,} keys ÷ rate at {lo:,}",
            unit="ratio",
            garrison=rates[(hi, "garrison")] / rates[(lo, "garrison")],
            peers={"bytewax": rates[(hi, "bytewax")] / rates[(lo, "bytewax")]},
            vs="bytewax",
            limit=rates[(hi, "python loop")] / rates[(lo, "python loop")],
            notes="1.0 = flat; limit column = the loop's own ratio",
        )
    )
    return rows
