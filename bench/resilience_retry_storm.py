"""Retry storm: a chain A -> B -> C whose last service fails for a while, and how much load C sees.

Three garrison services, each under uvicorn in its own process: ``GET /work`` on A calls B's
``/work``, which calls C's ``/work``. C does the work in one of ``C_SLOTS`` slots for ``C_WORK_S``
seconds of sleep (capacity ``C_SLOTS / C_WORK_S`` requests per second). For ``FAIL_S`` seconds
(switched through a control route of the fixture) C does that work and then answers ``503``: its
own dependency is failing. Then it recovers.

A client process calls A open loop at ``RATE`` requests per second (one every ``1 / RATE`` s,
whether or not earlier ones were answered), each with a 2 s deadline (``garrison-timeout-ms``,
propagated by garrison's client down the chain, and a client-side timeout).

Two set-ups of the same chain, in the same run:

* ``naive retries``: no ``[resilience]`` policy; A's and B's handlers call their callee in a plain
  ``for`` loop of 3 attempts with jittered exponential backoff (50 ms, 100 ms), retrying any 5xx
  or error, with no budget and no cross-layer signal: up to 3 x 3 = 9 calls on C per request.
* ``garrison`` (the garrison column): the handlers make one call each
  (``client.get(...).raise_for_status()``) and ``[resilience.defaults]`` gives every edge
  retries (3 attempts, the default backoff), the default retry budget (20% of requests, floor
  10/s) and a circuit breaker (see ``GARRISON_POLICIES``). Retries happen at one layer only:
  a retried request carries ``garrison-attempt`` and the callee does not retry it again.

Each service counts the requests it receives (before any garrison code runs). Reported:

* load amplification on C during the failure: requests C received while failing ÷ requests the
  client sent in the same time (the issue's goal: <= 1.2x), and the same at B;
* the peak: C's busiest second during the failure ÷ the client's rate;
* time to recover after C returns: until the client's 1 s success ratio (sliding by 0.25 s) is
  >= 95% for 2 s in a row.

The picture ``bench/results/resilience_retry_storm.png`` shows C's received rate and the
client's success ratio over time for both set-ups.

Internals: ``python -m bench.resilience_retry_storm serve SPEC`` runs one service and prints its
port; ``... load SPEC`` runs the client and writes its records to a file. Every loop is bounded
by the schedule and the client exits by itself.
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
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._harness import RESULTS_DIR, ROOT, Row, child_argv, log, median, note, progress, serve_child

PILLAR = "resilience"

RATE = 50.0
"""Client requests per second to A."""
DEADLINE_S = 2.0
C_SLOTS = 6
C_WORK_S = 0.020
"""C's capacity: 6 / 0.020 = 300 requests per second (6x the client's rate)."""
ATTEMPTS = 3
GOAL_AMPLIFICATION = 1.2
CONTROL = "/_garrison/bench"
CHAIN = ("a", "b", "c")
NAIVE, GARRISON = "naive retries", "garrison"

GARRISON_POLICIES: dict[str, Any] = {
    "retry": {"max_attempts": ATTEMPTS},
    "retry_budget": {"ratio": 0.2, "min_retries_per_second": 10.0},
    "breaker": {
        "failure_rate_threshold": 0.5,
        "sliding_window_type": "count",
        "sliding_window_size": 20,
        "minimum_number_of_calls": 20,
        "wait_duration_in_open": 2.0,
        "permitted_calls_in_half_open": 5,
    },
}
"""``[resilience.defaults]`` of the garrison set-up: every edge (A->B, B->C). The retry budget
is garrison's default, written out; the breaker counts the last 20 calls and waits 2 s when open
(the defaults, 100 calls and 60 s as in resilience4j, are sized for long-lived production
traffic: with a 60 s wait the breaker would still be open at the end of this run)."""


@dataclass(frozen=True)
class Timeline:
    """Seconds of healthy traffic, of C failing, and after C returns."""

    before: float
    failing: float
    after: float

    @property
    def fail_start(self) -> float:
        return self.before

    @property
    def fail_end(self) -> float:
        return self.before + self.failing

    @property
    def total(self) -> float:
        return self.before + self.failing + self.after


FULL = Timeline(before=5.0, failing=30.0, after=15.0)
QUICK = Timeline(before=3.0, failing=8.0, after=8.0)


# -- the services (child processes) ----------------------------------------------------------


def _serve(spec: dict[str, Any]) -> None:
    import uvicorn
    from starlette.responses import Response

    from garrison.core import GarrisonError, parse_config
    from garrison.resilience import ATTEMPT_HEADER
    from garrison.service import Service

    name: str = spec["name"]
    naive = spec["mode"] == "naive"
    svc = Service(name)
    arrivals: list[tuple[float, int]] = []
    """(time, attempt number the caller gave it) of every /work request, on arrival."""
    state = {"failing": False}
    slots = asyncio.Semaphore(C_SLOTS)

    if name == "c":

        @svc.get("/work")
        async def work_c() -> Any:
            async with slots:
                await asyncio.sleep(C_WORK_S)
            if state["failing"]:
                return Response(b'{"error":"backend down"}', status_code=503)
            return {"ok": True}

        @svc.post(f"{CONTROL}/fail")
        async def fail(on: bool) -> dict[str, Any]:
            state["failing"] = on
            return {"failing": on, "at": time.monotonic()}

    else:
        callee = CHAIN[CHAIN.index(name) + 1]
        client = svc.client(callee)

        if naive:

            @svc.get("/work")
            async def work_naive() -> Any:
                # The plain retry loop people write: 3 attempts, backoff, no budget, no signal.
                for attempt in range(ATTEMPTS):
                    try:
                        r = await client.get("/work")
                        if r.status < 500:
                            return Response(r.content, r.status, media_type="application/json")
                    except GarrisonError:
                        pass
                    if attempt < ATTEMPTS - 1:
                        await asyncio.sleep(random.uniform(0, 0.05 * 2**attempt))
                return Response(b'{"error":"upstream failed"}', status_code=503)

        else:

            @svc.get("/work")
            async def work_garrison() -> Any:
                r = await client.get("/work")
                return r.raise_for_status().json()

    @svc.get(f"{CONTROL}/log")
    async def get_log() -> dict[str, Any]:
        return {"arrivals": arrivals}

    app = svc.asgi()
    attempt_key = ATTEMPT_HEADER.encode()

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        # Outermost: every request to /work is counted as it arrives, before garrison's door.
        if scope["type"] == "http" and scope["path"] == "/work":
            attempt = 1
            for key, value in scope["headers"]:
                if key == attempt_key:
                    attempt = int(value)
            arrivals.append((time.monotonic(), attempt))
        await app(scope, receive, send)

    services = {
        n: {"app": f"bench.resilience_retry_storm:{n}", "port": 1, "instances": [url]}
        for n, url in spec["urls"].items()
    }
    data: dict[str, Any] = {"services": services}
    if not naive:
        data["resilience"] = {"defaults": GARRISON_POLICIES}
    svc.configure(parse_config(data))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        counting, log_level="warning", access_log=False, lifespan="on", backlog=4096
    )
    print(sock.getsockname()[1], flush=True)
    uvicorn.Server(config).run(sockets=[sock])


# -- the client (child process) --------------------------------------------------------------


async def _call(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    from garrison.core import DEADLINE_HEADER

    tl = Timeline(**spec["timeline"])
    url, c_url = spec["url"], spec["c_url"]
    records: list[tuple[float, float, int]] = []
    controls: list[tuple[float, bool]] = []
    budget = str(int(DEADLINE_S * 1000))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # Warm the chain (connections, first-call paths) before the clock starts; these calls
        # come before t0 and are not counted.
        async def warm() -> None:
            async with session.get(f"{url}/work") as r:
                await r.read()

        for _ in range(4):
            await asyncio.gather(*(warm() for _ in range(5)))
        t0 = time.monotonic()

        async def one() -> None:
            start = time.monotonic()
            status = 0
            try:
                async with asyncio.timeout(DEADLINE_S):
                    async with session.get(f"{url}/work", headers={DEADLINE_HEADER: budget}) as r:
                        await r.read()
                        status = r.status
            except TimeoutError:
                status = -1
            except aiohttp.ClientError:
                status = -2
            records.append((start - t0, time.monotonic() - start, status))

        async def control(at: float, on: bool) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            async with session.post(f"{c_url}{CONTROL}/fail?on={str(on).lower()}") as r:
                await r.read()
            controls.append((time.monotonic() - t0, on))

        pending: set[asyncio.Task[None]] = set()

        def spawn(coro: Any) -> None:
            task = asyncio.create_task(coro)
            pending.add(task)
            task.add_done_callback(pending.discard)

        spawn(control(tl.fail_start, True))
        spawn(control(tl.fail_end, False))
        for i in range(int(tl.total * RATE)):
            delay = t0 + i / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            spawn(one())
        if pending:  # every call has its own timeout: this wait is bounded
            await asyncio.wait(pending, timeout=DEADLINE_S + 2.0)
        for task in pending:
            task.cancel()
    return {"t0": t0, "records": records, "controls": controls}


def _load(spec: dict[str, Any]) -> None:
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(_call(spec))
    Path(spec["out"]).write_text(json.dumps(result))


# -- orchestration ---------------------------------------------------------------------------


def _child(role: str, spec: dict[str, Any]) -> list[str]:
    return child_argv("bench.resilience_retry_storm", role, spec)


def _service(spec: dict[str, Any]) -> AbstractContextManager[str]:
    """One service in a child process; yields its URL and stops it afterwards."""
    return serve_child("bench.resilience_retry_storm", spec, name=f"service {spec['name']}")


@dataclass
class Outcome:
    """One set-up's run: the client's records and each service's arrivals (seconds from t0)."""

    mode: str
    records: list[tuple[float, float, int]]
    arrivals: dict[str, list[tuple[float, int]]]
    pipelines: list[dict[str, Any]]
    """The garrison pipelines of A and B at the end (their retry and breaker counters)."""


def _run_mode(mode: str, tl: Timeline) -> Outcome:
    urls: dict[str, str] = {}
    with ExitStack() as stack:
        for name in reversed(CHAIN):  # C first: each service is given its callee's URL
            spec = {"name": name, "mode": mode, "urls": dict(urls)}
            urls[name] = stack.enter_context(_service(spec))
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        out = Path(tmp) / "client.json"
        spec = {
            "url": urls["a"],
            "c_url": urls["c"],
            "timeline": {"before": tl.before, "failing": tl.failing, "after": tl.after},
            "out": str(out),
        }
        subprocess.run(_child("load", spec), cwd=ROOT, check=True, timeout=tl.total + 30)
        gen = json.loads(out.read_text())
        t0 = gen["t0"]
        arrivals: dict[str, list[tuple[float, int]]] = {}
        pipelines: list[dict[str, Any]] = []
        for name, url in urls.items():
            with urllib.request.urlopen(f"{url}{CONTROL}/log", timeout=10) as resp:
                arrivals[name] = [(t - t0, a) for t, a in json.loads(resp.read())["arrivals"]]
            if name != "c":
                with urllib.request.urlopen(f"{url}/_garrison/resilience", timeout=10) as resp:
                    pipelines += json.loads(resp.read())["pipelines"]
    records = [(t, lat, status) for t, lat, status in gen["records"]]
    return Outcome(mode, records, arrivals, pipelines)


# -- analysis --------------------------------------------------------------------------------


def _sent(o: Outcome, a: float, b: float) -> int:
    return sum(1 for r in o.records if a <= r[0] < b)


def _received(o: Outcome, name: str, a: float, b: float) -> int:
    return sum(1 for t, _ in o.arrivals[name] if a <= t < b)


def _success(o: Outcome, a: float, b: float) -> float:
    recs = [r for r in o.records if a <= r[0] < b]
    ok = sum(1 for r in recs if r[2] == 200 and r[1] <= DEADLINE_S)
    return ok / len(recs) if recs else math.nan


def _recovery(o: Outcome, tl: Timeline) -> float | None:
    """Seconds after C returns until 1 s windows have >= 95% success for 2 s in a row."""
    t, run_start, good_run = tl.fail_end, tl.fail_end, 0
    while t + 1.0 <= tl.total + 1e-9:
        if _success(o, t, t + 1.0) >= 0.95:
            if good_run == 0:
                run_start = t
            good_run += 1
            if good_run >= 5:
                return run_start - tl.fail_end
        else:
            good_run = 0
        t += 0.25
    return None


def _peak(o: Outcome, name: str, a: float, b: float) -> float:
    """The most requests ``name`` received in any 1 s window in [a, b), per second."""
    best, t = 0, a
    while t + 1.0 <= b + 1e-9:
        best = max(best, _received(o, name, t, t + 1.0))
        t += 0.25
    return float(best)


def _rows(by: dict[str, Outcome], tl: Timeline) -> list[Row]:
    fa, fb = tl.fail_start, tl.fail_end
    rows: list[Row] = []

    def amp(o: Outcome, name: str) -> float:
        return _received(o, name, fa, fb) / max(1, _sent(o, fa, fb))

    g, n = by[GARRISON], by[NAIVE]
    mine = amp(g, "c")
    rows.append(
        Row(
            "load amplification on C during the failure",
            "x",
            mine,
            peers={NAIVE: amp(n, "c")},
            better="lower",
            limit=GOAL_AMPLIFICATION,
            notes=f"requests C received ÷ requests the client sent, over the {tl.failing:.0f} s "
            f"of failure; goal <= {GOAL_AMPLIFICATION}x (limit column): "
            f"{'met' if mine <= GOAL_AMPLIFICATION else 'NOT met'}",
        )
    )
    rows.append(
        Row(
            "load amplification on B during the failure",
            "x",
            amp(g, "b"),
            peers={NAIVE: amp(n, "b")},
            better="lower",
            limit=1.0,
            notes="requests B received ÷ requests the client sent (A's retries)",
        )
    )
    rows.append(
        Row(
            "C's busiest second during the failure ÷ client rate",
            "x",
            _peak(g, "c", fa, fb) / RATE,
            peers={NAIVE: _peak(n, "c", fa, fb) / RATE},
            better="lower",
            limit=1.0,
            notes=f"1 s windows sliding by 0.25 s; client rate {RATE:.0f} req/s, C's capacity "
            f"{C_SLOTS / C_WORK_S:.0f} req/s",
        )
    )
    first = min(fb, fa + 5.0)
    rows.append(
        Row(
            f"amplification on C, first {first - fa:.0f} s of the failure",
            "x",
            _received(g, "c", fa, first) / max(1, _sent(g, fa, first)),
            peers={NAIVE: _received(n, "c", fa, first) / max(1, _sent(n, fa, first))},
            better="lower",
            limit=1.0,
            notes="before the breakers open, only the retry budget holds garrison's retries",
        )
    )
    rec = {k: _recovery(o, tl) for k, o in by.items()}
    peers = {k: v for k, v in rec.items() if k != GARRISON and v is not None}
    never = [k for k, v in rec.items() if v is None]
    rows.append(
        Row(
            "time to recover after C returns",
            "s",
            rec[GARRISON],
            peers=peers,
            better="lower",
            notes="until the client's 1 s success ratio is >= 95% for 2 s in a row (by send "
            f"time, 0.25 s steps, at most {tl.after:.0f} s)"
            + (f"; never: {', '.join(never)}" if never else ""),
        )
    )
    for label, a, b in (
        ("before the failure", 0.0, fa),
        ("during the failure", fa, fb),
        ("after C returns", fb, tl.total),
    ):
        rows.append(
            Row(
                f"client success ratio {label}",
                "%",
                100 * _success(g, a, b),
                peers={NAIVE: 100 * _success(n, a, b)},
                better="higher",
                limit=100.0,
                notes="200 within the 2 s deadline",
            )
        )
    return rows


def _pipeline_notes(o: Outcome) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in o.pipelines:
        if not p.get("calls"):
            continue  # the doors' pipelines (no policy) and unused edges
        entry = {"attempts": p.get("attempts"), "calls": p.get("calls")}
        if "retry" in p:
            entry["retries"] = p["retry"]["retries"]
            entry["gave_up"] = p["retry"]["gave_up"]
        if "breaker" in p:
            entry["breaker"] = p["breaker"]["state"]
            entry["breaker_refused"] = p["breaker"]["not_permitted"]
        out[p["name"]] = entry
    return out


# -- the picture -----------------------------------------------------------------------------


def _draw(by: dict[str, Outcome], tl: Timeline, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = 0.5
    edges = [i * step for i in range(int(tl.total / step) + 1)]
    fig, (rate_ax, ok_ax) = plt.subplots(
        2, 1, figsize=(12, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    style = {NAIVE: ("#d62728", "naive retries (3 at A x 3 at B)"), GARRISON: ("#1f77b4", "")}
    for mode, o in by.items():
        color, label = style[mode]
        label = label or "garrison (breaker + budget + one-layer retry)"
        mids = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
        rate = [_received(o, "c", a, b) / step for a, b in itertools.pairwise(edges)]
        ok = [100 * _success(o, a, b) for a, b in itertools.pairwise(edges)]
        rate_ax.plot(mids, rate, color=color, lw=1.6, label=f"{label}: requests C received")
        ok_ax.plot(mids, ok, color=color, lw=1.6, label=label)
    rate_ax.axhline(RATE, color="k", ls=":", lw=1, label=f"client rate ({RATE:.0f} req/s)")
    rate_ax.axhline(
        RATE * GOAL_AMPLIFICATION, color="#2ca02c", ls="--", lw=1, label="goal: 1.2x client rate"
    )
    rate_ax.axhline(
        C_SLOTS / C_WORK_S, color="#7f7f7f", ls="-.", lw=1, label="C's capacity (slots / work)"
    )
    rate_ax.set_ylabel("requests received by C (req/s)")
    rate_ax.set_ylim(bottom=0)
    rate_ax.legend(loc="upper right", fontsize=8)
    ok_ax.set_ylabel("client success (%)")
    ok_ax.set_ylim(-5, 105)
    ok_ax.set_xlim(0, tl.total)
    ok_ax.set_xlabel("seconds (0.5 s buckets; shaded: C answers 503)")
    ok_ax.legend(loc="center right", fontsize=8)
    for ax in (rate_ax, ok_ax):
        ax.axvspan(tl.fail_start, tl.fail_end, color="#ff7f0e", alpha=0.12, lw=0)
    fig.suptitle(
        f"Retry storm: client -> A -> B -> C at {RATE:.0f} req/s; C fails for {tl.failing:.0f} s",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# -- the benchmark ---------------------------------------------------------------------------


def run(quick: bool) -> list[Row]:
    """Both set-ups on the same timeline, fresh processes each; then the table and picture."""
    tl = QUICK if quick else FULL
    by: dict[str, Outcome] = {}
    with progress("retry storm set-ups", 2) as advance:
        for mode, key in ((NAIVE, "naive"), (GARRISON, "garrison")):
            o = _run_mode(key, tl)
            by[mode] = o
            lat = [r[1] * 1000 for r in o.records if r[2] == 200]
            advance(
                f"{mode}: {len(o.records)} client requests, C received {len(o.arrivals['c'])}, "
                f"p50 of successes {median(lat):.0f} ms"
            )
    rows = _rows(by, tl)
    RESULTS_DIR.mkdir(exist_ok=True)
    picture = RESULTS_DIR / "resilience_retry_storm.png"
    _draw(by, tl, picture)
    log(f"wrote {picture.relative_to(RESULTS_DIR.parent.parent)}")
    g = by[GARRISON]
    retried = sum(1 for _, a in g.arrivals["b"] if a > 1)
    note(
        "setup",
        f"client -> A -> B -> C, each a garrison Service under uvicorn in its own process; "
        f"client open loop at {RATE:.0f} req/s, deadline {DEADLINE_S:.0f} s; C has {C_SLOTS} "
        f"slots x {C_WORK_S * 1000:.0f} ms ({C_SLOTS / C_WORK_S:.0f} req/s) and answers 503 after "
        f"its work for {tl.failing:.0f} s (from t={tl.fail_start:.0f} s); "
        f"{tl.total:.0f} s per set-up",
    )
    note("garrison policies (resilience.defaults: every edge)", GARRISON_POLICIES)
    note(
        "naive retries",
        f"A and B: for attempt in range({ATTEMPTS}): call; retry any 5xx or error after "
        "uniform(0, 50 ms x 2^attempt); no budget, no breaker, no cross-layer signal",
    )
    note("garrison pipelines at the end", _pipeline_notes(g))
    note(
        "garrison: A's retries seen at B",
        f"{retried} requests arrived at B with garrison-attempt >= 2 (A retried B's answer)",
    )
    note("ratio", "garrison ÷ naive retries")
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
