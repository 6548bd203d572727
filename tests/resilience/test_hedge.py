"""Hedging decisions: delay (fixed / percentile), per-call limit, budget."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock
from garrison.resilience._budget import RetryBudget, RetryBudgetConfig
from garrison.resilience._hedge import HedgeConfig, Hedger, LatencyWindow


def test_fixed_delay() -> None:
    h = Hedger(HedgeConfig(delay=0.05), clock=FakeClock())
    assert h.delay() == 0.05
    for _ in range(100):
        h.record_latency(1.0)
    assert h.delay() == 0.05


def test_adaptive_delay_waits_for_samples_then_follows_the_percentile() -> None:
    h = Hedger(HedgeConfig(percentile=0.9, min_samples=10, max_delay=2.0), clock=FakeClock())
    assert h.delay() == 2.0  # nothing known yet
    for ms in range(1, 101):  # 1..100 ms
        h.record_latency(ms / 1000)
    assert h.delay() == pytest.approx(0.090)


def test_adaptive_delay_is_clamped() -> None:
    h = Hedger(HedgeConfig(min_samples=1, min_delay=0.01, max_delay=0.2), clock=FakeClock())
    for _ in range(64):
        h.record_latency(0.0001)
    assert h.delay() == 0.01
    for _ in range(256):
        h.record_latency(5.0)
    assert h.delay() == 0.2


def test_adaptive_delay_forgets_old_latencies() -> None:
    h = Hedger(HedgeConfig(window=32, min_samples=8, max_delay=10), clock=FakeClock())
    for _ in range(32):
        h.record_latency(1.0)
    for _ in range(32):
        h.record_latency(0.1)
    assert h.delay() == pytest.approx(0.1)


def test_at_most_max_hedged_per_call() -> None:
    clock = FakeClock()
    h = Hedger(
        HedgeConfig(max_hedged=2, budget=RetryBudgetConfig(ratio=10, min_retries_per_second=0)),
        clock=clock,
    )
    h.record_request()
    assert h.should_hedge(0)
    assert h.should_hedge(1)
    assert not h.should_hedge(2)
    assert h.hedges == 2
    assert not Hedger(HedgeConfig(max_hedged=0), clock=clock).should_hedge(0)


def test_no_hedge_once_the_deadline_is_spent() -> None:
    h = Hedger(clock=FakeClock())
    h.record_request()
    assert not h.should_hedge(0, remaining=0.0)
    assert h.budget.retries == 0


def test_budget_limits_hedges_to_a_share_of_requests() -> None:
    clock = FakeClock()
    h = Hedger(
        HedgeConfig(budget=RetryBudgetConfig(ratio=0.1, min_retries_per_second=0)), clock=clock
    )
    hedged = 0
    for _ in range(200):
        h.record_request()
        hedged += h.should_hedge(0)
    assert hedged == 20


def test_a_shared_budget_can_be_given() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0, min_retries_per_second=0), clock=clock)
    h = Hedger(budget=budget, clock=clock)
    h.record_request()
    assert not h.should_hedge(0)
    assert h.budget is budget


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=300),
    size=st.integers(1, 64),
    q=st.floats(0.01, 0.99),
)
def test_latency_window_is_the_percentile_of_a_recent_window(
    values: list[float], size: int, q: float
) -> None:
    """Nearest-rank percentile of the last ``size`` values, lagging at most ``size / 4`` adds."""
    w = LatencyWindow(size, q)
    exact: list[float] = []
    lag = max(1, size // 4)
    for i, v in enumerate(values):
        w.add(v)
        recent = sorted(values[max(0, i + 1 - size) : i + 1])
        exact.append(recent[max(0, math.ceil(q * len(recent)) - 1)])
        assert w.value() in exact[-lag:]
    fresh = LatencyWindow(size, q)  # a window asked for the first time computes at once
    for v in values:
        fresh.add(v)
    assert fresh.value() == exact[-1]


def test_latency_window_empty() -> None:
    assert LatencyWindow().value() is None
    with pytest.raises(ValueError, match="size"):
        LatencyWindow(0)
    w = LatencyWindow(8, 0.5, min_samples=3)
    w.add(1.0)
    w.add(2.0)
    assert w.value() is None
    w.add(3.0)
    assert w.value() == 2.0


@settings(max_examples=80, deadline=None)
@given(
    seq=st.lists(st.tuples(st.integers(0, 3), st.floats(0, 2, allow_nan=False)), max_size=150),
    ratio=st.floats(0, 1),
    max_hedged=st.integers(0, 3),
)
def test_hedges_stay_within_the_budget_and_the_per_call_limit(
    seq: list[tuple[int, float]], ratio: float, max_hedged: int
) -> None:
    clock = FakeClock(start=0.0)
    window = 10.0
    h = Hedger(
        HedgeConfig(
            max_hedged=max_hedged,
            budget=RetryBudgetConfig(ratio=ratio, min_retries_per_second=0.1, window=window),
        ),
        clock=clock,
        # the rng is not used by hedging: decisions are deterministic given the clock
    )
    rng = random.Random(0)
    for wanted, dt in seq:
        clock.advance(dt)
        h.record_request()
        sent = 0
        while sent < wanted + rng.randint(0, 1) and h.should_hedge(sent):
            sent += 1
            assert h.budget.retries <= max(ratio * h.budget.requests, 0.1 * window)
        assert sent <= max_hedged


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("delay", -1),
        ("percentile", 1.0),
        ("percentile", 0),
        ("min_delay", -0.1),
        ("max_delay", 0.0001),
        ("min_samples", 0),
        ("window", 0),
        ("max_hedged", -1),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        HedgeConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.key == field
