"""Overload: a service with a fixed capacity, offered 1x-5x of it, with and without protection.

The service under test is a garrison :class:`~garrison.service.Service` under uvicorn in its own
process. Its one route, ``GET /work``, holds one of ``SLOTS`` worker slots (an
``asyncio.Semaphore``) for ``WORK_S`` seconds of sleep: capacity is ``SLOTS / WORK_S`` requests
per second whatever the CPU does, and a request that finds every slot taken waits for one in FIFO
order (the way a thread pool or a connection pool queues). Midway, the work slows down
(``SLOW_FACTOR`` x ``WORK_S``) for a while, switched through a control route of the fixture
(under ``/_garrison/``, which garrison's door and deadline never touch), and then recovers.

A load generator in a second process sends requests open loop: arrivals follow a Poisson schedule
fixed in advance (the same seed in every mode), each request is sent when its time comes whether
or not earlier ones were answered, with ``garrison-timeout-ms: 1000`` and a client-side timeout
of the same second. Every request is labelled with a criticality class (40% sheddable, 40%
default, 20% critical); only the criticality mode sends it as ``garrison-criticality``.

Modes (one fresh service process each, the same schedule each):

* ``no protection``: no ``[resilience.inbound]`` policy; garrison's door still enforces the
  caller's deadline (it cancels the handler when the budget is spent).
* ``static limit``: ``limiter = {limit = {algorithm = "fixed", limit = SLOTS}}``, the best a
  static limit can be here, since it is set to the true number of slots.
* ``adaptive`` (garrison's column): Gradient2 with ``rtt_tolerance = 1.0`` and windows of
  0.25-1 s (see ``GRADIENT2``), everything else at its defaults (initial limit 20).
* ``envoy_gradient``: Envoy's controller with its defaults (minRTT measured at the start, then
  every 60 s or when the limit sits at its minimum).
* ``adaptive + criticality``: the adaptive limit with the criticality header sent.

Neither process is pinned to a CPU: on a machine shared with other work, a pinned process
cannot move away from a busy core. The service samples its own event-loop lag 4 times a second,
so stalls caused by other load show in the notes and as ticks in the picture.

Measured (by send time; each load step is measured over its last seconds only):

* goodput: answers 200 within the deadline, per second;
* p99 latency of those successes, taken per second and then the median over the measured
  seconds (one stall of the machine moves one second's p99, not the row); the unloaded p99 is
  that of the first phase (0.25x), median over the modes. The goal rows pool both 3x phases;
* wasted work: requests that got a worker slot (work began) but whose answer came after the
  client's deadline or were cancelled mid-work (recorded in the service, per request);
* time to settle after the slowdown ends: until 1 s windows (sliding by 0.25 s) are back to the
  mode's own level before the slowdown (goodput >= 90% of it, p99 <= 1.5x) for 2 s in a row;
  "—" when that never happens in the phase or the mode had collapsed already.

Goal (issue 4): at 3x capacity the adaptive limit keeps goodput >= 90% of capacity and p99 within
3x of the unloaded p99, where the unprotected service collapses. The picture
``bench/results/resilience_overload.png`` shows p50/p99 and goodput per second for every mode.

Internals: ``python -m bench.resilience_overload serve SPEC`` runs the service and prints its port;
``python -m bench.resilience_overload load SPEC`` runs the generator and writes its records to a
file. Every loop is bounded by the schedule and the generator exits by itself.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request

from ._harness import (
    RESULTS_DIR,
    ROOT,
    Better,
    Row,
    child_argv,
    log,
    median,
    note,
    percentile,
    progress,
    serve_child,
)

PILLAR = "resilience"

SERVICE = "overload"
SLOTS = 8
"""Worker slots of the service."""
WORK_S = 0.080
"""Seconds one request holds a slot (sleep: no CPU)."""
CAPACITY = SLOTS / WORK_S
"""Requests per second the service can complete: 100."""
SLOW_FACTOR = 2.0
"""During the slowdown each request holds its slot this many times longer."""
DEADLINE_S = 1.0
"""The client's deadline, sent as garrison-timeout-ms and enforced by the client."""
GOAL_GOODPUT = 0.9
GOAL_P99 = 3.0
CLASSES = ("sheddable", "default", "critical")
MIX = (0.4, 0.4, 0.2)
SENT_HEADER = "x-bench-sent"
CONTROL = "/_garrison/bench"


@dataclass(frozen=True)
class Phase:
    """A stretch of the load schedule."""

    label: str
    load: float
    """Offered load, in multiples of capacity."""
    duration: float
    measure: float
    """Seconds at the end of the phase that are measured (the rest is the transition)."""
    slow: bool = False


@dataclass(frozen=True)
class Mode:
    """One protection set-up of the service."""

    key: str
    label: str
    inbound: dict[str, Any] | None
    criticality: bool = False


def _phases(quick: bool) -> list[Phase]:
    if quick:
        return [
            Phase("unloaded", 0.25, 1.5, 1.0),
            *(Phase(f"{k}x", k, d, 1.5) for k, d in ((1, 2.0), (3, 2.5), (5, 2.0))),
            Phase("3x before slowdown", 3, 1.5, 1.0),
            Phase("3x slowdown", 3, 2.5, 1.5, slow=True),
            Phase("3x after slowdown", 3, 2.5, 2.5),
        ]
    return [
        Phase("unloaded", 0.25, 3.0, 2.5),
        *(Phase(f"{k}x", k, 4.0, 3.0) for k in (1, 2, 3, 4, 5)),
        Phase("3x before slowdown", 3, 5.0, 3.0),
        Phase("3x slowdown", 3, 7.0, 5.0, slow=True),
        Phase("3x after slowdown", 3, 8.0, 8.0),
    ]


GRADIENT2 = {
    "limit": {"algorithm": "gradient2", "rtt_tolerance": 1.0},
    "window": {"min_window": 0.25, "max_window": 1.0},
}
"""The adaptive limit: Gradient2 with rtt_tolerance 1.0 (Netflix's 1.5 tolerates a growing
queue under sustained overload) and windows of 2 x minRTT within 0.25-1 s (4 updates a second
here instead of 1); everything else at its default (initial limit 20, queue_size 4)."""
NONE, STATIC, ADAPTIVE, ENVOY, CRIT = (
    "no protection",
    "static limit",
    "adaptive",
    "envoy_gradient",
    "adaptive + criticality",
)
MODES = (
    Mode("none", NONE, None),
    Mode("static", STATIC, {"limiter": {"limit": {"algorithm": "fixed", "limit": SLOTS}}}),
    Mode("adaptive", ADAPTIVE, {"limiter": GRADIENT2}),
    Mode("envoy", ENVOY, {"limiter": {"limit": {"algorithm": "envoy_gradient"}}}),
    Mode("criticality", CRIT, {"limiter": GRADIENT2}, criticality=True),
)
QUICK_MODES = ("none", "adaptive", "criticality")


# -- the service (child process) -------------------------------------------------------------


def _serve(spec: dict[str, Any]) -> None:
    import uvicorn

    from garrison.core import parse_config
    from garrison.service import Service

    svc = Service(SERVICE)
    slots = asyncio.Semaphore(SLOTS)
    state = {"factor": 1.0}
    work_log: list[tuple[float, float, float | None, float, int]] = []
    limits: list[tuple[float, int, int, float]] = []

    @svc.get("/work")
    async def work(request: Request) -> dict[str, bool]:
        sent = float(request.headers.get(SENT_HEADER, "nan"))
        t_in = time.monotonic()
        t_slot: float | None = None
        try:
            async with slots:
                t_slot = time.monotonic()
                await asyncio.sleep(WORK_S * state["factor"])
        except asyncio.CancelledError:  # the caller's deadline: garrison's door cancelled us
            work_log.append((sent, t_in, t_slot, time.monotonic(), 1))
            raise
        work_log.append((sent, t_in, t_slot, time.monotonic(), 0))
        return {"ok": True}

    @svc.post(f"{CONTROL}/slow")
    async def slow(factor: float) -> dict[str, float]:
        state["factor"] = factor
        return {"factor": factor, "at": time.monotonic()}

    @svc.get(f"{CONTROL}/log")
    async def get_log() -> dict[str, Any]:
        return {"work": work_log, "limits": limits}

    async def sample_limits() -> None:
        # The door's limit and inflight, and how late this loop wakes up (the event loop's lag:
        # stalls from other load on the machine), 4 times a second; bounded: 10 min.
        limiter = svc.resilience.inbound(SERVICE).limiter
        lag = 0.0
        for _ in range(2400):
            now = time.monotonic()
            if limiter is None:
                limits.append((now, 0, 0, lag))
            else:
                limits.append((now, limiter.limit, limiter.inflight, lag))
            await asyncio.sleep(0.25)
            lag = time.monotonic() - now - 0.25

    tasks: list[asyncio.Task[None]] = []

    @svc.on_startup
    async def start_sampler() -> None:
        tasks.append(asyncio.create_task(sample_limits()))

    @svc.on_shutdown
    async def stop_sampler() -> None:
        for task in tasks:
            task.cancel()

    inbound = spec.get("inbound")
    data = {"resilience": {"inbound": {SERVICE: inbound}}} if inbound else {}
    svc.configure(parse_config(data))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        svc.asgi(), log_level="warning", access_log=False, lifespan="on", backlog=4096
    )
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(config).run(sockets=[sock])


# -- the load generator (child process) ------------------------------------------------------


def _schedule(phases: Sequence[Phase], seed: int) -> list[tuple[float, int]]:
    """Poisson arrivals per phase, each with a criticality class: (seconds from start, class)."""
    rng = random.Random(seed)
    out: list[tuple[float, int]] = []
    start = 0.0
    for ph in phases:
        rate = ph.load * CAPACITY
        end = start + ph.duration
        t = start + rng.expovariate(rate)
        while t < end:
            cls = rng.choices(range(len(CLASSES)), MIX)[0]
            out.append((t, cls))
            t += rng.expovariate(rate)
        start = end
    return out


def _bounds(phases: Sequence[Phase]) -> list[tuple[float, float]]:
    out, t = [], 0.0
    for ph in phases:
        out.append((t, t + ph.duration))
        t += ph.duration
    return out


async def _generate(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from garrison.core import DEADLINE_HEADER
    from garrison.service._resilience import CRITICALITY_HEADER

    url = spec["url"]
    phases = [Phase(**p) for p in spec["phases"]]
    schedule = _schedule(phases, spec["seed"])
    bounds = _bounds(phases)
    controls: list[tuple[float, float]] = []
    slow_at = [(b[0], SLOW_FACTOR) for b, ph in zip(bounds, phases, strict=True) if ph.slow]
    slow_at += [(b[1], 1.0) for b, ph in zip(bounds, phases, strict=True) if ph.slow]
    send_crit = spec["criticality"]
    records: list[tuple[float, float, int, int]] = []
    lags: list[float] = []
    budget = str(int(DEADLINE_S * 1000))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Open a few connections first, so the first phase does not measure handshakes.
        async def warm() -> None:
            async with session.get(f"{url}/readyz") as r:
                await r.read()

        await asyncio.gather(*(warm() for _ in range(SLOTS)))
        t0 = time.monotonic()

        async def one(cls: int) -> None:
            start = time.monotonic()
            headers = {DEADLINE_HEADER: budget, SENT_HEADER: f"{start:.6f}"}
            if send_crit:
                headers[CRITICALITY_HEADER] = CLASSES[cls]
            status = 0
            try:
                async with asyncio.timeout(DEADLINE_S):
                    async with session.get(f"{url}/work", headers=headers) as resp:
                        await resp.read()
                        status = resp.status
            except TimeoutError:
                status = -1
            except aiohttp.ClientError:
                status = -2
            records.append((start - t0, time.monotonic() - start, status, cls))

        async def control(at: float, factor: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            async with session.post(f"{url}{CONTROL}/slow?factor={factor}") as resp:
                await resp.read()
            controls.append((time.monotonic() - t0, factor))

        pending: set[asyncio.Task[None]] = set()
        for at, factor in slow_at:
            task = asyncio.create_task(control(at, factor))
            pending.add(task)
            task.add_done_callback(pending.discard)
        for at, cls in schedule:
            delay = t0 + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(max(0.0, time.monotonic() - t0 - at))
            task = asyncio.create_task(one(cls))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:  # every request has its own 1 s timeout: this wait is bounded
            await asyncio.wait(pending, timeout=DEADLINE_S + 2.0)
        for task in pending:
            task.cancel()
    return {"t0": t0, "records": records, "controls": controls, "lag_p99": percentile(lags, 0.99)}


def _load(spec: dict[str, Any]) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_generate(spec))
    Path(spec["out"]).write_text(json.dumps(result))


# -- orchestration ---------------------------------------------------------------------------


def _child(role: str, spec: dict[str, Any]) -> list[str]:
    return child_argv("bench.resilience_overload", role, spec)


def _service(spec: dict[str, Any]) -> AbstractContextManager[str]:
    """The service in a child process; yields its URL and stops it afterwards."""
    return serve_child("bench.resilience_overload", spec)


@dataclass
class Outcome:
    """What one mode produced: the client's records, the service's work log, its limit."""

    mode: Mode
    records: list[tuple[float, float, int, int]]
    work: list[tuple[float, float | None, float, bool]]
    """(sent, slot acquired, end, cancelled), seconds from the generator's start."""
    limits: list[tuple[float, int, int, float]]
    """(time, door limit, inflight, event-loop lag in s), sampled in the service."""
    lag_p99: float


def _run_mode(mode: Mode, phases: list[Phase]) -> Outcome:
    total = sum(p.duration for p in phases)
    with (
        _service({"inbound": mode.inbound}) as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        out = Path(tmp) / "load.json"
        spec = {
            "url": url,
            "phases": [asdict(p) for p in phases],
            "seed": 4,
            "criticality": mode.criticality,
            "out": str(out),
        }
        subprocess.run(_child("load", spec), cwd=ROOT, check=True, timeout=total + 30)
        gen = json.loads(out.read_text())
        with urllib.request.urlopen(f"{url}{CONTROL}/log", timeout=10) as resp:
            served = json.loads(resp.read())
    t0 = gen["t0"]
    work = [
        (sent - t0, None if slot is None else slot - t0, end - t0, bool(cancelled))
        for sent, _t_in, slot, end, cancelled in served["work"]
    ]
    limits = [(t - t0, lim, inflight, lag) for t, lim, inflight, lag in served["limits"]]
    records = [(t, lat, status, cls) for t, lat, status, cls in gen["records"]]
    return Outcome(mode, records, work, limits, gen["lag_p99"])


# -- analysis --------------------------------------------------------------------------------


@dataclass
class Window:
    """What happened to the requests sent in ``[t0, t1)``."""

    offered: float
    goodput: float
    p50_ms: float
    p99_ms: float
    """Of the successes; from :func:`_measure`, the median of the per-second p99s."""
    wasted: float
    """Requests per second that got a slot but missed the deadline."""
    wasted_pct: float
    """Share of the work started that was wasted, in %."""
    shed: float
    """Requests per second refused at the door (503)."""
    by_class: dict[str, float]


def _window(o: Outcome, t0: float, t1: float) -> Window:
    span = t1 - t0
    recs = [r for r in o.records if t0 <= r[0] < t1]
    ok = [r for r in recs if r[2] == 200 and r[1] <= DEADLINE_S]
    lat = [r[1] * 1000 for r in ok]
    started = [w for w in o.work if t0 <= w[0] < t1 and w[1] is not None]
    wasted = [w for w in started if w[3] or w[2] > w[0] + DEADLINE_S]
    return Window(
        offered=len(recs) / span,
        goodput=len(ok) / span,
        p50_ms=percentile(lat, 0.5),
        p99_ms=percentile(lat, 0.99),
        wasted=len(wasted) / span,
        wasted_pct=100 * len(wasted) / len(started) if started else 0.0,
        shed=sum(1 for r in recs if r[2] == 503) / span,
        by_class={c: sum(1 for r in ok if r[3] == i) / span for i, c in enumerate(CLASSES)},
    )


def _measure(o: Outcome, spans: Sequence[tuple[float, float]]) -> Window:
    """The spans pooled, except p99: the median of the p99s of their whole seconds (counted
    back from each span's end); a second without any success counts as infinitely slow."""
    total = sum(b - a for a, b in spans)
    parts = [(_window(o, a, b), b - a) for a, b in spans]

    def pooled(f: Callable[[Window], float]) -> float:
        return sum(f(w) * length for w, length in parts) / total

    seconds = [
        _window(o, b - k - 1, b - k).p99_ms for a, b in spans for k in range(max(1, int(b - a)))
    ]
    typical = median([math.inf if math.isnan(x) else x for x in seconds])
    lat = [r[1] * 1000 for a, b in spans for r in o.records if a <= r[0] < b and r[2] == 200]
    started = [w for a, b in spans for w in o.work if a <= w[0] < b and w[1] is not None]
    wasted = sum(1 for w in started if w[3] or w[2] > w[0] + DEADLINE_S)
    return Window(
        offered=pooled(lambda w: w.offered),
        goodput=pooled(lambda w: w.goodput),
        p50_ms=percentile(lat, 0.5),
        p99_ms=typical if math.isfinite(typical) else math.nan,
        wasted=wasted / total,
        wasted_pct=100 * wasted / len(started) if started else 0.0,
        shed=pooled(lambda w: w.shed),
        by_class={c: sum(w.by_class[c] * length for w, length in parts) / total for c in CLASSES},
    )


def _settle(o: Outcome, start: float, end: float, before: Window) -> float | None:
    """Seconds from ``start`` until the mode is back where it was before the slowdown.

    Back means: 1 s windows (sliding by 0.25 s) with goodput >= 90% of the goodput before and
    p99 <= 1.5 x the p99 before, for 2 s in a row. None if it never is, or if the mode had
    collapsed already (goodput before < half the capacity: nothing to settle back to).
    """
    if not before.goodput >= CAPACITY / 2:
        return None
    t, run_start, good_run = start, start, 0
    while t + 1.0 <= end + 1e-9:
        w = _window(o, t, t + 1.0)
        if w.goodput >= 0.9 * before.goodput and w.p99_ms <= 1.5 * before.p99_ms:
            if good_run == 0:
                run_start = t
            good_run += 1
            if good_run >= 5:
                return run_start - start
        else:
            good_run = 0
        t += 0.25
    return None


def _measured(bounds: tuple[float, float], ph: Phase) -> tuple[float, float]:
    return bounds[1] - ph.measure, bounds[1]


def _row(
    metric: str,
    unit: str,
    mine: float,
    peers: dict[str, float],
    better: Better | None,
    *,
    limit: float | None = None,
    notes: str = "",
    missing: str = "no value (no successes)",
) -> Row:
    """A row; peers without a value are left out, and named in the notes after ``missing``."""
    kept = {k: v for k, v in peers.items() if math.isfinite(v)}
    gone = [k for k, v in peers.items() if not math.isfinite(v)]
    if gone and missing:
        notes = f"{notes}; {missing}: {', '.join(gone)}".lstrip("; ")
    return Row(
        metric,
        unit,
        mine if math.isfinite(mine) else None,
        peers=kept,
        better=better,
        vs=NONE if NONE in kept and better is not None else None,
        limit=limit,
        notes=notes,
    )


def _rows(outcomes: list[Outcome], phases: list[Phase]) -> tuple[list[Row], float]:
    bounds = _bounds(phases)
    by_key = {o.mode.key: o for o in outcomes}
    main = by_key["adaptive"]
    others = [o for o in outcomes if o is not main]

    def stat(o: Outcome, i: int) -> Window:
        return _measure(o, [_measured(bounds[i], phases[i])])

    unloaded = median([stat(o, 0).p99_ms for o in outcomes])  # 0.25x, median over modes
    rows: list[Row] = []

    def add(metric: str, unit: str, f: Any, better: Better | None, i: int, **kw: Any) -> None:
        peers = {o.mode.label: f(stat(o, i)) for o in others}
        rows.append(_row(metric, unit, f(stat(main, i)), peers, better, **kw))

    steps = [i for i, ph in enumerate(phases) if ph.label.endswith("x") and ph.load >= 1]
    for i in steps:
        add(
            f"goodput at {phases[i].label} capacity",
            "req/s",
            lambda w: w.goodput,
            "higher",
            i,
            limit=CAPACITY,
            notes="limit = capacity",
        )
    for i in steps:
        add(
            f"p99 latency of successes at {phases[i].label}",
            "ms",
            lambda w: w.p99_ms,
            "lower",
            i,
            limit=unloaded,
            notes="median of per-second p99s; limit = unloaded p99",
        )
    for i in steps:
        add(
            f"wasted work at {phases[i].label}",
            "req/s",
            lambda w: w.wasted,
            "lower",
            i,
            notes="got a slot, then missed the deadline (can exceed capacity: a cancelled "
            "request frees its slot early)",
        )
    # The goal, at 3x: both 3x phases pooled (the step and the stretch before the slowdown).
    i3 = next(i for i in steps if phases[i].load == 3)
    i_slow = next(i for i, ph in enumerate(phases) if ph.slow)
    three = [_measured(bounds[i], phases[i]) for i in (i3, i_slow - 1)]
    goal = {o.mode.label: _measure(o, three) for o in outcomes}
    g = goal[main.mode.label]
    good_pct = 100 * g.goodput / CAPACITY
    p99_x = g.p99_ms / unloaded
    seconds = sum(b - a for a, b in three)
    rows.append(
        _row(
            "goal: goodput at 3x ÷ capacity",
            "%",
            good_pct,
            {o.mode.label: 100 * goal[o.mode.label].goodput / CAPACITY for o in others},
            "higher",
            limit=100 * GOAL_GOODPUT,
            notes=f"both 3x phases, {seconds:g} s; goal >= {100 * GOAL_GOODPUT:.0f}% (limit "
            f"column): {'met' if good_pct >= 100 * GOAL_GOODPUT else 'NOT met'}",
        )
    )
    rows.append(
        _row(
            "goal: p99 at 3x ÷ unloaded p99",
            "x",
            p99_x,
            {o.mode.label: goal[o.mode.label].p99_ms / unloaded for o in others},
            "lower",
            limit=GOAL_P99,
            notes=f"both 3x phases, median of per-second p99s; goal <= {GOAL_P99:.0f}x (limit "
            f"column; unloaded p99 {unloaded:.0f} ms): {'met' if p99_x <= GOAL_P99 else 'NOT met'}",
        )
    )
    # The slowdown.
    add(
        "goodput during the slowdown (3x, work x2)",
        "req/s",
        lambda w: w.goodput,
        "higher",
        i_slow,
        limit=CAPACITY / SLOW_FACTOR,
        notes="limit = capacity while slowed",
    )
    add(
        "p99 during the slowdown",
        "ms",
        lambda w: w.p99_ms,
        "lower",
        i_slow,
        limit=unloaded * SLOW_FACTOR,
        notes="median of per-second p99s; limit = unloaded p99 x slowdown",
    )
    add("wasted work during the slowdown", "req/s", lambda w: w.wasted, "lower", i_slow)
    after_start, after_end = bounds[i_slow + 1]

    def settle(o: Outcome) -> float:
        s = _settle(o, after_start, after_end, stat(o, i_slow - 1))
        return math.nan if s is None else s

    collapsed = [o.mode.label for o in outcomes if stat(o, i_slow - 1).goodput < CAPACITY / 2]
    settles = {o.mode.label: settle(o) for o in outcomes}
    never = [k for k, v in settles.items() if math.isnan(v) and k not in collapsed]
    rows.append(
        _row(
            "time to settle after the slowdown ends",
            "s",
            settles[main.mode.label],
            {k: v for k, v in settles.items() if k != main.mode.label},
            "lower",
            notes="until 1 s windows have goodput >= 90% and p99 <= 1.5x of the mode's own "
            f"before the slowdown, for 2 s in a row (0.25 s steps); did not within "
            f"{after_end - after_start:.0f} s: {', '.join(never) or 'none'}; collapsed before "
            f"the slowdown: {', '.join(collapsed) or 'none'}",
            missing="",
        )
    )
    # Criticality: goodput per class at 3x and at the highest load.
    crit = by_key.get("criticality")
    if crit is not None:
        for i in (i3, steps[-1]):
            k = phases[i].label
            for c, share in zip(CLASSES, MIX, strict=True):
                offered = share * phases[i].load * CAPACITY
                rows.append(
                    _row(
                        f"goodput at {k} · {c} ({share:.0%} of offered)",
                        "req/s",
                        stat(crit, i).by_class[c],
                        {o.mode.label: stat(o, i).by_class[c] for o in outcomes if o is not crit},
                        None,
                        limit=min(offered, CAPACITY),
                        notes=f"garrison column = {CRIT} (the others do not send the "
                        f"criticality); offered {offered:.0f} req/s; limit = min(offered, "
                        "capacity)",
                    )
                )
    return rows, unloaded


# -- the picture -----------------------------------------------------------------------------


def _draw(outcomes: list[Outcome], phases: list[Phase], unloaded: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bounds = _bounds(phases)
    total = bounds[-1][1]
    n = len(outcomes)
    fig, axes = plt.subplots(n, 2, figsize=(15, 2.6 * n + 1), sharex=True, squeeze=False)
    edges = [i * 0.5 for i in range(int(total / 0.5) + 1)]
    colors = {"sheddable": "#bbbbbb", "default": "#4c78a8", "critical": "#e45756"}
    for row, o in enumerate(outcomes):
        lat_ax, good_ax = axes[row]
        mids, p50, p99, good = [], [], [], []
        per_class: dict[str, list[float]] = {c: [] for c in CLASSES}
        for a, b in itertools.pairwise(edges):
            w = _window(o, a, b)
            mids.append((a + b) / 2)
            p50.append(w.p50_ms)
            p99.append(w.p99_ms)
            good.append(w.goodput)
            for c in CLASSES:
                per_class[c].append(w.by_class[c])
        lat_ax.plot(mids, p99, color="#d62728", lw=1.4, label="p99")
        lat_ax.plot(mids, p50, color="#1f77b4", lw=1.4, label="p50")
        lat_ax.axhline(
            GOAL_P99 * unloaded,
            color="#2ca02c",
            ls="--",
            lw=1,
            label=f"goal: 3x unloaded p99 ({GOAL_P99 * unloaded:.0f} ms)",
        )
        lat_ax.axhline(DEADLINE_S * 1000, color="k", ls=":", lw=1, label="deadline")
        stalls = [t for t, _, _, lag in o.limits if lag > 0.05]
        if stalls:
            lat_ax.plot(
                stalls,
                [58] * len(stalls),
                "|",
                color="#7f7f7f",
                ms=8,
                label="service loop stalled > 50 ms",
            )
        lat_ax.set_yscale("log")
        lat_ax.set_ylim(50, 1500)
        lat_ax.set_ylabel("latency of\nsuccesses (ms)")
        lat_ax.set_title(o.mode.label, loc="left", fontsize=10, fontweight="bold")
        if o.mode.inbound is not None and o.limits:
            lim_ax = lat_ax.twinx()
            lim_ax.step(
                [x[0] for x in o.limits],
                [x[1] for x in o.limits],
                where="post",
                color="#9467bd",
                lw=1,
                alpha=0.7,
            )
            lim_ax.set_ylim(0, max(40, max(x[1] for x in o.limits) * 1.1))
            lim_ax.set_ylabel("door limit", color="#9467bd")
            lim_ax.tick_params(axis="y", colors="#9467bd")
        if o.mode.criticality:
            good_ax.stackplot(
                mids,
                *(per_class[c] for c in reversed(CLASSES)),
                step=None,
                colors=[colors[c] for c in reversed(CLASSES)],
                labels=[f"goodput · {c}" for c in reversed(CLASSES)],
            )
        else:
            good_ax.plot(mids, good, color="#1f77b4", lw=1.6, label="goodput")
        good_ax.axhline(CAPACITY, color="k", ls=":", lw=1, label="capacity")
        good_ax.axhline(
            GOAL_GOODPUT * CAPACITY, color="#2ca02c", ls="--", lw=1, label="goal: 90% of capacity"
        )
        good_ax.set_ylim(0, CAPACITY * 1.3)
        good_ax.set_xlim(0, total)
        good_ax.set_ylabel("goodput (req/s)")
        for ax in (lat_ax, good_ax):
            for (a, b), ph in zip(bounds, phases, strict=True):
                if ph.slow:
                    ax.axvspan(a, b, color="#ff7f0e", alpha=0.15, lw=0)
                ax.axvline(a, color="#999999", lw=0.5)
        for (a, b), ph in zip(bounds, phases, strict=True):
            good_ax.text(
                (a + b) / 2,
                CAPACITY * 1.22,
                f"{ph.load:g}x",
                ha="center",
                fontsize=8,
                color="#555555",
            )
        if row == 0:
            lat_ax.legend(loc="upper left", fontsize=7, ncol=2)
            good_ax.legend(loc="lower left", fontsize=7, ncol=3)
        if o.mode.criticality:
            good_ax.legend(loc="lower left", fontsize=7, ncol=5)
    for ax in axes[-1]:
        ax.set_xlabel(
            "seconds (by send time; orange: work slowed x2; "
            "grey ticks: service loop stalled > 50 ms)"
        )
    fig.suptitle(
        f"Overload: capacity {CAPACITY:.0f} req/s ({SLOTS} slots x {WORK_S * 1000:.0f} ms), "
        f"offered 0.25x-5x open loop, deadline {DEADLINE_S:.0f} s",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- the benchmark ---------------------------------------------------------------------------


def run(quick: bool) -> list[Row]:
    """Every mode on the same schedule, one fresh service each; then the table and picture."""
    phases = _phases(quick)
    modes = [m for m in MODES if not quick or m.key in QUICK_MODES]
    outcomes: list[Outcome] = []
    with progress("overload modes", len(modes)) as advance:
        for mode in modes:
            o = _run_mode(mode, phases)
            outcomes.append(o)
            advance(
                f"{mode.label}: {len(o.records)} requests, generator lag p99 "
                f"{o.lag_p99 * 1000:.1f} ms"
            )
    rows, unloaded = _rows(outcomes, phases)
    RESULTS_DIR.mkdir(exist_ok=True)
    picture = RESULTS_DIR / "resilience_overload.png"
    _draw(outcomes, phases, unloaded, picture)
    log(f"wrote {picture.relative_to(RESULTS_DIR.parent.parent)}")
    total = sum(p.duration for p in phases)
    note(
        "setup",
        f"garrison Service under uvicorn (own process) with {SLOTS} worker slots x "
        f"{WORK_S * 1000:.0f} ms sleep = capacity {CAPACITY:.0f} req/s; open-loop Poisson "
        f"load from a second process (aiohttp), deadline {DEADLINE_S:.0f} s "
        f"(garrison-timeout-ms + client timeout); schedule "
        + ", ".join(f"{p.label} {p.duration:g}s" for p in phases)
        + f" ({total:.0f} s per mode, measured over the last seconds of each phase); "
        "not pinned to CPUs",
    )
    note("modes", {m.label: m.inbound or "no inbound policy" for m in modes})
    note("unloaded p99", f"{unloaded:.1f} ms (0.25x, median over modes)")
    note(
        "machine noise: generator lag p99 / service loop stalls > 50 ms (max)",
        {
            o.mode.label: f"{o.lag_p99 * 1000:.0f} ms / {sum(1 for x in o.limits if x[3] > 0.05)}"
            f" ({max((x[3] for x in o.limits), default=0) * 1000:.0f} ms)"
            for o in outcomes
        },
    )
    note("ratio", "garrison = the adaptive limit (gradient2 tuned) ÷ no protection")
    note("picture", str(picture.relative_to(RESULTS_DIR.parent.parent)))
    return rows


if __name__ == "__main__":
    role, raw = sys.argv[1], json.loads(sys.argv[2])
    if role == "serve":
        _serve(raw)
    elif role == "load":
        _load(raw)
    else:
        raise SystemExit(f"unknown role {role!r}")
