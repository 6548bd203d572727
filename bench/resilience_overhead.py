"""Resilience overhead: what each policy adds to a call that succeeds, garrison against its peers.

The call under protection is ``async def f(): return 1``: it never suspends, so everything
measured beyond a bare ``await f()`` is the policy's own cost. Each contender is one *variant*
(a policy or a composition, in one form of one library); every variant runs a batch of calls in a
plain loop and the time per call is taken from the whole batch. Batches are sized by a short
calibration to last about the same time, and run interleaved: each round runs every variant once,
in an order shuffled per round, with bare-call batches at the start, middle and end of the round,
so that a burst of load from elsewhere on the machine hits every contender alike. The cost a
variant adds is its time per call minus the round's bare call (median of the bare batches),
paired round by round; the table shows the median over rounds (wall clock, and CPU time of the
process for the CPU rows).

Contenders, by policy (peers in their documented forms; when a library has several, the row shows
its cheapest and the notes the rest):

* timeout — garrison ``Pipeline(timeout=1.0)`` enforcing it with the shared
  :class:`~garrison.core.TimeoutWheel` (``native_timeout=False``); ``asyncio.timeout`` (and
  ``asyncio.wait_for``); hyx ``timeout``. tenacity and stamina have no per-attempt timeout:
  their ``stop_after_delay`` / ``timeout=`` only stop *retrying*, they never cancel a call.
* retry — garrison ``RetryPolicy()`` (3 attempts, full jitter, with its default retry budget);
  tenacity ``@retry`` and ``AsyncRetrying``; stamina ``@retry``, ``retry_context`` and
  ``AsyncRetryingCaller``; hyx ``retry`` — all 3 attempts.
* circuit breaker — garrison ``BreakerConfig()``; aiobreaker; purgatory (decorator, and a breaker
  fetched once and reused); hyx ``consecutive_breaker``. pybreaker is sync only: it is compared
  with garrison's sync core (``CircuitBreaker.try_acquire()`` + ``on_success()``) on a sync
  ``def g(): return 1``.
* bulkhead — garrison ``BulkheadConfig()`` (25 slots, no queue); hyx ``bulkhead(25, 25)``; a bare
  ``asyncio.Semaphore(25)`` as the baseline.
* adaptive limit — garrison ``LimiterConfig()`` (Gradient2); no Python peer (Netflix
  concurrency-limits is a JVM library).
* full pipeline — garrison with timeout + breaker + bulkhead + adaptive limit + retry, with the
  timeout enforced by the transport (``native_timeout=True``, as the HTTP client runs it) and by
  the pipeline; against the closest peer compositions in the same order (retry > breaker >
  bulkhead > timeout), with and without their timeout layer.

garrison runs through ``Pipeline.execute(attempt, native_timeout=...)`` with a prebuilt
``attempt`` (the inter-service client's form); the notes also give ``@resilient`` (the decorator
form, comparable with the peers' decorators).
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import aiobreaker
import hyx.bulkhead
import hyx.circuitbreaker
import hyx.retry
import hyx.timeout
import pybreaker
import stamina
import tenacity
from purgatory import AsyncCircuitBreakerFactory

from garrison.resilience import (
    BreakerConfig,
    BulkheadConfig,
    CircuitBreaker,
    LimiterConfig,
    Pipeline,
    PolicyConfig,
    RetryPolicy,
    resilient,
)

from ._harness import Row, median, note, percentile, progress

PILLAR = "resilience"

GOAL_FULL_US = 3.0
"""Issue 4: the full pipeline adds under 3 µs per call."""

BARE, BARE_SYNC = "bare", "bare sync"
GARRISON = "garrison"
POLICIES = ("timeout", "retry", "breaker", "breaker (sync)", "bulkhead", "limiter")
FULL_NATIVE, FULL_WHEEL = "full · native timeout", "full · wheel timeout"


@dataclass(frozen=True)
class Plan:
    """How long to run: rounds, and the target duration of one batch."""

    rounds: int
    batch_s: float
    calibrate_calls: int


FULL = Plan(rounds=21, batch_s=0.030, calibrate_calls=300)
QUICK = Plan(rounds=5, batch_s=0.006, calibrate_calls=100)


@dataclass
class Variant:
    """One contender: a call in one form of one library, for one policy (row)."""

    row: str
    who: str
    """``garrison`` or the peer's column name."""
    form: str
    call: Callable[[], Any]
    sync: bool = False
    main: bool = True
    """Candidate for the row's value (False: reported in the notes only)."""
    n: int = 0
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    """Per-call µs of each round (wall, process CPU)."""


# -- the protected calls ---------------------------------------------------------------------


async def f() -> int:
    return 1


def g() -> int:
    return 1


def attempt(_timeout: float | None) -> Awaitable[int]:
    return f()


class _Boom(Exception):
    """Never raised: the exception type the peers are told to retry on / count."""


# -- the contenders --------------------------------------------------------------------------


def _pipeline(cfg: PolicyConfig, native: bool) -> Callable[[], Awaitable[int]]:
    pipeline = Pipeline(cfg, name="bench")
    execute = pipeline.execute

    async def call() -> int:
        return await execute(attempt, native_timeout=native)

    return call


def _resilient(cfg: PolicyConfig) -> Callable[[], Awaitable[int]]:
    return resilient(cfg, name="bench")(f)


def garrison_variants() -> list[Variant]:
    singles = {
        "timeout": PolicyConfig(timeout=1.0),
        "retry": PolicyConfig(retry=RetryPolicy()),
        "breaker": PolicyConfig(breaker=BreakerConfig()),
        "bulkhead": PolicyConfig(bulkhead=BulkheadConfig()),
        "limiter": PolicyConfig(limiter=LimiterConfig()),
    }
    full = PolicyConfig(
        timeout=1.0,
        retry=RetryPolicy(),
        breaker=BreakerConfig(),
        bulkhead=BulkheadConfig(),
        limiter=LimiterConfig(),
    )
    out = [Variant("empty", GARRISON, "execute", _pipeline(PolicyConfig(), native=False))]
    for row, cfg in singles.items():
        out.append(Variant(row, GARRISON, "execute", _pipeline(cfg, native=False)))
        out.append(Variant(row, GARRISON, "@resilient", _resilient(cfg), main=False))
    out += [
        Variant(FULL_NATIVE, GARRISON, "execute(native_timeout=True)", _pipeline(full, True)),
        Variant(FULL_WHEEL, GARRISON, "execute(native_timeout=False)", _pipeline(full, False)),
        Variant(FULL_WHEEL, GARRISON, "@resilient", _resilient(full), main=False),
    ]

    core = CircuitBreaker(BreakerConfig(), name="bench")
    try_acquire, on_success, monotonic = core.try_acquire, core.on_success, time.monotonic

    def sync_core() -> int:
        if not try_acquire():
            raise core.rejection()
        start = monotonic()
        result = g()
        on_success(monotonic() - start)
        return result

    out.append(Variant("breaker (sync)", GARRISON, "try_acquire+on_success", sync_core, sync=True))
    return out


def timeout_variants() -> list[Variant]:
    async def asyncio_timeout() -> int:
        async with asyncio.timeout(1.0):
            return await f()

    async def asyncio_wait_for() -> int:
        return await asyncio.wait_for(f(), 1.0)

    async def hyx_cm() -> int:
        async with hyx.timeout.timeout(1.0):
            return await f()

    return [
        Variant("timeout", "asyncio", "asyncio.timeout", asyncio_timeout),
        Variant("timeout", "asyncio", "asyncio.wait_for", asyncio_wait_for),
        Variant("timeout", "hyx", "async with timeout", hyx_cm),
        Variant("timeout", "hyx", "@timeout", hyx.timeout.timeout(1.0)(f)),
    ]


def _tenacity_retry() -> Callable[[Callable[..., Any]], Any]:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.05, max=2.0),
        retry=tenacity.retry_if_exception_type(_Boom),
        reraise=True,
    )


def retry_variants() -> list[Variant]:
    def tenacity_retrying() -> tenacity.AsyncRetrying:
        return tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(3),
            wait=tenacity.wait_random_exponential(multiplier=0.05, max=2.0),
            retry=tenacity.retry_if_exception_type(_Boom),
            reraise=True,
        )

    async def tenacity_loop() -> int:
        async for att in tenacity_retrying():
            with att:
                result = await f()
        return result

    async def stamina_ctx() -> int:
        async for att in stamina.retry_context(on=_Boom, attempts=3):
            with att:
                result = await f()
        return result

    caller = stamina.AsyncRetryingCaller(attempts=3).on(_Boom)

    async def stamina_caller() -> int:
        result: int = await caller(f)
        return result

    return [
        Variant("retry", "tenacity", "@retry", _tenacity_retry()(f)),
        Variant("retry", "tenacity", "AsyncRetrying loop", tenacity_loop),
        Variant("retry", "stamina", "@retry", stamina.retry(on=_Boom, attempts=3)(f)),
        Variant("retry", "stamina", "retry_context", stamina_ctx),
        Variant("retry", "stamina", "AsyncRetryingCaller", stamina_caller),
        Variant("retry", "hyx", "@retry", hyx.retry.retry(on=_Boom, attempts=3)(f)),
    ]


async def breaker_variants() -> list[Variant]:
    aio = aiobreaker.CircuitBreaker()
    factory = AsyncCircuitBreakerFactory()
    await factory.initialize()
    reused = await factory.get_breaker("bench-reused")

    async def purgatory_reused() -> int:
        async with reused:
            return await f()

    sync_breaker = pybreaker.CircuitBreaker()

    def pybreaker_call() -> int:
        result: int = sync_breaker.call(g)
        return result

    return [
        Variant("breaker", "aiobreaker", "@breaker", aio(f)),
        Variant("breaker", "purgatory", "@factory(circuit)", factory("bench")(f)),
        Variant("breaker", "purgatory", "breaker fetched once", purgatory_reused),
        Variant(
            "breaker", "hyx", "@consecutive_breaker", hyx.circuitbreaker.consecutive_breaker()(f)
        ),
        Variant("breaker (sync)", "pybreaker", "breaker.call", pybreaker_call, sync=True),
        Variant("breaker (sync)", "pybreaker", "@breaker", sync_breaker(g), sync=True),
    ]


def bulkhead_variants() -> list[Variant]:
    sem = asyncio.Semaphore(25)

    async def semaphore() -> int:
        async with sem:
            return await f()

    return [
        Variant("bulkhead", "hyx", "@bulkhead(25, 25)", hyx.bulkhead.bulkhead(25, 25)(f)),
        Variant("bulkhead", "asyncio.Semaphore", "async with Semaphore(25)", semaphore),
    ]


def composition_variants() -> list[Variant]:
    """Peers composed like garrison's pipeline: retry > breaker > bulkhead > (timeout) > call."""
    out: list[Variant] = []
    for row, with_timeout in ((FULL_NATIVE, False), (FULL_WHEEL, True)):
        sem = asyncio.Semaphore(25)

        async def guarded(sem: asyncio.Semaphore = sem, with_timeout: bool = with_timeout) -> int:
            async with sem:
                if with_timeout:
                    async with asyncio.timeout(1.0):
                        return await f()
                return await f()

        aio = aiobreaker.CircuitBreaker()
        out.append(
            Variant(
                row,
                "tenacity",
                "tenacity > aiobreaker > Semaphore",
                _tenacity_retry()(aio(guarded)),
            )
        )
        aio2 = aiobreaker.CircuitBreaker()
        out.append(
            Variant(
                row,
                "stamina",
                "stamina > aiobreaker > Semaphore",
                stamina.retry(on=_Boom, attempts=3)(aio2(guarded)),
            )
        )
        inner: Callable[[], Awaitable[int]] = f
        if with_timeout:
            inner = hyx.timeout.timeout(1.0)(f)

        @hyx.retry.retry(on=_Boom, attempts=3)
        @hyx.circuitbreaker.consecutive_breaker()
        @hyx.bulkhead.bulkhead(25, 25)
        async def hyx_all(inner: Callable[[], Awaitable[int]] = inner) -> int:
            return await inner()

        out.append(Variant(row, "hyx", "retry > breaker > bulkhead", hyx_all))
    return out


# -- measuring -------------------------------------------------------------------------------


async def timed(v: Variant, n: int) -> tuple[float, float]:
    """``n`` calls of ``v`` in a loop: (wall µs, CPU µs) per call."""
    call = v.call
    gc.collect()
    clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    if v.sync:
        c0, t0 = cpu_clock(), clock()
        for _ in range(n):
            call()
        t1, c1 = clock(), cpu_clock()
    else:
        c0, t0 = cpu_clock(), clock()
        for _ in range(n):
            await call()
        t1, c1 = clock(), cpu_clock()
    await asyncio.sleep(0)  # let the loop run its timers (the wheel's ticker) between batches
    return (t1 - t0) / n / 1e3, (c1 - c0) / n / 1e3


async def calibrate(variants: list[Variant], plan: Plan) -> None:
    """Size each variant's batch to last about ``plan.batch_s``."""
    for v in variants:
        await timed(v, plan.calibrate_calls)  # warm up
        per_call, _ = await timed(v, plan.calibrate_calls)
        v.n = max(plan.calibrate_calls, int(plan.batch_s / (per_call / 1e6)))


async def measure(variants: list[Variant], bare: Variant, bare_sync: Variant, plan: Plan) -> None:
    """Every variant once per round in a shuffled order, bare batches at start, middle, end."""
    rng = random.Random(4)
    with progress("resilience overhead", plan.rounds) as advance:
        for r in range(plan.rounds):
            order = variants[:]
            rng.shuffle(order)
            half = len(order) // 2
            bares: list[tuple[float, float]] = []
            bares_sync: list[tuple[float, float]] = []
            for part in (order[:half], order[half:], []):
                bares.append(await timed(bare, bare.n))
                bares_sync.append(await timed(bare_sync, bare_sync.n))
                for v in part:
                    w, c = await timed(v, v.n)
                    v.wall.append(w)
                    v.cpu.append(c)
            for b, samples in ((bare, bares), (bare_sync, bares_sync)):
                b.wall.append(median([s[0] for s in samples]))
                b.cpu.append(median([s[1] for s in samples]))
            advance(f"round {r + 1}: bare {bare.wall[-1] * 1e3:.0f} ns")


def added(v: Variant, bare: Variant, cpu: bool = False, q: float = 0.5) -> float:
    """µs ``v`` adds over the bare call: paired by round, the ``q`` quantile over rounds."""
    mine, base = (v.cpu, bare.cpu) if cpu else (v.wall, bare.wall)
    return percentile([a - b for a, b in zip(mine, base, strict=True)], q)


# -- reporting -------------------------------------------------------------------------------

SINGLES: tuple[tuple[str, str, str], ...] = (
    ("timeout", "timeout", "tenacity and stamina have no per-attempt timeout"),
    ("retry", "retry", ""),
    (
        "breaker",
        "circuit breaker",
        "garrison: 100-call window, failure and slow-call rates; aiobreaker, purgatory and hyx "
        "count consecutive failures",
    ),
    ("breaker (sync)", "circuit breaker, sync (garrison core)", "sync `def g(): return 1`"),
    ("bulkhead", "bulkhead", "asyncio.Semaphore: baseline, not a bulkhead (no rejection)"),
    ("limiter", "adaptive limit", "no Python peer (Netflix concurrency-limits is JVM)"),
)
FULLS: tuple[tuple[str, str], ...] = (
    (FULL_NATIVE, "full pipeline, transport enforces timeout"),
    (FULL_WHEEL, "full pipeline, pipeline enforces timeout"),
)
BASELINES = frozenset({"asyncio.Semaphore"})
"""Columns shown for reference but not peers in the verdict."""


def make_row(
    row: str,
    label: str,
    variants: list[Variant],
    bare: Variant,
    *,
    cpu: bool,
    extra: str = "",
) -> Row:
    """One table row: garrison's main form against each peer's cheapest form."""
    best: dict[str, tuple[float, str]] = {}
    other: dict[str, float] = {}
    for v in (v for v in variants if v.row == row):
        cost = added(v, bare, cpu)
        if not v.main:
            other[f"{v.who} {v.form}"] = cost
        elif v.who not in best or cost < best[v.who][0]:
            if v.who in best:
                other[f"{v.who} {best[v.who][1]}"] = best[v.who][0]
            best[v.who] = (cost, v.form)
        else:
            other[f"{v.who} {v.form}"] = cost
    g = best.pop(GARRISON, (None, ""))[0]
    peers = {k: c for k, (c, _) in best.items()}
    notes: list[str] = []
    if g is not None and peers:
        notes.append("÷ " + ", ".join(f"{k} {g / c:.2f}x" for k, c in peers.items() if c > 0))
    if other:
        notes.append("also: " + ", ".join(f"{k} {x:.2f}" for k, x in other.items()))
    if extra:
        notes.append(extra)
    contenders = [k for k in peers if k not in BASELINES]
    vs = min(contenders, key=lambda k: peers[k]) if contenders else None
    return Row(
        f"{label} · {'CPU' if cpu else 'wall'}",
        "µs",
        g,
        peers=peers,
        better="lower",
        vs=vs,
        notes="; ".join(notes),
    )


def verdict(rows: list[Row]) -> str:
    """Whether garrison is cheaper than every peer, one clause per policy."""
    parts = []
    for row in rows:
        if row.garrison is None:
            continue
        name = row.metric.rpartition(" · ")[0]
        peers = {k: c for k, c in row.peers.items() if k not in BASELINES}
        if not peers:
            parts.append(f"{name}: {row.garrison:.2f} µs (no peer)")
            continue
        lost = [k for k, c in peers.items() if row.garrison >= c]
        parts.append(
            f"{name}: "
            + ("cheaper than all" if not lost else "NOT cheaper than " + ", ".join(lost))
        )
    return "; ".join(parts)


async def run(quick: bool) -> list[Row]:
    """Calibrate, measure in rounds, and build the table."""
    plan = QUICK if quick else FULL
    bare = Variant("bare", BARE, "await f()", f)
    bare_sync = Variant("bare", BARE_SYNC, "g()", g, sync=True)
    variants = (
        garrison_variants()
        + timeout_variants()
        + retry_variants()
        + await breaker_variants()
        + bulkhead_variants()
        + composition_variants()
    )
    await calibrate([bare, bare_sync, *variants], plan)
    await measure(variants, bare, bare_sync, plan)

    empty = next(v for v in variants if v.row == "empty")
    rows: list[Row] = [
        Row(
            "bare call `await f()` · CPU",
            "µs",
            median(bare.cpu),
            better=None,
            notes=f"per call, not added; sync `g()` {median(bare_sync.cpu) * 1e3:.0f} ns",
        ),
        Row(
            "garrison empty pipeline · CPU",
            "µs",
            added(empty, bare, cpu=True),
            better=None,
            notes="PolicyConfig() through execute(): the pipeline's fixed cost, no policy",
        ),
    ]
    by_kind: dict[bool, list[Row]] = {}
    for cpu in (True, False):
        kind = by_kind[cpu] = []
        for row, label, extra in SINGLES:
            base = bare_sync if row == "breaker (sync)" else bare
            kind.append(make_row(row, label, variants, base, cpu=cpu, extra=extra))
        for row, label in FULLS:
            r = make_row(row, label, variants, bare, cpu=cpu)
            mine = next(v for v in variants if v.row == row and v.who == GARRISON and v.main)
            lo, hi = (added(mine, bare, cpu, q) for q in (0.25, 0.75))
            if r.garrison is not None:
                ok = "met" if r.garrison < GOAL_FULL_US else "NOT met"
                r.notes = (
                    f"goal < {GOAL_FULL_US:.0f} µs: {ok} (rounds p25-p75 {lo:.2f}-{hi:.2f}); "
                    + r.notes
                )
            kind.append(r)
        rows += kind
    note("verdict (CPU)", verdict(by_kind[True]))
    note("verdict (wall)", verdict(by_kind[False]))
    note(
        "setup",
        f"protected call `async def f(): return 1`; {plan.rounds} rounds, batches of ~"
        f"{plan.batch_s * 1e3:.0f} ms per variant, order shuffled per round, bare batches at "
        "start/middle/end of each round; value = µs per call added over the round's bare call, "
        "median over rounds. CPU = process CPU time (robust to preemption by other work on "
        "the machine), wall = perf_counter. 'also' = other forms: garrison @resilient and the "
        "peers' costlier forms",
    )
    note(
        "forms",
        "garrison: Pipeline.execute(attempt, native_timeout=False unless said) with a prebuilt "
        "attempt; each peer's cheapest documented form — asyncio: asyncio.timeout (wait_for); "
        "hyx: async with timeout (@timeout), decorators elsewhere; tenacity: @retry "
        "(AsyncRetrying loop); stamina: AsyncRetryingCaller (@retry, retry_context); "
        "aiobreaker: @breaker; purgatory: a breaker fetched once and reused (@factory(circuit) "
        "fetches it per call); pybreaker: breaker.call (@breaker). Peer compositions: retry > "
        "aiobreaker > Semaphore(25) > asyncio.timeout for tenacity and stamina; hyx retry > "
        "consecutive_breaker > bulkhead > timeout; the timeout layer only in the "
        "'pipeline enforces timeout' rows; no peer composition has an adaptive limit",
    )
    note(
        "hyx",
        "hyx 0.0.2 is a real, working alpha library (timeout, retry, consecutive breaker, "
        "bulkhead, fallback, rate limit), not a stub; its @timeout runs each call in a new "
        "task under asyncio.wait_for",
    )
    note(
        "versions",
        ", ".join(
            f"{p} {version(p)}"
            for p in ("tenacity", "stamina", "aiobreaker", "purgatory", "pybreaker", "hyx")
        ),
    )
    return rows
