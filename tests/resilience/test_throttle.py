"""Client-side adaptive throttling: the SRE formula over a sliding window, with a fixed coin."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock
from garrison.resilience._base import Criticality, Rejected
from garrison.resilience._throttle import AdaptiveThrottle, ThrottleConfig

NEVER = 0.999_999_999  # a coin that never lands below p (p < 1 always: requests / (requests + 1))
ALWAYS = 0.0  # a coin that lands below any p > 0


def formula(requests: int, accepts: int, k: float) -> float:
    return max(0.0, (requests - k * accepts) / (requests + 1))


class Coin:
    """An injectable random source: returns ``value`` and counts the tosses."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.tosses = 0

    def __call__(self) -> float:
        self.tosses += 1
        return self.value


def throttle(clock: FakeClock, **config: Any) -> tuple[AdaptiveThrottle, Coin]:
    """A throttle whose coin never throttles until the test sets ``coin.value``."""
    coin = Coin(NEVER)
    return AdaptiveThrottle(ThrottleConfig(**config), clock=clock, random=coin, name="a->b"), coin


def drive(t: AdaptiveThrottle, requests: int, accepts: int) -> None:
    """Record ``requests`` calls of which the first ``accepts`` were accepted by the backend."""
    for i in range(requests):
        t.try_acquire()
        if i < accepts:
            t.on_accepted()
        else:
            t.on_rejected()


def test_a_healthy_backend_is_never_throttled() -> None:
    clock = FakeClock()
    t, coin = throttle(clock)
    coin.value = ALWAYS
    for _ in range(1000):
        assert t.try_acquire()
        t.on_accepted()
        clock.advance(0.01)
    assert t.reject_probability == 0.0
    assert coin.tosses == 0  # no coin is even tossed while p == 0


@settings(max_examples=60, deadline=None)
@given(
    requests=st.integers(min_value=0, max_value=300),
    accept_share=st.floats(min_value=0.0, max_value=1.0),
    k=st.floats(min_value=1.0, max_value=4.0),
)
def test_probability_matches_the_formula(requests: int, accept_share: float, k: float) -> None:
    accepts = int(requests * accept_share)
    t, _ = throttle(FakeClock(), k=k)
    drive(t, requests, accepts)
    assert t.requests == requests
    assert t.accepts == accepts
    assert t.reject_probability == pytest.approx(formula(requests, accepts, k))


def test_the_coin_decides_against_the_formula() -> None:
    clock = FakeClock()
    # 10 requests, 2 accepted, k = 2: p = (10 - 4) / 11
    p = 6 / 11
    below, coin = throttle(clock)
    drive(below, 10, 2)
    coin.value = p - 0.01
    assert not below.try_acquire()
    above, coin = throttle(clock)
    drive(above, 10, 2)
    coin.value = p + 0.01
    assert above.try_acquire()


def test_locally_refused_calls_count_as_requests() -> None:
    clock = FakeClock()
    t, coin = throttle(clock)
    drive(t, 10, 0)
    coin.value = ALWAYS
    refused = sum(not t.try_acquire() for _ in range(100))
    assert refused == 100
    assert t.requests == 110
    assert t.reject_probability == pytest.approx(110 / 111)
    snap = t.snapshot()
    assert (snap.requests, snap.accepts, snap.throttled, snap.backend_rejected) == (110, 0, 100, 10)
    assert snap.name == "a->b"


def test_deterministic_sequence_matches_the_formula_call_by_call() -> None:
    clock = FakeClock()
    t, coin = throttle(clock)
    drive(t, 20, 5)
    values = [0.1, 0.9, 0.3, 0.5, 0.05, 0.7, 0.45, 0.6] * 4
    for value in values:
        p = formula(t.requests, t.accepts, 2.0)
        coin.value = value
        assert t.try_acquire() == (not value < p), (value, p)
    assert t.requests == 20 + len(values)


def test_the_backend_recovering_lowers_the_probability() -> None:
    clock = FakeClock()
    t, _ = throttle(clock)
    drive(t, 100, 10)
    high = t.reject_probability
    assert high > 0.7
    for _ in range(100):
        t.try_acquire()
        t.on_accepted()
    assert t.reject_probability < high
    assert t.reject_probability == pytest.approx(formula(200, 110, 2.0))


def test_counts_slide_out_of_the_window() -> None:
    clock = FakeClock()
    t, _ = throttle(clock, window=120.0, buckets=12)  # 10 s buckets
    drive(t, 50, 0)
    clock.advance(60.0)
    drive(t, 30, 30)
    assert (t.requests, t.accepts) == (80, 30)
    clock.advance(60.0)  # the first 50 fell out; the later 30 are still inside
    assert (t.requests, t.accepts) == (30, 30)
    assert t.reject_probability == 0.0
    clock.advance(1000.0)  # a long silence clears everything
    assert (t.requests, t.accepts) == (0, 0)
    drive(t, 5, 1)
    assert (t.requests, t.accepts) == (5, 1)


@settings(max_examples=40, deadline=None)
@given(
    events=st.lists(
        st.tuples(st.floats(min_value=0, max_value=30), st.booleans()),
        max_size=150,
    )
)
def test_window_counts_equal_a_brute_force_count(events: list[tuple[float, bool]]) -> None:
    clock = FakeClock(start=0.0)
    t, _ = throttle(clock, window=60.0, buckets=6)
    log: list[tuple[float, bool]] = []
    for gap, accepted in events:
        clock.advance(gap)
        t.try_acquire()
        if accepted:
            t.on_accepted()
        log.append((clock.monotonic(), accepted))
        # bucketed window: everything from the start of the oldest live bucket onwards
        now = clock.monotonic()
        oldest = (now // 10.0 - 5) * 10.0
        live = [a for at, a in log if at >= oldest]
        assert t.requests == len(live)
        assert t.accepts == sum(live)


def test_critical_plus_is_never_throttled_when_configured() -> None:
    clock = FakeClock()
    t, coin = throttle(clock, never_throttle=Criticality.CRITICAL_PLUS)
    drive(t, 50, 0)
    coin.value = ALWAYS
    assert all(t.try_acquire(Criticality.CRITICAL_PLUS) for _ in range(20))
    assert not t.try_acquire(Criticality.CRITICAL)
    assert t.requests == 71  # exempt calls still count

    plain, coin = throttle(clock)
    drive(plain, 50, 0)
    coin.value = ALWAYS
    assert not plain.try_acquire(Criticality.CRITICAL_PLUS)


def test_acquire_raises_a_non_retryable_rejection() -> None:
    t, coin = throttle(FakeClock())
    drive(t, 10, 0)
    coin.value = ALWAYS
    with pytest.raises(Rejected) as info:
        t.acquire()
    assert (info.value.policy, info.value.reason, info.value.retryable) == (
        "throttle",
        "throttled",
        False,
    )
    ok, _ = throttle(FakeClock())
    ok.acquire()


def test_shadow_mode_counts_but_never_refuses() -> None:
    t, coin = throttle(FakeClock(), shadow=True)
    drive(t, 10, 0)
    coin.value = ALWAYS
    assert all(t.try_acquire() for _ in range(10))
    snap = t.snapshot()
    assert snap.shadow
    assert snap.throttled == 10
    assert "AdaptiveThrottle" in repr(t)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"k": 0.5}, "k"), ({"window": 0}, "window"), ({"buckets": 0}, "buckets")],
)
def test_bad_config_names_the_field(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ThrottleConfig(**kwargs)
    assert info.value.key == key


def test_config_from_plain_data() -> None:
    cfg = msgspec.convert({"k": 1.5, "never_throttle": 3}, ThrottleConfig)
    assert cfg.never_throttle is Criticality.CRITICAL_PLUS
    with pytest.raises(ConfigError):
        msgspec.convert({"k": 0.1}, ThrottleConfig)
