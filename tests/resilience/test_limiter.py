"""The concurrency limiter: admission, criticality shedding, deadlines, tokens, and a simulation."""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, DeadlineExceeded, FakeClock, ServiceUnavailable
from garrison.resilience._base import Criticality, Listener, PolicyEvent, Rejected
from garrison.resilience._limiter import ConcurrencyLimiter, LimiterConfig, Token
from garrison.resilience._limits import (
    AIMDConfig,
    AIMDLimit,
    EnvoyGradientConfig,
    FixedLimit,
    Gradient2Config,
    Gradient2Limit,
    WindowedLimit,
)

SHEDDABLE, DEFAULT, CRITICAL, CRITICAL_PLUS = tuple(Criticality)


def fixed(limit: int, clock: FakeClock | None = None, **config: object) -> ConcurrencyLimiter:
    return ConcurrencyLimiter(
        LimiterConfig(**config),  # type: ignore[arg-type]
        limit=limit,
        clock=clock or FakeClock(),
        name="a->b",
    )


def fill(limiter: ConcurrencyLimiter, criticality: Criticality) -> list[Token]:
    """Acquire with ``criticality`` until refused."""
    tokens = []
    while (token := limiter.try_acquire(criticality)) is not None:
        tokens.append(token)
    return tokens


# -- admission and shedding -------------------------------------------------------------------


def test_admits_up_to_the_limit_then_refuses() -> None:
    limiter = fixed(10)
    tokens = fill(limiter, CRITICAL)
    assert len(tokens) == 10
    assert limiter.inflight == 10
    with pytest.raises(Rejected) as info:
        limiter.acquire(CRITICAL)
    exc = info.value
    assert (exc.policy, exc.reason, exc.retryable) == ("limiter", "limit reached", False)
    assert isinstance(exc, ServiceUnavailable)
    tokens[0].on_success()
    assert limiter.acquire(CRITICAL) is not None


def test_default_thresholds_shed_in_criticality_order() -> None:
    limiter = fixed(20)
    assert [limiter.capacity(c) for c in Criticality] == [15, 18, 20, 20]
    assert len(fill(limiter, SHEDDABLE)) == 15
    with pytest.raises(Rejected, match="shed sheddable"):
        limiter.acquire(SHEDDABLE)
    assert len(fill(limiter, DEFAULT)) == 3
    with pytest.raises(Rejected, match="shed default"):
        limiter.acquire(DEFAULT)
    assert len(fill(limiter, CRITICAL)) == 2
    with pytest.raises(Rejected, match="limit reached"):
        limiter.acquire(CRITICAL_PLUS)
    snap = limiter.snapshot()
    assert snap.rejected_by_reason == {"limit reached": 2, "shed": 4, "deadline expired": 0}
    assert snap.rejected_by_criticality == {
        "sheddable": 2,
        "default": 2,
        "critical": 1,
        "critical_plus": 1,
    }


def test_thresholds_are_configurable_and_may_exceed_the_limit() -> None:
    limiter = fixed(
        10,
        sheddable_fraction=0.5,
        default_fraction=0.5,
        critical_fraction=1.0,
        critical_plus_fraction=1.2,
    )
    assert [limiter.capacity(c) for c in Criticality] == [5, 5, 10, 12]
    assert len(fill(limiter, CRITICAL_PLUS)) == 12


def test_an_idle_limiter_admits_every_criticality_even_at_limit_one() -> None:
    limiter = fixed(1)
    for c in Criticality:
        token = limiter.try_acquire(c)
        assert token is not None
        token.on_ignore()


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"sheddable_fraction": 0}, "sheddable_fraction"),
        ({"critical_plus_fraction": 2.5}, "critical_plus_fraction"),
        ({"default_fraction": 0.5}, "default_fraction"),  # below sheddable's 0.75
        ({"critical_fraction": 0.8}, "critical_fraction"),  # below default's 0.9
        ({"min_deadline": -1.0}, "min_deadline"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        LimiterConfig(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


arrivals = st.lists(
    st.one_of(
        st.sampled_from(list(Criticality)).map(lambda c: ("arrive", int(c))),
        st.integers(min_value=0, max_value=1000).map(lambda i: ("release", i)),
    ),
    max_size=150,
)


@settings(max_examples=80, deadline=None)
@given(limit=st.integers(min_value=1, max_value=40), ops=arrivals)
def test_lower_criticality_is_always_refused_first(limit: int, ops: list[tuple[str, int]]) -> None:
    limiter = fixed(limit)
    held: list[Token] = []
    outcome: dict[tuple[int, int], bool] = {}  # (inflight before, criticality) -> admitted
    for op, value in ops:
        if op == "release":
            if held:
                held.pop(value % len(held)).on_success()
            continue
        inflight = limiter.inflight
        token = limiter.try_acquire(Criticality(value))
        outcome[(inflight, value)] = token is not None
        if token is not None:
            held.append(token)
        # CRITICAL work is refused only at the full limit, and everything is admitted when idle.
        if value >= CRITICAL:
            assert (token is None) == (inflight >= limit)
        if inflight == 0:
            assert token is not None
        assert limiter.inflight <= limit
    for (inflight, c), admitted in outcome.items():
        for (other_inflight, other), other_admitted in outcome.items():
            # admitted at some load => admitted at any lower load and for any higher criticality
            if admitted and other >= c and other_inflight <= inflight:
                assert other_admitted, (inflight, c, other_inflight, other)


@settings(max_examples=40, deadline=None)
@given(mix=st.lists(st.sampled_from(list(Criticality)), min_size=1, max_size=120))
def test_under_rising_inflight_sheddable_goes_before_default_before_critical(
    mix: list[Criticality],
) -> None:
    limiter = fixed(20)
    refused: list[tuple[Criticality, int]] = []
    admitted: list[tuple[Criticality, int]] = []
    for c in mix:  # nothing is released: inflight only rises
        inflight = limiter.inflight
        (admitted if limiter.try_acquire(c) is not None else refused).append((c, inflight))
    # Shedding order: whenever a criticality is refused at some load, no criticality at or
    # below it is admitted at that load or above (the first refusal of a criticality depends on
    # when it happens to arrive, so it is the pairs that are compared, not first refusals).
    for c, x in refused:
        for c2, y in admitted:
            assert not (c2 <= c and y >= x), (c, x, c2, y)
    for c, x in refused:
        if c is CRITICAL:
            assert x == 20


# -- deadlines --------------------------------------------------------------------------------


def test_expired_work_is_dropped_before_it_starts() -> None:
    limiter = fixed(10)
    for remaining in (0.0, -3.0):
        with pytest.raises(Rejected) as info:
            limiter.acquire(CRITICAL_PLUS, deadline_remaining=remaining)
        assert info.value.reason == "deadline expired"
    assert limiter.inflight == 0
    token = limiter.acquire(DEFAULT, deadline_remaining=0.5)
    token.on_success()
    assert limiter.snapshot().rejected_by_reason["deadline expired"] == 2


def test_min_deadline_drops_work_that_cannot_finish() -> None:
    limiter = fixed(10, min_deadline=0.05)
    assert limiter.try_acquire(deadline_remaining=0.05) is None
    assert limiter.try_acquire(deadline_remaining=0.06) is not None


# -- tokens -----------------------------------------------------------------------------------


class RecordingLimit:
    """A fixed limit of 100 that records its samples."""

    name = ""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, int, bool]] = []

    @property
    def limit(self) -> int:
        return 100

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        self.samples.append((start_time, rtt, inflight, dropped))

    def add_listener(self, listener: Listener) -> None:
        pass

    def remove_listener(self, listener: Listener) -> None:
        pass


def test_tokens_feed_rtt_and_inflight_samples() -> None:
    clock = FakeClock(start=50.0)
    algo = RecordingLimit()
    limiter = ConcurrencyLimiter(limit=algo, clock=clock, name="edge")
    assert algo.name == "edge"
    a = limiter.acquire()
    clock.advance(0.1)
    b = limiter.acquire()
    c = limiter.acquire()
    assert b.start == pytest.approx(50.1)
    clock.advance(0.2)
    a.on_success()
    b.on_dropped()
    c.on_ignore()  # no sample
    (start_a, rtt_a, inflight_a, dropped_a), (start_b, rtt_b, inflight_b, dropped_b) = algo.samples
    assert (start_a, inflight_a, dropped_a) == (50.0, 1, False)
    assert rtt_a == pytest.approx(0.3)
    assert start_b == pytest.approx(50.1)
    assert rtt_b == pytest.approx(0.2)
    assert (inflight_b, dropped_b) == (2, True)
    snap = limiter.snapshot()
    assert (snap.accepted, snap.succeeded, snap.dropped, snap.ignored) == (3, 1, 1, 1)
    assert snap.inflight == 0


def test_a_token_releases_once() -> None:
    limiter = fixed(2)
    token = limiter.acquire()
    token.on_success()
    token.on_dropped()
    token.on_ignore()
    token.on_success()
    assert token.released
    assert limiter.inflight == 0
    assert limiter.snapshot().succeeded == 1
    assert "released" in repr(token)


def test_token_as_context_manager() -> None:
    limiter = fixed(5)
    with limiter.acquire() as token:
        assert not token.released
    with pytest.raises(TimeoutError), limiter.acquire():
        raise TimeoutError
    with pytest.raises(DeadlineExceeded), limiter.acquire():
        raise DeadlineExceeded("late")
    with pytest.raises(ValueError, match="bug"), limiter.acquire():
        raise ValueError("bug")
    with limiter.acquire() as token:
        token.on_dropped()  # explicit outcome wins
    snap = limiter.snapshot()
    assert (snap.succeeded, snap.dropped, snap.ignored, snap.inflight) == (1, 3, 1, 0)


@settings(max_examples=80, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["acquire", "success", "dropped", "ignore"]),
            st.integers(min_value=0, max_value=10_000),
            st.sampled_from(list(Criticality)),
            st.sampled_from([None, None, -1.0, 0.0, 1.0]),
        ),
        max_size=200,
    ),
    shadow=st.booleans(),
)
def test_tokens_never_leak(
    ops: list[tuple[str, int, Criticality, float | None]], shadow: bool
) -> None:
    clock = FakeClock()
    algo = AIMDLimit(AIMDConfig(initial_limit=5, max_limit=20, timeout=0.05))
    limiter = ConcurrencyLimiter(LimiterConfig(shadow=shadow), limit=algo, clock=clock)
    issued: list[Token] = []
    for op, index, criticality, deadline in ops:
        clock.advance(index / 100_000)
        if op == "acquire":
            token = limiter.try_acquire(criticality, deadline)
            if token is not None:
                issued.append(token)
        elif issued:
            token = issued[index % len(issued)]  # may already be released: must be harmless
            {"success": token.on_success, "dropped": token.on_dropped, "ignore": token.on_ignore}[
                op
            ]()
        held = sum(not t.released for t in issued)
        assert limiter.inflight == held >= 0
        if not shadow:
            assert held <= max(limiter.limit, 20)
    for token in issued:
        token.on_success()
    snap = limiter.snapshot()
    assert snap.inflight == 0
    assert snap.accepted == len(issued) == snap.succeeded + snap.dropped + snap.ignored


# -- the limit moving -------------------------------------------------------------------------


def test_caps_follow_the_limit_and_listeners_hear_of_changes() -> None:
    clock = FakeClock()
    events: list[PolicyEvent] = []
    limiter = ConcurrencyLimiter(
        LimiterConfig(limit=AIMDConfig(initial_limit=4), window=None), clock=clock, name="e"
    )
    assert isinstance(limiter.algorithm, AIMDLimit)
    limiter.add_listener(events.append)
    tokens = fill(limiter, CRITICAL)
    assert len(tokens) == 4
    for token in tokens:
        clock.advance(0.01)
        token.on_success()
    # the first call ran with 1 of 4 in flight: too little use to justify growth
    assert limiter.limit == 7
    assert limiter.capacity(CRITICAL) == 7
    assert limiter.capacity(SHEDDABLE) == 5
    assert [(e.name, e.data["to"]) for e in events] == [("e", 5), ("e", 6), ("e", 7)]
    limiter.remove_listener(events.append)
    token = limiter.acquire()
    token.on_dropped()
    assert limiter.limit == 6
    assert len(events) == 3


def test_int_limit_is_fixed_and_settable() -> None:
    limiter = ConcurrencyLimiter(limit=3, clock=FakeClock())
    assert isinstance(limiter.algorithm, FixedLimit)
    limiter.algorithm.set(6)
    assert limiter.limit == 6
    assert limiter.capacity(CRITICAL) == 6


def test_default_algorithm_is_windowed_gradient2() -> None:
    limiter = ConcurrencyLimiter(name="x")
    assert isinstance(limiter.algorithm, WindowedLimit)
    assert isinstance(limiter.algorithm.delegate, Gradient2Limit)
    assert limiter.limit == 20
    token = limiter.acquire()  # the real clock
    token.on_success()
    assert limiter.inflight == 0
    assert "x" in repr(limiter)


def test_shadow_mode_admits_and_counts() -> None:
    limiter = fixed(2, shadow=True)
    tokens = [limiter.acquire(SHEDDABLE) for _ in range(5)]
    assert limiter.inflight == 5
    assert limiter.try_acquire(DEFAULT, deadline_remaining=-1) is not None
    snap = limiter.snapshot()
    assert snap.shadow
    # SHEDDABLE may fill 1 of 2: the 2nd is shed, the 3rd to 5th exceed the limit itself
    assert snap.rejected == 5
    assert snap.rejected_by_reason == {"limit reached": 3, "shed": 1, "deadline expired": 1}
    for token in tokens:
        token.on_success()


# -- simulation -------------------------------------------------------------------------------


@dataclass
class SimResult:
    limits: list[int]
    """The limit sampled once per simulated second."""
    goodput: float
    """Completed calls per second over the second half of the run."""
    p90_latency: float
    """Over the second half of the run."""


def simulate(
    config: LimiterConfig,
    *,
    capacity: int = 20,
    base_latency: float = 0.1,
    overload: float = 2.0,
    duration: float = 120.0,
    seed: int = 7,
) -> SimResult:
    """A server with ``capacity`` workers: a call that starts with ``n`` calls in flight takes
    ``base_latency * max(1, n / capacity)`` (+-10%), so latency grows with concurrency once the
    workers are busy. Calls arrive evenly at ``overload`` times what the server can complete."""
    clock = FakeClock(start=0.0)
    limiter = ConcurrencyLimiter(config, clock=clock, random=random.Random(seed).random)
    rng = random.Random(seed)
    gap = base_latency / (capacity * overload)
    running: list[tuple[float, int, Token]] = []
    seq = 0
    next_arrival = 0.0
    limits: list[int] = []
    done = 0
    latencies: list[float] = []
    while next_arrival < duration:
        if running and running[0][0] <= next_arrival:
            end, _, token = heapq.heappop(running)
            clock.advance(end - clock.monotonic())
            if end >= duration / 2:
                done += 1
                latencies.append(end - token.start)
            token.on_success()
            continue
        clock.advance(next_arrival - clock.monotonic())
        next_arrival += gap
        if len(limits) < int(clock.monotonic()):
            limits.append(limiter.limit)
        admitted = limiter.try_acquire()
        if admitted is None:
            continue
        latency = base_latency * max(1.0, limiter.inflight / capacity) * rng.uniform(0.9, 1.1)
        seq += 1
        heapq.heappush(running, (clock.monotonic() + latency, seq, admitted))
    latencies.sort()
    return SimResult(limits, done / (duration / 2), latencies[int(len(latencies) * 0.9)])


def test_gradient2_settles_near_capacity() -> None:
    # rtt_tolerance 1.0: the limit shrinks as soon as latency exceeds the long-term average,
    # so it settles just above capacity (capacity + queue allowance), not at tolerance x capacity.
    config = LimiterConfig(limit=Gradient2Config(initial_limit=5, min_limit=1, rtt_tolerance=1.0))
    result = simulate(config)
    settled = result.limits[len(result.limits) // 2 :]
    assert 20 <= min(settled) <= max(settled) <= 32, settled
    assert result.goodput >= 0.9 * 200  # the workers stay busy
    assert result.p90_latency <= 1.7 * 0.1  # and calls do not queue for long


def test_gradient2_with_netflix_defaults_stays_within_its_tolerance() -> None:
    # rtt_tolerance 1.5 accepts up to 50% extra latency, so the limit rises to about
    # 1.5 x capacity; the long-term average slowly absorbs sustained queueing, so it keeps
    # creeping up (Gradient2's known drift) but stays bounded over this run.
    result = simulate(LimiterConfig(limit=Gradient2Config(initial_limit=5, rtt_tolerance=1.5)))
    settled = result.limits[len(result.limits) // 2 :]
    assert 25 <= min(settled) <= max(settled) <= 55, settled
    assert result.goodput >= 0.9 * 200


def test_envoy_gradient_settles_near_capacity_under_3x_overload() -> None:
    config = LimiterConfig(limit=EnvoyGradientConfig(min_rtt_requests=20))
    result = simulate(config, overload=3.0)
    settled = [x for x in result.limits[len(result.limits) // 2 :] if x > 3]  # not measuring
    assert 20 <= min(settled) <= max(settled) <= 45, settled
    assert result.goodput >= 0.85 * 200  # minRTT measurements cost some throughput
