"""Sync callables: ``@resilient`` on a plain ``def`` gives a plain wrapper and a SyncPipeline
running the same policies on the same cores, without an event loop, safe across threads."""

from __future__ import annotations

import asyncio
import inspect
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import (
    ConfigError,
    DeadlineExceeded,
    FakeClock,
    RemoteStatusError,
    TransportError,
    deadline_scope,
)
from garrison.resilience import (
    BreakerConfig,
    BreakerState,
    BulkheadConfig,
    Criticality,
    FixedConfig,
    GiveUp,
    HedgeConfig,
    LimiterConfig,
    Outcome,
    Pipeline,
    PolicyConfig,
    PolicyEvent,
    RateLimitConfig,
    Rejected,
    RetryBudgetConfig,
    RetryPolicy,
    SyncBulkhead,
    SyncPipeline,
    _decorator,
    resilient,
)

WAIT = 5.0  # seconds a test waits for another thread before declaring it stuck


def fixed(limit: int) -> LimiterConfig:
    return LimiterConfig(
        limit=FixedConfig(limit=limit), window=None, sheddable_fraction=1.0, default_fraction=1.0
    )


def no_wait_retry(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_backoff=0.0, max_backoff=0.0, jitter=False)


def hair_trigger(**kw: Any) -> BreakerConfig:
    base: dict[str, Any] = {
        "minimum_number_of_calls": 1,
        "sliding_window_size": 1,
        "wait_duration_in_open": 10.0,
        "permitted_calls_in_half_open": 1,
    }
    return BreakerConfig(**{**base, **kw})


def raising(*errors: BaseException) -> Callable[..., str]:
    """A function raising ``errors`` one after the other, then answering ``ok``."""
    it = iter(errors)

    def fn(*_: object) -> str:
        error = next(it, None)
        if error is not None:
            raise error
        return "ok"

    return fn


class Blocker:
    """A sync function that holds its caller until released; counts who is inside."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.inside = 0
        self.entered = 0
        self.entered_event = threading.Condition(self.lock)

    def __call__(self, *_: object) -> str:
        with self.lock:
            self.inside += 1
            self.entered += 1
            self.entered_event.notify_all()
        try:
            assert self.release.wait(WAIT), "never released"
        finally:
            with self.lock:
                self.inside -= 1
        return "done"

    def wait_entered(self, n: int) -> None:
        with self.lock:
            assert self.entered_event.wait_for(lambda: self.entered >= n, WAIT), (
                f"only {self.entered} of {n} calls got in"
            )


class Runner:
    """Runs calls in threads and keeps what each returned or raised."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: list[Any] = []
        self._lock = threading.Lock()

    def start(self, fn: Callable[[], Any]) -> threading.Thread:
        def run() -> None:
            try:
                out: Any = fn()
            except BaseException as exc:
                out = exc
            with self._lock:
                self.results.append(out)

        t = threading.Thread(target=run, daemon=True)
        self.threads.append(t)
        t.start()
        return t

    def join(self) -> list[Any]:
        for t in self.threads:
            t.join(WAIT)
            assert not t.is_alive(), "a call is stuck"
        return self.results


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner()
    yield r
    for t in r.threads:
        t.join(WAIT)


# -- decoration -------------------------------------------------------------------------------


def test_a_sync_function_gets_a_sync_wrapper_and_a_sync_pipeline() -> None:
    @resilient(retry={"max_attempts": 2}, breaker={})
    def double(x: int, *, times: int = 2) -> int:
        """Double it."""
        return x * times

    assert not inspect.iscoroutinefunction(double)
    assert (double.__name__, double.__doc__) == ("double", "Double it.")
    pipeline = double.pipeline  # type: ignore[attr-defined]
    assert isinstance(pipeline, SyncPipeline)
    assert pipeline.name.endswith("double")
    assert double(3) == 6
    assert double(3, times=3) == 9
    assert (pipeline.calls, pipeline.attempts) == (2, 2)
    assert repr(pipeline).startswith("<SyncPipeline")


def test_sync_or_async_is_decided_once_at_decoration(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[object] = []
    real = inspect.iscoroutinefunction

    def spy(obj: object) -> bool:
        asked.append(obj)
        return real(obj)

    monkeypatch.setattr(_decorator.inspect, "iscoroutinefunction", spy)

    @resilient(retry={})
    def f() -> int:
        return 1

    at_decoration = len(asked)
    assert at_decoration >= 1
    for _ in range(5):
        assert f() == 1
    assert len(asked) == at_decoration  # nothing is inspected per call


def test_async_functions_and_async_callables_still_get_the_async_pipeline() -> None:
    @resilient(retry={})
    async def f() -> int:
        return 1

    class Handler:
        async def __call__(self) -> int:
            return 2

    class SyncHandler:
        def __call__(self) -> int:
            return 3

    assert isinstance(f.pipeline, Pipeline)  # type: ignore[attr-defined]
    wrapped = resilient(retry={})(Handler())
    assert isinstance(wrapped.pipeline, Pipeline)  # type: ignore[attr-defined]
    assert asyncio.run(wrapped()) == 2
    wrapped_sync = resilient(retry={})(SyncHandler())
    assert isinstance(wrapped_sync.pipeline, SyncPipeline)  # type: ignore[attr-defined]
    assert wrapped_sync() == 3


def test_methods_can_be_decorated() -> None:
    class Sensor:
        def __init__(self) -> None:
            self.reads = 0

        @resilient(retry={"max_attempts": 2, "initial_backoff": 0, "jitter": False})
        def read(self, bus: int) -> int:
            self.reads += 1
            if self.reads == 1:
                raise TransportError("bus glitch")
            return bus * 10

    s = Sensor()
    assert s.read(4) == 40
    assert s.reads == 2
    assert Sensor.read.pipeline.attempts == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "policies",
    [
        {"timeout": 1.0},
        {"timeout": 1},
        {"timeout": 0.5, "retry": {"max_attempts": 2}},
    ],
)
def test_a_timeout_is_refused_at_decoration_saying_why(policies: dict[str, Any]) -> None:
    def slow() -> int:
        return 1

    with pytest.raises(ConfigError) as info:
        resilient(**policies)(slow)
    assert info.value.key == "resilient.timeout"
    message = str(info.value)
    assert "slow is synchronous" in message
    assert "cannot interrupt" in message
    assert "asyncio.to_thread" in message  # the way out: a thread under the async pipeline


def test_a_timeout_in_a_policy_config_is_refused_too() -> None:
    cfg = PolicyConfig(timeout=2.0)

    def f() -> int:
        return 1

    with pytest.raises(ConfigError) as info:
        resilient(cfg)(f)
    assert info.value.key == "resilient.timeout"
    with pytest.raises(ConfigError) as direct:
        SyncPipeline(cfg)
    assert direct.value.key == "timeout"
    # The very same config is fine on an async function.
    assert resilient(cfg)(_async_one).pipeline.timeout == 2.0  # type: ignore[attr-defined]


async def _async_one() -> int:
    return 1


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        (PolicyConfig(hedge=HedgeConfig()), "hedge"),
        (
            PolicyConfig(rate_limit=RateLimitConfig(shared="redis://127.0.0.1:6379/0")),
            "rate_limit.shared",
        ),
    ],
)
def test_what_needs_concurrency_or_asyncio_is_refused(cfg: PolicyConfig, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SyncPipeline(cfg)
    assert info.value.key == key

    def f() -> int:
        return 1

    with pytest.raises(ConfigError) as deco:
        resilient(cfg)(f)
    assert deco.value.key == f"resilient.{key}"


def test_a_sync_function_needs_a_sync_fallback() -> None:
    async def fallback(exc: BaseException) -> int:
        return 0

    def f() -> int:
        return 1

    with pytest.raises(TypeError, match="fallback must be too"):
        resilient(retry={}, fallback=fallback)(f)


# -- the policies ------------------------------------------------------------------------------


def test_retries_with_backoff_sleeping_between_attempts() -> None:
    slept: list[float] = []
    p = SyncPipeline(
        PolicyConfig(
            retry=RetryPolicy(max_attempts=4, initial_backoff=0.1, multiplier=2, jitter=False)
        ),
        sleep=slept.append,
    )
    fn = raising(TransportError("a"), TransportError("b"), TransportError("c"))
    assert p.call(fn) == "ok"
    assert slept == [0.1, 0.2, 0.4]
    assert (p.calls, p.attempts, p.failures) == (1, 4, 0)
    assert p.retrier is not None
    assert p.retrier.retries == 3


def test_retries_give_up_after_max_attempts_and_on_errors_not_worth_retrying() -> None:
    p = SyncPipeline(PolicyConfig(retry=no_wait_retry(3)))
    with pytest.raises(TransportError):
        p.call(raising(*[TransportError("down")] * 5))
    assert (p.attempts, p.failures) == (3, 1)
    with pytest.raises(ValueError, match="bug"):
        p.call(raising(ValueError("bug")))
    assert p.attempts == 4  # a bug is not retried
    assert p.retrier is not None
    assert p.retrier.stops[GiveUp.ATTEMPTS_EXHAUSTED] == 1
    assert p.retrier.stops[GiveUp.NOT_RETRYABLE] == 1


def test_the_retry_budget_holds() -> None:
    clock = FakeClock()
    p = SyncPipeline(
        PolicyConfig(
            retry=no_wait_retry(5),
            retry_budget=RetryBudgetConfig(ratio=0.0, min_retries_per_second=0.1, window=10),
        ),
        clock=clock,
    )
    for _ in range(5):
        with pytest.raises(TransportError):
            p.call(raising(*[TransportError("down")] * 9))
    assert p.retrier is not None
    assert p.retrier.retries == 1  # the floor: 0.1/s x 10 s
    assert p.retrier.stops[GiveUp.BUDGET] == 5
    assert p.attempts == 6


def test_retries_honour_the_callers_deadline() -> None:
    slept: list[float] = []
    p = SyncPipeline(
        PolicyConfig(
            retry=RetryPolicy(max_attempts=5, initial_backoff=10.0, max_backoff=10.0, jitter=False)
        ),
        sleep=slept.append,
    )
    with deadline_scope(1.0), pytest.raises(TransportError):
        p.call(raising(*[TransportError("down")] * 9))
    assert slept == []  # a 10 s backoff never fits in 1 s
    assert p.retrier is not None
    assert p.retrier.stops[GiveUp.DEADLINE] == 1


def test_statuses_are_classified_and_retried() -> None:
    outcomes = iter([Outcome(503), Outcome(503, retry_after="0"), Outcome(200)])
    p = SyncPipeline(PolicyConfig(retry=no_wait_retry(4), breaker=BreakerConfig()))
    result = p.execute(lambda _left: next(outcomes), classify=lambda o: o)
    assert result == Outcome(200)
    assert p.attempts == 3
    assert p.breaker is not None
    m = p.breaker.metrics()
    assert (m.buffered_calls, m.failed_calls) == (3, 2)


def test_a_raised_4xx_is_the_callee_answering_not_failing() -> None:
    p = SyncPipeline(PolicyConfig(breaker=BreakerConfig()))
    with pytest.raises(RemoteStatusError):
        p.call(raising(RemoteStatusError(404, b"nope")))
    assert p.breaker is not None
    assert p.breaker.metrics().failed_calls == 0


def test_the_breaker_opens_refuses_then_probes_and_closes() -> None:
    clock = FakeClock()
    events: list[PolicyEvent] = []
    p = SyncPipeline(
        PolicyConfig(
            breaker=BreakerConfig(
                minimum_number_of_calls=4,
                sliding_window_size=4,
                failure_rate_threshold=0.5,
                wait_duration_in_open=10.0,
                permitted_calls_in_half_open=2,
            )
        ),
        clock=clock,
        name="a->b",
    )
    p.add_listener(events.append)
    calls = 0

    def flaky(fail: bool) -> str:
        nonlocal calls
        calls += 1
        if fail:
            raise TransportError("down")
        return "ok"

    for fail in (True, False, True, True):
        try:
            p.call(flaky, fail)
        except TransportError:
            assert fail
    assert p.breaker is not None
    assert p.breaker.state is BreakerState.OPEN
    with pytest.raises(Rejected) as refused:
        p.call(flaky, False)
    assert refused.value.policy == "breaker"
    assert calls == 4  # refused before the function ran
    assert p.rejections == {"breaker": 1}
    clock.advance(10.0)
    assert p.call(flaky, False) == "ok"
    assert p.call(flaky, False) == "ok"
    assert p.breaker.state is BreakerState.CLOSED
    changes = [(e.data["from"], e.data["to"]) for e in events if e.kind == "state_change"]
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_half_open_admits_no_more_probes_than_permitted_across_threads(runner: Runner) -> None:
    clock = FakeClock()
    p = SyncPipeline(
        PolicyConfig(breaker=hair_trigger(permitted_calls_in_half_open=3)), clock=clock
    )
    assert p.breaker is not None
    p.breaker.on_failure(0.0)
    clock.advance(10.0)
    blocker = Blocker()
    for _ in range(12):
        runner.start(lambda: p.call(blocker))
    blocker.wait_entered(3)
    time.sleep(0.05)  # let every other thread try its luck
    blocker.release.set()
    results = runner.join()
    assert blocker.entered == 3
    assert results.count("done") == 3
    refusals = [r for r in results if isinstance(r, Rejected)]
    assert len(refusals) == 9
    assert all(r.policy == "breaker" for r in refusals)
    assert p.breaker.state is BreakerState.CLOSED


def test_fallback_gets_what_is_left() -> None:
    seen: list[BaseException] = []

    def fallback(exc: BaseException) -> str:
        seen.append(exc)
        return f"cached ({type(exc).__name__})"

    @resilient(retry={"max_attempts": 2, "initial_backoff": 0, "jitter": False}, fallback=fallback)
    def fetch() -> str:
        raise TransportError("down")

    assert fetch() == "cached (TransportError)"
    assert len(seen) == 1
    pipeline = fetch.pipeline  # type: ignore[attr-defined]
    assert (pipeline.attempts, pipeline.failures) == (2, 1)
    # Refusals reach the fallback too.
    limited = SyncPipeline(
        PolicyConfig(rate_limit=RateLimitConfig(rate=1e-6, burst=1)), fallback=fallback
    )
    assert limited.call(lambda: "fresh") == "fresh"
    assert limited.call(lambda: "fresh") == "cached (Rejected)"


def test_the_local_rate_limit() -> None:
    @resilient(rate_limit={"rate": 1e-6, "burst": 3})
    def ping() -> str:
        return "pong"

    assert [ping() for _ in range(3)] == ["pong"] * 3
    with pytest.raises(Rejected) as info:
        ping()
    assert info.value.policy == "rate_limit"
    assert info.value.retry_after is not None


def test_a_full_bulkhead_without_a_queue_refuses_at_once(runner: Runner) -> None:
    p = SyncPipeline(PolicyConfig(bulkhead=BulkheadConfig(max_concurrent_calls=2)))
    blocker = Blocker()
    runner.start(lambda: p.call(blocker))
    runner.start(lambda: p.call(blocker))
    blocker.wait_entered(2)
    t0 = time.monotonic()
    with pytest.raises(Rejected) as info:
        p.call(blocker)
    assert time.monotonic() - t0 < 1.0  # refused, not queued
    assert (info.value.policy, info.value.reason) == ("bulkhead", "full")
    blocker.release.set()
    assert runner.join() == ["done", "done"]
    assert p.bulkhead is not None
    assert (p.bulkhead.core.active, p.bulkhead.core.waiting) == (0, 0)


def test_a_queued_thread_gets_the_next_slot_and_the_queue_is_bounded(runner: Runner) -> None:
    p = SyncPipeline(
        PolicyConfig(
            bulkhead=BulkheadConfig(max_concurrent_calls=1, max_queue=1, queue_timeout=WAIT)
        )
    )
    assert p.bulkhead is not None
    first = Blocker()
    runner.start(lambda: p.call(first))
    first.wait_entered(1)
    second = Blocker()
    second.release.set()
    runner.start(lambda: p.call(second))
    deadline = time.monotonic() + WAIT
    while p.bulkhead.core.waiting < 1:
        assert time.monotonic() < deadline, "the second call never queued"
        time.sleep(0.001)
    with pytest.raises(Rejected) as info:
        p.call(second)  # the queue (1) is full
    assert info.value.reason == "full"
    assert second.entered == 0
    first.release.set()
    assert sorted(runner.join()) == ["done", "done"]
    assert (p.bulkhead.core.active, p.bulkhead.core.waiting) == (0, 0)


def test_the_queue_times_out(runner: Runner) -> None:
    p = SyncPipeline(
        PolicyConfig(
            bulkhead=BulkheadConfig(max_concurrent_calls=1, max_queue=4, queue_timeout=0.05)
        )
    )
    blocker = Blocker()
    runner.start(lambda: p.call(blocker))
    blocker.wait_entered(1)
    t0 = time.monotonic()
    with pytest.raises(Rejected) as info:
        p.call(blocker)
    assert time.monotonic() - t0 >= 0.04
    assert info.value.reason == "queue timeout"
    assert p.rejections == {"bulkhead": 1}
    blocker.release.set()
    runner.join()
    assert p.bulkhead is not None
    assert (p.bulkhead.core.active, p.bulkhead.core.waiting) == (0, 0)


def test_a_bulkhead_wait_never_outlasts_the_callers_deadline(runner: Runner) -> None:
    p = SyncPipeline(
        PolicyConfig(
            bulkhead=BulkheadConfig(max_concurrent_calls=1, max_queue=4, queue_timeout=WAIT)
        )
    )
    blocker = Blocker()
    runner.start(lambda: p.call(blocker))
    blocker.wait_entered(1)
    t0 = time.monotonic()
    with deadline_scope(0.05), pytest.raises(DeadlineExceeded):
        p.call(blocker)
    assert time.monotonic() - t0 < WAIT / 2
    blocker.release.set()
    runner.join()


def test_the_sync_bulkhead_serves_higher_criticality_first() -> None:
    lock = threading.RLock()
    b = SyncBulkhead(
        BulkheadConfig(max_concurrent_calls=1, max_queue=2, queue_timeout=WAIT), lock=lock
    )
    b.acquire()
    order: list[str] = []
    threads = []
    for name, crit in (("low", Criticality.SHEDDABLE), ("high", Criticality.CRITICAL)):

        def wait(name: str = name, crit: Criticality = crit) -> None:
            b.acquire(crit)
            order.append(name)
            b.release()

        t = threading.Thread(target=wait)
        t.start()
        threads.append(t)
        deadline = time.monotonic() + WAIT
        while b.core.waiting < len(threads):
            assert time.monotonic() < deadline
            time.sleep(0.001)
    b.release()
    for t in threads:
        t.join(WAIT)
    assert order == ["high", "low"]
    assert (b.core.active, b.core.waiting) == (0, 0)


def test_the_concurrency_limiter(runner: Runner) -> None:
    p = SyncPipeline(PolicyConfig(limiter=fixed(2), bulkhead=BulkheadConfig()))
    blocker = Blocker()
    runner.start(lambda: p.call(blocker))
    runner.start(lambda: p.call(blocker))
    blocker.wait_entered(2)
    with pytest.raises(Rejected) as info:
        p.call(blocker)
    assert info.value.policy == "limiter"
    assert p.bulkhead is not None
    assert p.bulkhead.core.active == 2  # the refused call gave its slot back
    blocker.release.set()
    runner.join()
    assert p.limiter is not None
    assert p.limiter.inflight == 0
    assert p.bulkhead.core.active == 0


def test_expired_work_is_dropped_and_execute_passes_the_time_left() -> None:
    p = SyncPipeline(PolicyConfig(breaker=BreakerConfig()))
    with deadline_scope(0.0), pytest.raises(DeadlineExceeded):
        p.call(lambda: "never")
    seen: list[float | None] = []
    with deadline_scope(5.0):
        p.execute(seen.append)
    p.execute(seen.append)
    assert seen[0] is not None
    assert 0 < seen[0] <= 5.0
    assert seen[1] is None


def test_an_interruption_is_no_failure_and_leaks_nothing() -> None:
    p = SyncPipeline(
        PolicyConfig(
            retry=no_wait_retry(3),
            breaker=hair_trigger(),
            bulkhead=BulkheadConfig(),
            limiter=fixed(2),
        )
    )
    with pytest.raises(KeyboardInterrupt):
        p.call(raising(KeyboardInterrupt()))
    assert p.attempts == 1  # not retried
    assert p.failures == 0
    assert p.breaker is not None
    assert p.breaker.state is BreakerState.CLOSED
    assert p.bulkhead is not None
    assert p.limiter is not None
    assert (p.bulkhead.core.active, p.limiter.inflight) == (0, 0)


def test_shadow_mode_never_refuses_nor_makes_a_thread_wait(runner: Runner) -> None:
    p = SyncPipeline(
        PolicyConfig(
            bulkhead=BulkheadConfig(max_concurrent_calls=1, max_queue=5, queue_timeout=WAIT),
            breaker=hair_trigger(),
            shadow=("bulkhead", "breaker"),
        )
    )
    blocker = Blocker()
    runner.start(lambda: p.call(blocker))
    blocker.wait_entered(1)
    t0 = time.monotonic()
    assert p.call(lambda: "through") == "through"
    assert time.monotonic() - t0 < 1.0
    assert p.shadow_rejections["bulkhead"] == 1
    blocker.release.set()
    runner.join()
    assert p.bulkhead is not None
    assert p.bulkhead.core.active == 0


def test_snapshot() -> None:
    p = SyncPipeline(
        PolicyConfig(retry=no_wait_retry(2), breaker=BreakerConfig(), bulkhead=BulkheadConfig())
    )
    p.call(raising(TransportError("once")))
    snap = p.snapshot()
    assert (snap["calls"], snap["attempts"], snap["failures"]) == (1, 2, 0)
    assert snap["retry"]["retries"] == 1
    assert snap["bulkhead"] == {"active": 0, "waiting": 0}


# -- sync and async mixed up ---------------------------------------------------------------------


async def test_pipeline_call_with_a_sync_function_points_to_the_sync_decorator() -> None:
    ran: list[int] = []

    def sync_fn() -> int:
        ran.append(1)
        return 1

    for p in (Pipeline(PolicyConfig()), Pipeline(PolicyConfig(), fallback=_fallback_zero)):
        with pytest.raises(TypeError, match=r"@resilient\(\.\.\.\)") as info:
            await p.call(sync_fn)
        assert "sync_fn" in str(info.value)
        assert "SyncPipeline" in str(info.value)


async def _fallback_zero(exc: BaseException) -> int:
    return 0


async def test_pipeline_call_leaves_other_type_errors_and_awaitable_returning_functions_alone() -> (
    None
):
    p = Pipeline(PolicyConfig())

    async def buggy() -> int:
        return len(5)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="has no len"):
        await p.call(buggy)

    def returns_a_coroutine() -> Any:  # a plain def handing back an awaitable: legitimate
        return _async_one()

    assert await p.call(returns_a_coroutine) == 1


def test_a_sync_pipeline_refuses_an_async_function_without_running_it() -> None:
    p = SyncPipeline(PolicyConfig(breaker=BreakerConfig(), bulkhead=BulkheadConfig()))
    for pipeline in (p, SyncPipeline(PolicyConfig(), fallback=lambda exc: "hidden")):
        with pytest.raises(TypeError, match="returned a coroutine"):
            pipeline.call(_async_one)  # closed, never awaited: no RuntimeWarning either
    assert p.breaker is not None
    assert p.breaker.metrics().buffered_calls == 0  # a bug, not the callee failing
    assert p.bulkhead is not None
    assert p.bulkhead.core.active == 0


# -- threads -------------------------------------------------------------------------------------


def test_the_lock_is_never_held_around_the_users_function(runner: Runner) -> None:
    # Two calls that can only finish together: if the pipeline held its lock while running
    # the function, the second could never start.
    p = SyncPipeline(
        PolicyConfig(breaker=BreakerConfig(), limiter=fixed(4), bulkhead=BulkheadConfig())
    )
    barrier = threading.Barrier(2, timeout=WAIT)

    def meet() -> str:
        barrier.wait()
        return "met"

    runner.start(lambda: p.call(meet))
    runner.start(lambda: p.call(meet))
    assert runner.join() == ["met", "met"]


class YieldingClock:
    """The system clock, except that reading it lets another thread run.

    The cores read the clock in the middle of their decisions; switching threads there makes
    the interleavings that would corrupt them without the pipeline's lock frequent, where the
    GIL alone would make them rare (a stress test with the lock removed fails with this clock).
    """

    def monotonic(self) -> float:
        time.sleep(0)
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - never awaited here
        await asyncio.sleep(seconds)


def _stress(
    seed: int, threads: int, calls: int, slots: int, limit: int, queue: int, fail_rate: float
) -> None:
    count_lock = threading.Lock()
    p = SyncPipeline(
        PolicyConfig(
            retry=RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0, jitter=False),
            retry_budget=RetryBudgetConfig(ratio=0.5, min_retries_per_second=1.0),
            breaker=BreakerConfig(
                minimum_number_of_calls=10,
                sliding_window_size=10,
                failure_rate_threshold=0.6,
                wait_duration_in_open=0.002,
                permitted_calls_in_half_open=2,
            ),
            bulkhead=BulkheadConfig(
                max_concurrent_calls=slots, max_queue=queue, queue_timeout=0.01
            ),
            limiter=fixed(limit),
        ),
        sleep=lambda _: None,
        clock=YieldingClock(),
    )
    inside = 0
    most = 0
    invoked = 0
    outcomes: dict[str, int] = {}

    def work(rng: random.Random) -> str:
        nonlocal inside, most, invoked
        with count_lock:
            inside += 1
            invoked += 1
            most = max(most, inside)
        try:
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.0005)
            if rng.random() < fail_rate:
                raise TransportError("flaky")
            return "ok"
        finally:
            with count_lock:
                inside -= 1

    def client(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        for _ in range(calls):
            try:
                p.call(work, rng)
                kind = "ok"
            except Rejected as exc:
                kind = exc.policy
            except TransportError:
                kind = "failed"
            except Exception as exc:  # a core corrupted by a race would end up here
                kind = f"unexpected {exc!r}"
            with count_lock:
                outcomes[kind] = outcomes.get(kind, 0) + 1

    pool = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(30)
        assert not t.is_alive(), "a stress client is stuck"

    assert not [k for k in outcomes if k.startswith("unexpected")], outcomes
    assert most <= min(slots, limit)  # never more in flight than bulkhead and limiter allow
    assert sum(outcomes.values()) == threads * calls
    assert p.calls == threads * calls  # no lost update of the counters
    assert p.attempts == invoked  # every admitted attempt ran, and was counted once
    assert p.failures == outcomes.get("failed", 0)
    assert p.bulkhead is not None
    assert p.limiter is not None
    assert p.breaker is not None
    assert (p.bulkhead.core.active, p.bulkhead.core.waiting, p.limiter.inflight) == (0, 0, 0)
    assert p.retrier is not None
    assert p.attempts <= p.calls + p.retrier.retries
    # No half-open permit leaked: once the open wait has passed, the breaker admits a call.
    time.sleep(0.005)
    assert p.breaker.try_acquire()


# Bounded: 15 runs of at most 6 threads x 120 calls. With the pipeline's lock removed, about
# one run in three breaks a core (measured), so the property does notice a missing lock.
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    threads=st.integers(3, 6),
    calls=st.integers(30, 120),
    slots=st.integers(1, 3),
    limit=st.integers(1, 4),
    queue=st.integers(0, 3),
    fail_rate=st.sampled_from([0.0, 0.3, 0.5, 0.7]),
)
def test_accounting_holds_under_concurrent_threads(
    seed: int, threads: int, calls: int, slots: int, limit: int, queue: int, fail_rate: float
) -> None:
    _stress(seed, threads, calls, slots, limit, queue, fail_rate)
