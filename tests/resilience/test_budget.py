"""RetryBudget: ratio of recent requests, floor, sliding buckets."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock
from garrison.resilience._budget import RetryBudget, RetryBudgetConfig


def make(clock: FakeClock, **kw: float) -> RetryBudget:
    return RetryBudget(RetryBudgetConfig(**kw), clock=clock)  # type: ignore[arg-type]


def test_ratio_of_requests() -> None:
    clock = FakeClock()
    budget = make(clock, ratio=0.2, min_retries_per_second=0, window=10)
    for _ in range(50):
        budget.record_request()
    granted = sum(budget.try_withdraw() for _ in range(100))
    assert granted == 10
    assert not budget.can_withdraw()
    budget.record_request()
    budget.record_request()
    budget.record_request()
    budget.record_request()
    budget.record_request()
    assert budget.try_withdraw()  # 55 requests: 11 retries
    assert not budget.try_withdraw()


def test_floor_allows_retries_without_traffic() -> None:
    clock = FakeClock()
    budget = make(clock, ratio=0.2, min_retries_per_second=0.5, window=10)
    assert sum(budget.try_withdraw() for _ in range(20)) == 5


def test_refused_withdrawal_takes_nothing() -> None:
    clock = FakeClock()
    budget = make(clock, ratio=0.5, min_retries_per_second=0, window=10)
    budget.record_request()
    budget.record_request()
    assert budget.try_withdraw()
    assert not budget.try_withdraw()
    assert budget.retries == 1
    assert budget.requests == 2


def test_window_slides() -> None:
    clock = FakeClock()
    budget = make(clock, ratio=1.0, min_retries_per_second=0, window=10, buckets=10)
    for _ in range(10):
        budget.record_request()
    for _ in range(10):
        assert budget.try_withdraw()
    assert not budget.try_withdraw()
    clock.advance(5)
    assert not budget.try_withdraw()  # still in the window
    clock.advance(5)
    # the first bucket has left: its requests and its retries are forgotten together
    assert budget.requests == 0
    assert budget.retries == 0
    assert not budget.try_withdraw()
    budget.record_request()
    assert budget.try_withdraw()


def test_long_gap_resets() -> None:
    clock = FakeClock()
    budget = make(clock, ratio=1.0, min_retries_per_second=0, window=1, buckets=4)
    for _ in range(3):
        budget.record_request()
    assert budget.try_withdraw()
    clock.advance(1_000)
    assert budget.requests == 0
    assert budget.retries == 0
    assert not budget.can_withdraw()


def test_partial_slide_keeps_recent_buckets() -> None:
    clock = FakeClock(start=0.0)
    budget = make(clock, ratio=1.0, min_retries_per_second=0, window=4, buckets=4)
    budget.record_request()  # bucket 0
    clock.advance(1)
    budget.record_request()  # bucket 1
    clock.advance(1)
    budget.record_request()  # bucket 2
    clock.advance(2)  # bucket 4: bucket 0 has left
    assert budget.can_withdraw()
    assert budget.requests == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ratio", -0.1),
        ("ratio", math.nan),
        ("min_retries_per_second", -1),
        ("window", 0),
        ("window", math.inf),
        ("buckets", 0),
        ("buckets", 2.5),
        ("buckets", True),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        RetryBudgetConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.key == field
    assert "expected" in str(info.value)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("req"), st.integers(1, 5)),
        st.tuples(st.just("retry"), st.integers(1, 5)),
        st.tuples(st.just("wait"), st.floats(0, 3, allow_nan=False)),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=ops,
    ratio=st.floats(0, 2, allow_nan=False),
    floor=st.floats(0, 1, allow_nan=False),
    buckets=st.integers(1, 12),
    window=st.sampled_from([2.0, 0.7, 3.3]),
    start=st.floats(-50, 50, allow_nan=False),
)
def test_budget_holds_over_any_sequence(
    ops: list[tuple[str, float]],
    ratio: float,
    floor: float,
    buckets: int,
    window: float,
    start: float,
) -> None:
    """At every granted retry: retries in the window <= max(ratio x requests, floor x window)."""
    clock = FakeClock(start=start)
    budget = make(clock, ratio=ratio, min_retries_per_second=floor, window=window, buckets=buckets)
    inv = buckets / window  # the bucket of time t is floor(t * inv), as in the budget
    log: list[tuple[int, str]] = []  # (bucket number, kind): an independent model of the window

    def in_window(kind: str) -> int:
        head = math.floor(clock.monotonic() * inv)
        return sum(1 for b, k in log if k == kind and head - buckets < b <= head)

    for op, arg in ops:
        if op == "wait":
            clock.advance(arg)
        elif op == "req":
            for _ in range(int(arg)):
                budget.record_request()
                log.append((math.floor(clock.monotonic() * inv), "req"))
        else:
            for _ in range(int(arg)):
                granted = budget.try_withdraw()
                if granted:
                    log.append((math.floor(clock.monotonic() * inv), "retry"))
                    assert in_window("retry") <= max(ratio * in_window("req"), floor * window)
                else:  # refused only when one more would break the bound
                    assert in_window("retry") + 1 > max(ratio * in_window("req"), floor * window)
                assert budget.retries == in_window("retry")
                assert budget.requests == in_window("req")


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(-(10**9), 10**9),
    buckets=st.integers(1, 50),
    window=st.floats(0.001, 1000, allow_nan=False),
)
def test_bucket_boundaries_match_the_bucket_numbers(k: int, buckets: int, window: float) -> None:
    """The fast path compares with the next bucket's first instant; it must agree with floor()."""
    budget = RetryBudget(RetryBudgetConfig(window=window, buckets=buckets), clock=FakeClock())
    inv = buckets / window
    t = budget._bucket_start(k)
    assert math.floor(t * inv) >= k
    assert math.floor(math.nextafter(t, -math.inf) * inv) < k
