"""Retry decisions: retryability, full-jitter backoff, Retry-After, deadline, budget, layers."""

from __future__ import annotations

import email.utils
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import (
    ConfigError,
    DeadlineExceeded,
    FakeClock,
    InvalidInput,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
)
from garrison.resilience._base import Rejected
from garrison.resilience._budget import RetryBudget, RetryBudgetConfig
from garrison.resilience._retry import (
    ATTEMPT_HEADER,
    NO_RETRY_HEADER,
    GiveUp,
    Retrier,
    RetryPolicy,
    RetryState,
    may_retry,
    parse_retry_after,
    response_forbids_retry,
    retry_headers,
)


def retrier(
    clock: FakeClock | None = None, budget: RetryBudget | None = None, **kw: object
) -> Retrier:
    return Retrier(
        RetryPolicy(**kw),  # type: ignore[arg-type]
        clock=clock or FakeClock(),
        rng=random.Random(7),
        budget=budget,
    )


# -- what is retried ------------------------------------------------------------------------


def test_success_stops_and_spends_nothing() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0, min_retries_per_second=0), clock=clock)
    r = retrier(clock, budget)
    for outcome in ({}, {"status": 200}, {"status": 404}):
        d = r.decide(1, **outcome)  # type: ignore[arg-type]
        assert not d.retry
        assert d.reason is GiveUp.SUCCESS
    assert r.stops[GiveUp.SUCCESS] == 0  # success is not counted as a give-up


@pytest.mark.parametrize(
    "error",
    [
        TransportError("connection refused"),
        TimeoutError(),
        ServiceUnavailable("no instance"),
        Rejected("breaker", "open", retryable=True),
        RemoteStatusError(503, b"busy"),
        RemoteStatusError(429, b"slow down"),
    ],
)
def test_retryable_errors(error: Exception) -> None:
    d = retrier(jitter=False).decide(1, error=error)
    assert d.retry
    assert d.reason is None


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bug"),
        InvalidInput("bad"),
        DeadlineExceeded("late"),
        RemoteStatusError(400, b"bad request"),
        RemoteStatusError(500, b"bug"),
        ServiceUnavailable("shed", retryable=False),
        Rejected("limiter", "overloaded"),  # retryable=False by default
        Rejected("limiter", "overloaded", retry_after=0.1, retryable=False),
    ],
)
def test_non_retryable_errors(error: Exception) -> None:
    d = retrier().decide(1, error=error)
    assert not d.retry
    assert d.reason is GiveUp.NOT_RETRYABLE


def test_status_codes() -> None:
    r = retrier(retry_on_status=frozenset({500}))
    assert r.decide(1, status=500).retry
    assert r.decide(1, status=503).reason is GiveUp.SUCCESS  # not a failure for this policy


def test_custom_exception_types() -> None:
    r = retrier(retry_on=(KeyError,))
    assert r.decide(1, error=KeyError("x")).retry
    assert not r.decide(1, error=TransportError("x")).retry


def test_no_retry_hint_from_the_response() -> None:
    r = retrier()
    d = r.decide(1, status=503, no_retry=True)
    assert d.reason is GiveUp.NOT_RETRYABLE
    assert r.stops[GiveUp.NOT_RETRYABLE] == 1


def test_attempts_exhausted() -> None:
    r = retrier(max_attempts=3)
    err = TransportError("x")
    assert r.decide(1, error=err).retry
    assert r.decide(2, error=err).retry
    d = r.decide(3, error=err)
    assert d.reason is GiveUp.ATTEMPTS_EXHAUSTED
    assert retrier(max_attempts=1).decide(1, error=err).reason is GiveUp.ATTEMPTS_EXHAUSTED


# -- how long to wait -----------------------------------------------------------------------


def test_backoff_without_jitter_is_the_bound() -> None:
    r = retrier(jitter=False, initial_backoff=0.1, multiplier=3, max_backoff=1.0, max_attempts=10)
    err = TransportError("x")
    delays = [r.decide(n, error=err).delay for n in range(1, 6)]
    assert delays == pytest.approx([0.1, 0.3, 0.9, 1.0, 1.0])


def test_backoff_bound_survives_huge_attempt_numbers() -> None:
    r = retrier(max_backoff=5.0, multiplier=10)
    assert r.backoff_bound(10_000) == 5.0


def test_retry_after_seconds_capped_at_max_backoff() -> None:
    r = retrier(max_backoff=2.0)
    assert r.decide(1, status=503, retry_after="1.5").delay == 1.5
    assert r.decide(1, status=503, retry_after=" 7 ").delay == 2.0
    assert r.decide(1, status=429, retry_after=0).delay == 0.0


def test_retry_after_http_date() -> None:
    clock = FakeClock()
    r = retrier(clock, max_backoff=60)
    header = email.utils.formatdate(clock.time() + 30, usegmt=True)
    assert r.decide(1, status=503, retry_after=header).delay == pytest.approx(30, abs=1)
    past = email.utils.formatdate(clock.time() - 30, usegmt=True)
    assert r.decide(1, status=503, retry_after=past).delay == 0.0


def test_unreadable_retry_after_falls_back_to_backoff() -> None:
    r = retrier(jitter=False, initial_backoff=0.25)
    assert r.decide(1, status=503, retry_after="soon").delay == 0.25
    assert r.decide(1, status=503, retry_after="-3").delay == 0.25


def test_retry_after_from_a_retryable_rejection() -> None:
    r = retrier()
    d = r.decide(1, error=Rejected("throttle", "quota", retry_after=0.75, retryable=True))
    assert d.retry
    assert d.delay == 0.75


def test_retry_after_ignored_when_told() -> None:
    r = retrier(jitter=False, initial_backoff=0.2, honor_retry_after=False)
    assert r.decide(1, status=503, retry_after="1").delay == 0.2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        (3, 3.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:28:10 -0000", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("", None),
        ("nan", None),
        ("-1", None),
        ("tomorrow", None),
        (math.inf, None),
    ],
)
def test_parse_retry_after(value: str | float, expected: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after(value, now=now) == expected


# -- deadline and budget ------------------------------------------------------------------------


def test_no_retry_past_the_deadline() -> None:
    r = retrier(jitter=False, initial_backoff=0.5)
    err = TransportError("x")
    assert r.decide(1, error=err, remaining=0.6).retry
    assert r.decide(1, error=err, remaining=0.5).reason is GiveUp.DEADLINE
    assert r.decide(1, error=err, remaining=-1).reason is GiveUp.DEADLINE
    assert r.decide(1, status=503, retry_after="2", remaining=1).reason is GiveUp.DEADLINE


def test_min_attempt_time_must_fit_too() -> None:
    r = retrier(jitter=False, initial_backoff=0.5, min_attempt_time=0.2)
    err = TransportError("x")
    assert r.decide(1, error=err, remaining=0.8).retry
    assert r.decide(1, error=err, remaining=0.7).reason is GiveUp.DEADLINE


def test_budget_limits_retries_and_is_spent_last() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.5, min_retries_per_second=0), clock=clock)
    r = retrier(clock, budget, jitter=False, initial_backoff=0.5)
    budget.record_request()
    budget.record_request()
    err = TransportError("x")
    assert r.decide(1, error=err, remaining=0.1).reason is GiveUp.DEADLINE  # no budget spent
    assert r.decide(1, error=ValueError()).reason is GiveUp.NOT_RETRYABLE
    assert r.decide(1, error=err).retry
    d = r.decide(1, error=err)
    assert d.reason is GiveUp.BUDGET
    assert budget.retries == 1
    assert r.retries == 1
    assert r.stops[GiveUp.BUDGET] == 1


# -- properties ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    attempt=st.integers(1, 2_000),
    base=st.floats(0, 5, allow_nan=False),
    extra=st.floats(0, 100, allow_nan=False),
    mult=st.floats(1, 10, allow_nan=False),
)
def test_full_jitter_stays_in_bounds(
    seed: int, attempt: int, base: float, extra: float, mult: float
) -> None:
    cap = base + extra
    r = Retrier(
        RetryPolicy(
            initial_backoff=base, max_backoff=cap, multiplier=mult, max_attempts=attempt + 1
        ),
        rng=random.Random(seed),
        clock=FakeClock(),
    )
    d = r.decide(attempt, error=TransportError("x"))
    assert d.retry
    try:
        bound = min(cap, base * mult ** (attempt - 1))
    except OverflowError:
        bound = cap
    assert 0.0 <= d.delay <= bound


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    attempt=st.integers(1, 8),
    remaining=st.one_of(st.none(), st.floats(-1, 5, allow_nan=False)),
    min_attempt=st.floats(0, 1, allow_nan=False),
    retry_after=st.one_of(st.none(), st.floats(0, 10, allow_nan=False)),
    jitter=st.booleans(),
)
def test_never_schedules_a_retry_past_the_deadline(
    seed: int,
    attempt: int,
    remaining: float | None,
    min_attempt: float,
    retry_after: float | None,
    jitter: bool,
) -> None:
    r = Retrier(
        RetryPolicy(max_attempts=10, min_attempt_time=min_attempt, jitter=jitter, max_backoff=3),
        rng=random.Random(seed),
        clock=FakeClock(),
    )
    d = r.decide(attempt, status=503, retry_after=retry_after, remaining=remaining)
    if d.retry and remaining is not None:
        assert d.delay + min_attempt < remaining
    if not d.retry:
        assert d.reason is GiveUp.DEADLINE
        assert remaining is not None


# -- one layer only -----------------------------------------------------------------------------


def test_may_retry_from_inbound_headers() -> None:
    assert may_retry({})
    assert may_retry({ATTEMPT_HEADER: "1"})
    assert not may_retry({ATTEMPT_HEADER: "2"})
    assert not may_retry({ATTEMPT_HEADER: "garbage"})
    assert not may_retry({NO_RETRY_HEADER: "1"})
    assert not may_retry({NO_RETRY_HEADER: "true"})
    assert may_retry({NO_RETRY_HEADER: "0"})


def test_outbound_headers() -> None:
    assert dict(retry_headers(1)) == {}
    assert dict(retry_headers(3)) == {ATTEMPT_HEADER: "3"}
    assert dict(retry_headers(1, may_retry=False)) == {NO_RETRY_HEADER: "1"}
    assert dict(retry_headers(2, may_retry=False)) == {NO_RETRY_HEADER: "1"}


def test_chain_retries_at_one_layer_only() -> None:
    """A -> B -> C: B handling A's retry does not retry; C handling B's call does not either."""
    a_to_b = retry_headers(2)  # A retries B
    b_may = may_retry(a_to_b)
    assert not b_may
    b_to_c = retry_headers(1, may_retry=b_may)
    assert not may_retry(b_to_c)
    # B gave up after its own retries and says so: A must not retry on top
    assert response_forbids_retry({NO_RETRY_HEADER: "1"})
    assert not response_forbids_retry({})


def test_retry_state_walks_the_attempts() -> None:
    r = retrier(max_attempts=3)
    state = r.begin()
    assert isinstance(state, RetryState)
    assert dict(state.headers()) == {}
    assert state.decide(error=TransportError("x")).retry
    assert dict(state.headers()) == {ATTEMPT_HEADER: "2"}
    assert state.decide(status=503).retry
    assert state.attempt == 3
    assert state.decide(status=503).reason is GiveUp.ATTEMPTS_EXHAUSTED
    assert state.decide(status=200).reason is GiveUp.SUCCESS


def test_retry_state_of_a_request_that_is_itself_a_retry() -> None:
    r = retrier()
    state = r.begin({ATTEMPT_HEADER: "2"})
    assert not state.may_retry
    assert dict(state.headers()) == {NO_RETRY_HEADER: "1"}
    assert state.decide(status=503).reason is GiveUp.OTHER_LAYER
    assert state.decide(status=200).reason is GiveUp.SUCCESS
    assert state.decide(error=ValueError()).reason is GiveUp.NOT_RETRYABLE
    assert r.begin({}).may_retry
    assert r.begin(None).may_retry


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 2.5),
        ("max_attempts", True),
        ("initial_backoff", -1),
        ("initial_backoff", math.nan),
        ("max_backoff", 0.01),  # below the default initial_backoff
        ("multiplier", 0.5),
        ("retry_on", (ValueError, "x")),
        ("retry_on", [ValueError]),
        ("retry_on_status", frozenset({99})),
        ("retry_on_status", {503}),
        ("min_attempt_time", -0.1),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]
    assert info.value.key == field
    assert "expected" in str(info.value)


def test_policy_is_frozen() -> None:
    p = RetryPolicy()
    with pytest.raises(AttributeError):
        p.max_attempts = 5  # type: ignore[misc]
