"""The pipeline: the documented order of the policies, their accounting, timeouts and deadlines,
retries, hedging, fallback, shadow mode and snapshots, plus properties over random traffic."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import (
    DeadlineExceeded,
    FakeClock,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
    deadline_scope,
)
from garrison.resilience import (
    AdaptiveThrottle,
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
    ThrottleConfig,
)

# -- helpers -----------------------------------------------------------------------------------


def fixed(limit: int) -> LimiterConfig:
    """A limiter with a constant limit that every criticality may fill."""
    return LimiterConfig(
        limit=FixedConfig(limit=limit),
        window=None,
        sheddable_fraction=1.0,
        default_fraction=1.0,
    )


def no_wait_retry(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, initial_backoff=0.0, max_backoff=0.0, jitter=False)


def hair_trigger(**kw: Any) -> BreakerConfig:
    """A breaker that opens on one failure and probes with one call."""
    base: dict[str, Any] = {
        "minimum_number_of_calls": 1,
        "sliding_window_size": 1,
        "wait_duration_in_open": 10.0,
        "permitted_calls_in_half_open": 1,
    }
    return BreakerConfig(**{**base, **kw})


class Gate:
    """An attempt that waits until opened; counts its starts and cancellations."""

    def __init__(self, result: Any = "slow") -> None:
        self.event = asyncio.Event()
        self.result = result
        self.started = 0
        self.cancelled = 0

    async def __call__(self, *_: object) -> Any:
        self.started += 1
        try:
            await self.event.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return self.result


async def ok(*_: object) -> str:
    return "ok"


def identity(result: Any) -> Outcome:
    """``classify`` for attempts that return an :class:`Outcome` directly."""
    assert isinstance(result, Outcome)
    return result


def answers(*outcomes: Outcome) -> Callable[[float | None], Any]:
    """An attempt returning ``outcomes`` one after the other (the last one from then on)."""
    it = iter(outcomes)
    last = outcomes[-1]

    async def attempt(_: float | None) -> Outcome:
        return next(it, last)

    return attempt


def raising(*errors: BaseException) -> Callable[..., Any]:
    """An attempt raising ``errors`` one after the other, then answering ``ok``."""
    it = iter(errors)

    async def attempt(*_: object) -> str:
        error = next(it, None)
        if error is not None:
            raise error
        return "ok"

    return attempt


async def until(predicate: Callable[[], bool], turns: int = 200) -> None:
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def half_open(p: Pipeline, clock: FakeClock) -> None:
    """Open the hair-trigger breaker of ``p`` through its core, then let the open wait pass."""
    assert p.breaker is not None
    p.breaker.on_failure(0.0)
    assert p.breaker.state is BreakerState.OPEN
    clock.advance(p.breaker.config.wait_duration_in_open)
    assert p.breaker.state is BreakerState.HALF_OPEN


def breaker_calls(p: Pipeline) -> tuple[int, int]:
    """(calls recorded, failures recorded) in the breaker's window."""
    assert p.breaker is not None
    m = p.breaker.metrics()
    return m.buffered_calls, m.failed_calls


# -- the order of the policies -----------------------------------------------------------------


async def test_an_open_breaker_refuses_before_the_bulkhead_is_touched() -> None:
    p = Pipeline(
        PolicyConfig(breaker=BreakerConfig(), bulkhead=BulkheadConfig(max_concurrent_calls=1))
    )
    gate = Gate()
    slow = asyncio.create_task(p.call(gate))
    await until(lambda: gate.started == 1)
    assert p.breaker is not None
    assert p.bulkhead is not None
    p.breaker.force_open()
    with pytest.raises(Rejected) as info:
        await p.call(ok)
    # The bulkhead is full too, but the breaker, outside it, refused first.
    assert info.value.policy == "breaker"
    assert p.bulkhead.metrics().rejected_full == 0
    assert p.rejections == {"breaker": 1}
    assert p.attempts == 1
    gate.event.set()
    assert await slow == "slow"


async def test_a_full_bulkhead_is_not_a_breaker_failure() -> None:
    p = Pipeline(
        PolicyConfig(breaker=hair_trigger(), bulkhead=BulkheadConfig(max_concurrent_calls=1))
    )
    gate = Gate()
    slow = asyncio.create_task(p.call(gate))
    await until(lambda: gate.started == 1)
    for _ in range(5):
        with pytest.raises(Rejected) as info:
            await p.call(ok)
        assert info.value.policy == "bulkhead"
    assert p.breaker is not None
    assert p.breaker.state is BreakerState.CLOSED  # a hair trigger, and still closed
    assert breaker_calls(p) == (0, 0)
    assert p.rejections == {"bulkhead": 5}
    gate.event.set()
    await slow
    assert breaker_calls(p) == (1, 0)


async def test_a_bulkhead_refusal_hands_the_half_open_probe_back() -> None:
    clock = FakeClock()
    p = Pipeline(
        PolicyConfig(breaker=hair_trigger(), bulkhead=BulkheadConfig(max_concurrent_calls=1)),
        clock=clock,
    )
    gate = Gate()
    slow = asyncio.create_task(p.call(gate))  # admitted while closed: not a probe
    await until(lambda: gate.started == 1)
    await half_open(p, clock)
    with pytest.raises(Rejected) as info:  # takes the only probe, then finds the bulkhead full
        await p.call(ok)
    assert info.value.policy == "bulkhead"
    gate.event.set()
    await slow
    assert p.breaker is not None
    assert p.breaker.state is BreakerState.HALF_OPEN  # the old call's outcome is no probe
    assert await p.call(ok) == "ok"  # the probe was handed back: admitted, and it closes
    assert p.breaker.state is BreakerState.CLOSED


async def test_a_limiter_refusal_releases_the_bulkhead_slot_and_the_breaker_permit() -> None:
    clock = FakeClock()
    p = Pipeline(
        PolicyConfig(
            breaker=hair_trigger(),
            bulkhead=BulkheadConfig(max_concurrent_calls=5),
            limiter=fixed(1),
        ),
        clock=clock,
    )
    gate = Gate()
    slow = asyncio.create_task(p.call(gate))
    await until(lambda: gate.started == 1)
    await half_open(p, clock)
    assert p.bulkhead is not None
    assert p.limiter is not None
    assert p.breaker is not None
    with pytest.raises(Rejected) as info:
        await p.call(ok)
    assert info.value.policy == "limiter"
    assert p.bulkhead.core.active == 1  # only the slow call's slot
    gate.event.set()
    await slow
    assert (p.bulkhead.core.active, p.limiter.inflight) == (0, 0)
    assert await p.call(ok) == "ok"  # the probe permit came back
    assert p.breaker.state is BreakerState.CLOSED


async def test_each_retried_attempt_is_admitted_afresh() -> None:
    p = Pipeline(PolicyConfig(retry=no_wait_retry(3), breaker=hair_trigger()))
    with pytest.raises(Rejected) as info:
        await p.call(raising(TransportError("down"), TransportError("down")))
    # The first failure opened the breaker; the retry was refused, not sent.
    assert info.value.policy == "breaker"
    assert p.attempts == 1
    assert p.rejections == {"breaker": 1}
    assert p.retrier is not None
    assert p.retrier.retries == 1


async def test_local_rejections_are_not_retried() -> None:
    p = Pipeline(
        PolicyConfig(retry=no_wait_retry(3), rate_limit=RateLimitConfig(rate=0.001, burst=1))
    )
    assert await p.call(ok) == "ok"
    with pytest.raises(Rejected) as info:
        await p.call(ok)
    assert info.value.policy == "rate_limit"
    assert info.value.retryable is False
    assert p.attempts == 1
    assert p.retrier is not None
    assert p.retrier.retries == 0


async def test_a_non_retryable_rejection_from_the_callee_is_not_retried() -> None:
    p = Pipeline(PolicyConfig(retry=no_wait_retry(3)))
    with pytest.raises(Rejected):
        await p.call(raising(Rejected("limiter", "shed")))
    assert p.attempts == 1
    # ... while a retryable refusal is.
    assert await p.call(raising(ServiceUnavailable("busy", retryable=True))) == "ok"
    assert p.attempts == 3


# -- statuses ----------------------------------------------------------------------------------


async def test_5xx_counts_as_a_breaker_failure_and_4xx_does_not() -> None:
    p = Pipeline(PolicyConfig(breaker=BreakerConfig(minimum_number_of_calls=10)))
    for status in (404, 409, 500, 502):
        result = await p.execute(answers(Outcome(status)), classify=identity)
        assert result.status == status  # a status is returned, not raised
    assert breaker_calls(p) == (4, 2)


async def test_overload_statuses_drop_the_limiter_and_count_as_throttle_rejections() -> None:
    p = Pipeline(
        PolicyConfig(
            breaker=BreakerConfig(minimum_number_of_calls=100),
            limiter=fixed(10),
            # counted but never refused locally, so the calls below all reach the callee
            throttle=ThrottleConfig(never_throttle=Criticality.DEFAULT),
        )
    )
    assert p.limiter is not None
    assert p.throttle is not None
    for status in (429, 503):
        await p.execute(answers(Outcome(status)), classify=identity)
    s, t = p.limiter.snapshot(), p.throttle.snapshot()
    assert (s.dropped, s.succeeded, s.inflight) == (2, 0, 0)
    assert (t.backend_rejected, t.accepts) == (2, 0)
    assert breaker_calls(p) == (2, 1)  # 503 is a 5xx; 429 is not
    for status in (200, 500):
        await p.execute(answers(Outcome(status)), classify=identity)
    s, t = p.limiter.snapshot(), p.throttle.snapshot()
    assert (s.dropped, s.succeeded) == (2, 2)
    assert (t.backend_rejected, t.accepts) == (2, 2)  # a 500 is an answer, not overload


async def test_a_raised_status_error_is_judged_by_its_status() -> None:
    p = Pipeline(
        PolicyConfig(
            breaker=BreakerConfig(minimum_number_of_calls=100),
            limiter=fixed(10),
            throttle=ThrottleConfig(),
        )
    )
    assert p.limiter is not None
    assert p.throttle is not None
    with pytest.raises(RemoteStatusError):
        await p.call(raising(RemoteStatusError(404, b"no such device")))
    assert breaker_calls(p) == (1, 0)  # the callee answered: a 404 is not its failure
    assert (p.limiter.snapshot().succeeded, p.throttle.snapshot().accepts) == (1, 1)
    with pytest.raises(RemoteStatusError):
        await p.call(raising(RemoteStatusError(503, b"busy")))
    assert breaker_calls(p) == (2, 1)
    assert p.limiter.snapshot().dropped == 1
    assert p.throttle.snapshot().backend_rejected == 1


async def test_errors_that_are_not_answers_are_neither_accepts_nor_overload() -> None:
    throttle = ThrottleConfig(never_throttle=Criticality.DEFAULT)  # counts, never refuses
    p = Pipeline(PolicyConfig(limiter=fixed(10), throttle=throttle))
    assert p.limiter is not None
    assert p.throttle is not None
    with pytest.raises(TransportError):
        await p.call(raising(TransportError("connection refused")))
    with pytest.raises(TimeoutError):
        await p.call(raising(TimeoutError()))
    t = p.throttle.snapshot()
    assert (t.requests, t.accepts, t.backend_rejected) == (2, 0, 0)
    s = p.limiter.snapshot()
    assert (s.ignored, s.dropped, s.inflight) == (1, 1, 0)  # a timeout is a drop


async def test_retries_on_the_retry_policys_statuses_honouring_retry_after() -> None:
    clock = FakeClock()
    retry = RetryPolicy(max_attempts=3, jitter=False, max_backoff=10.0)
    p = Pipeline(PolicyConfig(retry=retry), clock=clock)
    call = asyncio.create_task(
        p.execute(answers(Outcome(503, retry_after="3"), Outcome(200)), classify=identity)
    )
    await until(lambda: clock.sleepers == 1)
    clock.advance(2.9)
    await asyncio.sleep(0)
    assert not call.done()
    assert p.attempts == 1
    clock.advance(0.1)
    result = await call
    assert (result.status, p.attempts) == (200, 2)


@pytest.mark.parametrize(
    ("outcome", "may_retry", "reason"),
    [
        (Outcome(503, no_retry=True), True, GiveUp.NOT_RETRYABLE),
        (Outcome(500), True, GiveUp.SUCCESS),  # not a status of the retry policy
        (Outcome(503), False, GiveUp.OTHER_LAYER),
    ],
)
async def test_statuses_that_are_not_retried(
    outcome: Outcome, may_retry: bool, reason: GiveUp
) -> None:
    p = Pipeline(PolicyConfig(retry=no_wait_retry(3)))
    result = await p.execute(answers(outcome), classify=identity, may_retry=may_retry)
    assert result is outcome
    assert p.attempts == 1
    assert p.retrier is not None
    if reason is not GiveUp.SUCCESS:
        assert p.retrier.stops[reason] == 1


async def test_may_retry_false_means_no_retry_of_errors_either() -> None:
    p = Pipeline(PolicyConfig(retry=no_wait_retry(3)))
    with pytest.raises(TransportError):
        await p.execute(raising(TransportError("down")), may_retry=False)
    assert (p.attempts, p.failures) == (1, 1)


async def test_the_last_status_is_returned_when_attempts_run_out() -> None:
    p = Pipeline(PolicyConfig(retry=no_wait_retry(3)))
    result = await p.execute(answers(Outcome(503)), classify=identity)
    assert (result.status, p.attempts, p.failures) == (503, 3, 0)


async def test_a_failing_classify_leaks_nothing() -> None:
    p = Pipeline(
        PolicyConfig(
            breaker=hair_trigger(),
            bulkhead=BulkheadConfig(max_concurrent_calls=1),
            limiter=fixed(1),
        )
    )

    def broken(_: Any) -> Outcome:
        raise ValueError("bug in classify")

    with pytest.raises(ValueError, match="bug in classify"):
        await p.execute(answers(Outcome(200)), classify=broken)
    assert p.bulkhead is not None
    assert p.limiter is not None
    assert (p.bulkhead.core.active, p.limiter.inflight) == (0, 0)
    assert breaker_calls(p) == (0, 0)
    assert await p.call(ok) == "ok"


# -- deadlines and timeouts --------------------------------------------------------------------


async def test_no_attempt_once_the_callers_deadline_is_spent() -> None:
    p = Pipeline(
        PolicyConfig(
            rate_limit=RateLimitConfig(rate=0.001, burst=1),
            throttle=ThrottleConfig(),
            breaker=hair_trigger(),
        )
    )
    with deadline_scope(0.0), pytest.raises(DeadlineExceeded):
        await p.call(ok)
    assert p.attempts == 0
    # Dropped before anything was spent: the token, the throttle's count, the breaker.
    assert p.rate is not None
    assert p.rate.tokens == 1.0
    assert p.throttle is not None
    assert p.throttle.requests == 0
    assert breaker_calls(p) == (0, 0)
    assert await p.call(ok) == "ok"


async def test_no_retry_that_would_end_past_the_deadline() -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=1.0, jitter=False)
    p = Pipeline(PolicyConfig(retry=retry))
    with deadline_scope(0.5), pytest.raises(TransportError):
        await p.call(raising(TransportError("down")))
    assert p.attempts == 1
    assert p.retrier is not None
    assert p.retrier.stops[GiveUp.DEADLINE] == 1


@pytest.mark.parametrize(
    ("timeout", "deadline", "low", "high"),
    [
        (5.0, 1.0, 0.5, 1.0),  # the deadline is nearer
        (0.2, 10.0, 0.2, 0.2),  # the edge's timeout is shorter
        (None, 1.0, 0.5, 1.0),
        (0.2, None, 0.2, 0.2),
    ],
)
async def test_the_attempt_budget_is_the_smaller_of_timeout_and_deadline(
    timeout: float | None, deadline: float | None, low: float, high: float
) -> None:
    budgets: list[float | None] = []

    async def attempt(budget: float | None) -> str:
        budgets.append(budget)
        return "ok"

    p = Pipeline(PolicyConfig(timeout=timeout))
    with deadline_scope(deadline):
        await p.execute(attempt)
    [budget] = budgets
    assert budget is not None
    assert low <= budget <= high


async def test_no_budget_without_timeout_or_deadline() -> None:
    budgets: list[float | None] = []

    async def attempt(budget: float | None) -> str:
        budgets.append(budget)
        return "ok"

    await Pipeline().execute(attempt)
    assert budgets == [None]


async def test_the_pipeline_cancels_a_slow_attempt_with_timeout_error() -> None:
    p = Pipeline(PolicyConfig(timeout=0.02, breaker=BreakerConfig(), limiter=fixed(5)))
    gate = Gate()
    with pytest.raises(TimeoutError):
        await p.execute(gate, native_timeout=False)
    assert gate.cancelled == 1
    assert breaker_calls(p) == (1, 1)
    assert p.limiter is not None
    assert p.limiter.snapshot().dropped == 1
    assert p.failures == 1


async def test_a_native_timeout_is_passed_to_the_attempt_not_enforced() -> None:
    budgets: list[float | None] = []

    async def attempt(budget: float | None) -> str:
        budgets.append(budget)
        assert budget is not None
        await asyncio.sleep(budget * 3)  # a transport would have given up; this one does not
        return "late"

    p = Pipeline(PolicyConfig(timeout=0.02))
    assert await p.execute(attempt, native_timeout=True) == "late"
    assert budgets == [0.02]


async def test_a_timed_out_attempt_is_retried() -> None:
    calls = itertools.count()

    async def attempt() -> str:
        if next(calls) == 0:
            await asyncio.sleep(10)
        return "second"

    p = Pipeline(PolicyConfig(timeout=0.02, retry=no_wait_retry(2)))
    assert await p.call(attempt) == "second"
    assert p.attempts == 2


async def test_a_failed_attempt_leaves_no_timeout_armed_behind() -> None:
    # Regression: an attempt that raised (not timed out) left its wheel entry armed, and the
    # wheel later cancelled the task in the middle of whatever it did next.
    p = Pipeline(PolicyConfig(timeout=0.02))
    with pytest.raises(ValueError):
        await p.call(raising(ValueError("bad")))
    await asyncio.sleep(0.06)  # past the timeout: must not be cancelled


async def test_a_retry_backoff_longer_than_the_attempt_timeout_is_not_cancelled() -> None:
    retry = RetryPolicy(max_attempts=2, initial_backoff=0.06, max_backoff=0.06, jitter=False)
    p = Pipeline(PolicyConfig(timeout=0.02, retry=retry))
    assert await p.call(raising(TransportError("flaky"))) == "ok"
    assert p.attempts == 2


async def test_an_outer_cancellation_propagates_and_is_no_failure() -> None:
    seen: list[BaseException] = []

    async def fallback(exc: BaseException) -> str:
        seen.append(exc)
        return "fallback"

    p = Pipeline(
        PolicyConfig(
            timeout=5.0,
            retry=no_wait_retry(3),
            breaker=BreakerConfig(),
            bulkhead=BulkheadConfig(max_concurrent_calls=2),
            limiter=fixed(2),
            throttle=ThrottleConfig(),
        ),
        fallback=fallback,
    )
    gate = Gate()
    call = asyncio.create_task(p.call(gate))
    await until(lambda: gate.started == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert (p.attempts, p.failures, seen) == (1, 0, [])
    assert p.retrier is not None
    assert p.retrier.retries == 0
    assert breaker_calls(p) == (0, 0)
    assert p.limiter is not None
    assert p.bulkhead is not None
    assert p.throttle is not None
    s = p.limiter.snapshot()
    assert (s.ignored, s.dropped, s.inflight) == (1, 0, 0)
    assert p.bulkhead.core.active == 0
    assert (p.throttle.accepts, p.throttle.snapshot().backend_rejected) == (0, 0)


async def test_the_bulkhead_wait_ends_with_the_callers_deadline() -> None:
    p = Pipeline(
        PolicyConfig(
            breaker=hair_trigger(),
            bulkhead=BulkheadConfig(max_concurrent_calls=1, max_queue=4, queue_timeout=30.0),
        )
    )
    gate = Gate()
    slow = asyncio.create_task(p.call(gate))
    await until(lambda: gate.started == 1)
    async with asyncio.timeout(5):  # the queue timeout is 30 s: it must not be what ends it
        with deadline_scope(0.03), pytest.raises(DeadlineExceeded):
            await p.call(ok)
    assert p.bulkhead is not None
    assert p.bulkhead.core.waiting == 0
    gate.event.set()
    await slow
    assert breaker_calls(p) == (1, 0)  # the refused call handed its permit back unrecorded


async def test_attempt_durations_are_read_from_the_pipelines_clock() -> None:
    clock = FakeClock()
    cfg = hair_trigger(slow_call_duration=1.0, slow_call_rate_threshold=1.0)
    p = Pipeline(PolicyConfig(breaker=cfg), clock=clock)

    async def slow() -> str:
        clock.advance(2.0)
        return "ok"

    await p.call(slow)
    assert p.breaker is not None
    assert p.breaker.state is BreakerState.OPEN


# -- fallback ----------------------------------------------------------------------------------


async def test_fallback_receives_the_final_exception() -> None:
    seen: list[BaseException] = []

    async def fallback(exc: BaseException) -> str:
        seen.append(exc)
        return "fallback"

    last = TransportError("second")
    p = Pipeline(PolicyConfig(retry=no_wait_retry(2)), fallback=fallback)
    assert await p.call(raising(TransportError("first"), last)) == "fallback"
    assert seen == [last]
    assert (p.attempts, p.failures) == (2, 1)


async def test_fallback_also_catches_refusals() -> None:
    seen: list[BaseException] = []

    async def fallback(exc: BaseException) -> str:
        seen.append(exc)
        return "cached"

    p = Pipeline(PolicyConfig(breaker=BreakerConfig()), fallback=fallback)
    assert p.breaker is not None
    p.breaker.force_open()
    assert await p.call(ok) == "cached"
    [exc] = seen
    assert isinstance(exc, Rejected)
    assert exc.policy == "breaker"


# -- hedging -----------------------------------------------------------------------------------


def racing(*delays: float) -> Callable[[float | None], Any]:
    """An attempt whose n-th call answers ``n`` after ``delays[n]`` seconds (None: never)."""
    calls = itertools.count()

    async def attempt(_: float | None) -> int:
        n = next(calls)
        await asyncio.sleep(delays[n] if n < len(delays) else 0)
        return n

    return attempt


async def test_a_slow_attempt_gets_a_hedge_and_the_first_answer_wins() -> None:
    p = Pipeline(
        PolicyConfig(
            hedge=HedgeConfig(delay=0.01),
            bulkhead=BulkheadConfig(max_concurrent_calls=5),
            limiter=fixed(5),
        )
    )
    first = Gate(result=0)
    calls = itertools.count()

    async def attempt(_: float | None) -> int:
        return await first() if next(calls) == 0 else 1

    assert await p.execute(attempt) == 1
    assert p.attempts == 2
    assert p.hedger is not None
    assert p.hedger.hedges == 1
    await until(lambda: first.cancelled == 1)  # the loser is cancelled ...
    assert p.bulkhead is not None
    assert p.limiter is not None
    await until(lambda: p.limiter.inflight == 0)  # ... and gives back what it held
    assert p.bulkhead.core.active == 0
    assert p.limiter.snapshot().ignored == 1


async def test_the_first_attempt_still_wins_when_it_answers_first() -> None:
    p = Pipeline(PolicyConfig(hedge=HedgeConfig(delay=0.01)))
    hedge = Gate(result=1)
    calls = itertools.count()

    async def attempt(_: float | None) -> int:
        if next(calls) == 0:
            await asyncio.sleep(0.03)
            return 0
        return int(await hedge())

    assert await p.execute(attempt) == 0
    assert p.attempts == 2
    await until(lambda: hedge.cancelled == 1)


async def test_hedges_stop_when_the_hedge_budget_is_spent() -> None:
    budget = RetryBudgetConfig(ratio=0.0, min_retries_per_second=0.1, window=10.0)  # 1 hedge
    p = Pipeline(PolicyConfig(hedge=HedgeConfig(delay=0.005, budget=budget)))
    assert await p.execute(racing(0.05, 0.0)) == 1  # hedged: the hedge answers first
    assert await p.execute(racing(0.05, 0.0)) == 0  # no budget left: waits for the first
    assert p.hedger is not None
    assert p.hedger.hedges == 1
    assert p.attempts == 3


async def test_answers_within_the_delay_spend_no_hedge_budget() -> None:
    p = Pipeline(PolicyConfig(hedge=HedgeConfig(delay=1.0)))
    for _ in range(20):
        assert await p.execute(racing(0.0)) == 0
    assert p.hedger is not None
    assert (p.hedger.hedges, p.hedger.budget.retries, p.attempts) == (0, 0, 20)


async def test_up_to_max_hedged_extra_attempts() -> None:
    p = Pipeline(PolicyConfig(hedge=HedgeConfig(delay=0.01, max_hedged=2)))
    assert await p.execute(racing(1.0, 1.0, 0.0)) == 2
    assert p.attempts == 3


async def test_a_failed_status_waits_for_the_hedge_in_flight() -> None:
    calls = itertools.count()

    async def attempt(_: float | None) -> Outcome:
        n = next(calls)
        await asyncio.sleep(0.03 if n == 0 else 0.06)
        return Outcome(500 if n == 0 else 200)

    p = Pipeline(PolicyConfig(hedge=HedgeConfig(delay=0.01)))
    result = await p.execute(attempt, classify=identity)
    assert result.status == 200


async def test_no_hedge_once_the_deadline_is_spent() -> None:
    p = Pipeline(PolicyConfig(hedge=HedgeConfig(delay=0.02)))
    with deadline_scope(0.01):
        assert await p.execute(racing(0.05, 0.0)) == 0
    assert p.attempts == 1


async def test_a_hedged_call_that_fails_everywhere_raises_and_counts_a_failure() -> None:
    p = Pipeline(PolicyConfig(hedge=HedgeConfig(delay=0.01)))
    with pytest.raises(TransportError):
        await p.execute(raising(TransportError("down")))
    assert (p.attempts, p.failures) == (1, 1)


# -- shadow mode -------------------------------------------------------------------------------


async def _shadow_call(p: Pipeline, policy: str) -> None:
    events: list[PolicyEvent] = []
    p.add_listener(events.append)
    async with asyncio.timeout(2):  # a shadowed policy must not make the call wait either
        assert await p.call(ok) == "ok"
    assert p.shadow_rejections == {policy: 1}
    assert p.rejections == {}
    [event] = [e for e in events if e.kind == "shadow_rejection"]
    assert (event.policy, event.name) == (policy, p.name)
    assert event.data["reason"]


async def test_a_shadowed_breaker_never_refuses() -> None:
    p = Pipeline(PolicyConfig(breaker=BreakerConfig(), shadow=("breaker",)), name="a->b")
    assert p.breaker is not None
    p.breaker.force_open()
    await _shadow_call(p, "breaker")


async def test_a_shadowed_rate_limit_never_refuses() -> None:
    cfg = PolicyConfig(rate_limit=RateLimitConfig(rate=0.001, burst=1), shadow=("rate_limit",))
    p = Pipeline(cfg, name="a->b")
    assert p.rate is not None
    assert p.rate.try_acquire()
    await _shadow_call(p, "rate_limit")


async def test_a_shadowed_throttle_never_refuses() -> None:
    p = Pipeline(PolicyConfig(throttle=ThrottleConfig(), shadow=("throttle",)), name="a->b")
    p.throttle = AdaptiveThrottle(ThrottleConfig(), name=p.name, random=lambda: 0.0)
    for _ in range(10):  # requests the callee never accepted: the throttle now refuses
        p.throttle.try_acquire()
    await _shadow_call(p, "throttle")


async def test_a_shadowed_bulkhead_never_refuses_nor_queues() -> None:
    bulkhead = BulkheadConfig(max_concurrent_calls=1, max_queue=4, queue_timeout=30.0)
    p = Pipeline(PolicyConfig(bulkhead=bulkhead, shadow=("bulkhead",)), name="a->b")
    gate = Gate()
    slow = asyncio.create_task(p.call(gate))
    await until(lambda: gate.started == 1)
    await _shadow_call(p, "bulkhead")
    assert p.bulkhead is not None
    assert p.bulkhead.core.active == 1
    gate.event.set()
    await slow
    assert p.bulkhead.core.active == 0


async def test_a_shadowed_limiter_never_refuses_and_keeps_the_accounting() -> None:
    # Regression: the shadowed refusal released the bulkhead slot and the breaker permit, and
    # the call's outcome then released them a second time.
    cfg = PolicyConfig(
        breaker=BreakerConfig(),
        bulkhead=BulkheadConfig(max_concurrent_calls=5),
        limiter=fixed(1),
        shadow=("limiter",),
    )
    p = Pipeline(cfg, name="a->b")
    gate = Gate()
    slow = asyncio.create_task(p.call(gate))
    await until(lambda: gate.started == 1)
    await _shadow_call(p, "limiter")
    assert p.bulkhead is not None
    assert p.limiter is not None
    assert (p.bulkhead.core.active, p.limiter.inflight) == (1, 1)
    gate.event.set()
    assert await slow == "slow"
    assert (p.bulkhead.core.active, p.limiter.inflight) == (0, 0)
    assert breaker_calls(p) == (2, 0)


# -- introspection -----------------------------------------------------------------------------


async def test_snapshot_contents() -> None:
    cfg = PolicyConfig(
        timeout=1.0,
        retry=RetryPolicy(),
        breaker=BreakerConfig(),
        bulkhead=BulkheadConfig(max_concurrent_calls=3),
        limiter=fixed(4),
        throttle=ThrottleConfig(),
        rate_limit=RateLimitConfig(),
        shadow=("rate_limit",),
    )
    p = Pipeline(cfg, name="a->b", version=3)
    assert await p.call(ok) == "ok"
    snap = p.snapshot()
    assert snap == {
        "name": "a->b",
        "version": 3,
        "calls": 1,
        "attempts": 1,
        "failures": 0,
        "rejections": {},
        "shadow": ["rate_limit"],
        "shadow_rejections": {"rate_limit": 0},
        "breaker": {
            "state": "closed",
            "failure_rate": 0.0,
            "slow_call_rate": 0.0,
            "not_permitted": 0,
        },
        "limiter": {"limit": 4, "inflight": 0, "rejected": 0},
        "bulkhead": {"active": 0, "waiting": 0},
        "retry": {"retries": 0, "gave_up": {}},
        "throttle": {"reject_probability": 0.0},
    }
    msgspec.json.encode(snap)  # plain data, ready for metrics and the control plane
    assert repr(p) == "<Pipeline a->b v3>"


async def test_snapshot_of_a_bare_pipeline_and_its_counters() -> None:
    p = Pipeline()
    with pytest.raises(TransportError):
        await p.call(raising(TransportError("down")))
    snap = p.snapshot()
    assert set(snap) == {
        "name",
        "version",
        "calls",
        "attempts",
        "failures",
        "rejections",
        "shadow",
        "shadow_rejections",
    }
    assert (snap["calls"], snap["attempts"], snap["failures"]) == (1, 1, 1)


async def test_snapshot_counts_refusals_and_retries() -> None:
    p = Pipeline(PolicyConfig(retry=no_wait_retry(2), breaker=hair_trigger()))
    with pytest.raises(Rejected):
        await p.call(raising(TransportError("down"), TransportError("down")))
    snap = p.snapshot()
    assert snap["rejections"] == {"breaker": 1}
    assert snap["retry"]["retries"] == 1
    assert snap["breaker"]["state"] == "open"


def test_policy_config_rejects_bad_combinations() -> None:
    from garrison.core import ConfigError

    with pytest.raises(ConfigError, match="hedge"):
        PolicyConfig(hedge=HedgeConfig(), retry=RetryPolicy())
    with pytest.raises(ConfigError, match="not configured"):
        PolicyConfig(shadow=("breaker",))
    with pytest.raises(ConfigError, match="cannot shadow"):
        PolicyConfig(retry=RetryPolicy(), shadow=("retry",))
    for timeout in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="timeout"):
            PolicyConfig(timeout=timeout)


# -- properties over random traffic ------------------------------------------------------------

_ATTEMPT = st.tuples(st.integers(0, 3), st.booleans())  # (latency in ticks, fails)
_CALL = st.tuples(st.integers(0, 8), st.lists(_ATTEMPT, min_size=1, max_size=3))  # (arrival, ...)
_MAX_ATTEMPTS = 3
_RATIO, _FLOOR = 0.2, 1.0


async def _settle() -> None:
    for _ in range(30):
        await asyncio.sleep(0)


async def _traffic(
    plan: list[tuple[int, list[tuple[int, bool]]]],
    slots: int,
    limit: int,
    probes: int,
    shadow: tuple[str, ...],
) -> None:
    clock = FakeClock()
    cfg = PolicyConfig(
        retry=no_wait_retry(_MAX_ATTEMPTS),
        # One window longer than the run, so the bound below is exact; floor: 1 retry.
        retry_budget=RetryBudgetConfig(
            ratio=_RATIO, min_retries_per_second=_FLOOR / 10_000, window=10_000.0, buckets=1
        ),
        breaker=BreakerConfig(
            minimum_number_of_calls=2,
            sliding_window_size=4,
            wait_duration_in_open=3.0,
            permitted_calls_in_half_open=probes,
        ),
        bulkhead=BulkheadConfig(max_concurrent_calls=slots),
        limiter=fixed(limit),
        shadow=shadow,
    )
    p = Pipeline(cfg, clock=clock)
    assert p.breaker is not None
    assert p.bulkhead is not None
    assert p.limiter is not None
    assert p.retrier is not None
    breaker, bulkhead, limiter = p.breaker, p.bulkhead.core, p.limiter
    episode = [0]
    started_as_probe: dict[int, int] = {}

    def on_event(event: PolicyEvent) -> None:
        if event.policy == "breaker" and event.kind == "state_change":
            episode[0] += 1

    p.add_listener(on_event)

    def check() -> None:
        assert bulkhead.active <= slots  # (a)
        assert limiter.inflight <= limit  # (b)

    async def attempt(script: Iterator[tuple[int, bool]]) -> str:
        check()
        # No await between admission and here (the bulkhead has no queue): this is the state
        # the call was admitted in.
        if breaker.state is BreakerState.HALF_OPEN:
            n = started_as_probe[episode[0]] = started_as_probe.get(episode[0], 0) + 1
            assert n <= probes  # (c) half-open probes are bounded
        latency, fails = next(script, (0, False))
        await clock.sleep(latency)
        if fails:
            raise TransportError("down")
        return "ok"

    async def call(script: list[tuple[int, bool]]) -> None:
        with contextlib.suppress(Rejected, TransportError):
            await p.call(attempt, iter(script))

    tasks: list[asyncio.Task[None]] = []
    for tick in range(max(t for t, _ in plan) + 1):
        tasks += [asyncio.create_task(call(script)) for t, script in plan if t == tick]
        await _settle()
        check()
        clock.advance(1.0)
        await _settle()
        check()
    for _ in range(100):
        if all(t.done() for t in tasks):
            break
        clock.advance(1.0)
        await _settle()
        check()
    for t in tasks:
        t.result()  # done, and nothing unexpected raised

    assert (bulkhead.active, bulkhead.waiting, limiter.inflight) == (0, 0, 0)  # (a), (b)
    assert p.calls == len(plan)
    assert p.attempts <= p.calls * _MAX_ATTEMPTS  # (d)
    assert p.attempts <= p.calls + p.retrier.retries
    assert p.retrier.retries <= max(_RATIO * p.calls, _FLOOR)  # (d) the budget holds
    # (c) no permit leaked: once any open wait has passed, the breaker admits a call.
    clock.advance(10.0)
    assert breaker.try_acquire()


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(_CALL, min_size=1, max_size=20),
    slots=st.integers(1, 3),
    limit=st.integers(1, 3),
    probes=st.integers(1, 2),
    shadow=st.sampled_from([(), ("bulkhead",), ("limiter",), ("bulkhead", "limiter")]),
)
def test_accounting_holds_over_random_traffic(
    plan: list[tuple[int, list[tuple[int, bool]]]],
    slots: int,
    limit: int,
    probes: int,
    shadow: tuple[str, ...],
) -> None:
    asyncio.run(_traffic(plan, slots, limit, probes, shadow))
