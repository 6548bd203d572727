"""Outlier detection: consecutive errors, success rate, failure percentage, limits, panic, time."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock
from garrison.resilience._base import PolicyEvent
from garrison.resilience._outlier import OutlierConfig, OutlierDetector

POOL = [f"10.0.0.{i}" for i in range(10)]


def detector(
    clock: FakeClock, events: list[PolicyEvent] | None = None, /, **kw: object
) -> OutlierDetector[str]:
    d: OutlierDetector[str] = OutlierDetector(
        OutlierConfig(**kw),  # type: ignore[arg-type]
        name="a->b",
        clock=clock,
        rng=random.Random(1),
        listeners=[events.append] if events is not None else (),
    )
    d.update_pool(POOL)
    return d


def fail(d: OutlierDetector[str], inst: str, times: int, status: int | None = 500) -> None:
    for _ in range(times):
        d.on_result(inst, False, status=status)


# -- consecutive errors -------------------------------------------------------------------------


def test_consecutive_5xx_ejects_and_emits() -> None:
    clock = FakeClock()
    events: list[PolicyEvent] = []
    d = detector(clock, events)
    bad = POOL[3]
    fail(d, bad, 4)
    assert not d.is_ejected(bad)
    fail(d, bad, 1)
    assert d.is_ejected(bad)
    assert bad not in d.available(POOL)
    assert len(d.available(POOL)) == 9
    (ev,) = events
    assert (ev.policy, ev.name, ev.kind) == ("outlier", "a->b", "ejected")
    assert ev.data == {
        "instance": bad,
        "reason": "consecutive_5xx",
        "duration": 30.0,
        "ejections": 1,
    }
    assert ev.at == clock.monotonic()


def test_success_resets_the_streak() -> None:
    d = detector(FakeClock())
    fail(d, POOL[0], 4)
    d.on_result(POOL[0], True)
    fail(d, POOL[0], 4)
    assert not d.is_ejected(POOL[0])


def test_gateway_failures() -> None:
    d = detector(
        FakeClock(),
        consecutive_5xx=0,
        consecutive_gateway_failure=3,
        enforcing_consecutive_gateway_failure=100,
    )
    fail(d, POOL[0], 2, status=503)
    fail(d, POOL[0], 1, status=500)  # a 5xx that is not a gateway failure breaks that streak
    fail(d, POOL[0], 2, status=502)
    assert not d.is_ejected(POOL[0])
    fail(d, POOL[0], 1, status=504)
    assert d.is_ejected(POOL[0])


def test_gateway_detection_off_by_default_but_still_5xx() -> None:
    events: list[PolicyEvent] = []
    d = detector(FakeClock(), events)
    fail(d, POOL[0], 5, status=503)
    assert d.is_ejected(POOL[0])
    assert events[0].data["reason"] == "consecutive_5xx"


def test_local_origin_failures_count_as_gateway_unless_split() -> None:
    d = detector(
        FakeClock(),
        consecutive_5xx=0,
        consecutive_gateway_failure=2,
        enforcing_consecutive_gateway_failure=100,
    )
    d.on_result(POOL[0], False, local_origin=True)
    d.on_result(POOL[0], False, local_origin=True)
    assert d.is_ejected(POOL[0])

    events: list[PolicyEvent] = []
    d = detector(
        FakeClock(),
        events,
        split_external_local_origin_errors=True,
        consecutive_local_origin_failure=3,
        consecutive_5xx=2,
    )
    d.on_result(POOL[1], False, status=500)
    d.on_result(POOL[1], False, local_origin=True)  # not a 5xx: the 5xx streak stays at 1
    d.on_result(POOL[1], False, local_origin=True)
    assert not d.is_ejected(POOL[1])
    d.on_result(POOL[1], False, local_origin=True)
    assert d.is_ejected(POOL[1])
    assert events[0].data["reason"] == "consecutive_local_origin_failure"


def test_failure_without_status_counts_as_5xx() -> None:
    d = detector(FakeClock())
    fail(d, POOL[0], 5, status=None)
    assert d.is_ejected(POOL[0])


def test_late_results_of_an_ejected_instance_are_ignored() -> None:
    events: list[PolicyEvent] = []
    d = detector(FakeClock(), events)
    fail(d, POOL[0], 5)
    fail(d, POOL[0], 20)
    assert len(events) == 1


def test_enforcing_zero_detects_but_never_ejects() -> None:
    d = detector(FakeClock(), enforcing_consecutive_5xx=0)
    fail(d, POOL[0], 50)
    assert not d.is_ejected(POOL[0])


def test_enforcing_percentage_uses_the_rng() -> None:
    d = detector(
        FakeClock(), enforcing_consecutive_5xx=50, consecutive_5xx=1, max_ejection_percent=100
    )
    for inst in POOL:
        fail(d, inst, 1)
    assert 0 < len(d.ejected) < len(POOL)


# -- time: ejection grows, unejection happens ----------------------------------------------------


def test_ejection_time_grows_and_is_capped() -> None:
    clock = FakeClock()
    events: list[PolicyEvent] = []
    d = detector(clock, events, base_ejection_time=10, max_ejection_time=25, interval=100)
    durations = []
    for _ in range(4):
        fail(d, POOL[0], 5)
        until = d.ejected[POOL[0]]
        durations.append(until - clock.monotonic())
        clock.advance(until - clock.monotonic() - 0.001)
        d.tick()
        assert d.is_ejected(POOL[0])
        clock.advance(0.001)
        d.tick()
        assert not d.is_ejected(POOL[0])
    assert durations == pytest.approx([10, 20, 25, 25])
    kinds = [e.kind for e in events]
    assert kinds == ["ejected", "unejected"] * 4
    assert d.ejections(POOL[0]) == 4


def test_available_unejects_without_a_tick() -> None:
    clock = FakeClock()
    d = detector(clock)
    fail(d, POOL[0], 5)
    clock.advance(30)
    assert d.available(POOL) == POOL


def test_multiplier_decreases_after_healthy_intervals() -> None:
    clock = FakeClock()
    d = detector(clock, base_ejection_time=10, max_ejection_time=100, interval=5)
    for _ in range(3):  # ejected for 10, 20, 30
        fail(d, POOL[0], 5)
        clock.advance(d.ejected[POOL[0]] - clock.monotonic())
        d.tick()
    # healthy: each interval at least one interval after the unejection takes one step off
    for _ in range(2):
        clock.advance(5)
        d.tick()
    fail(d, POOL[0], 5)  # multiplier 3 - 2 + 1
    assert d.ejected[POOL[0]] - clock.monotonic() == pytest.approx(20)


def test_next_wakeup() -> None:
    clock = FakeClock()
    d = detector(clock, interval=10, base_ejection_time=3)
    assert d.next_wakeup() == 10
    fail(d, POOL[0], 5)
    assert d.next_wakeup() == 3
    clock.advance(4)
    assert d.next_wakeup() == 0


# -- limits and panic -------------------------------------------------------------------------


def test_never_more_than_max_percent_but_always_one() -> None:
    d = detector(FakeClock(), max_ejection_percent=20)
    for inst in POOL[:5]:
        fail(d, inst, 5)
    assert len(d.ejected) == 2  # 20% of 10

    d = detector(FakeClock(), max_ejection_percent=0)
    for inst in POOL[:5]:
        fail(d, inst, 5)
    assert len(d.ejected) == 1  # Envoy: the first ejection is always allowed


def test_panic_routes_to_all() -> None:
    clock = FakeClock()
    d: OutlierDetector[str] = OutlierDetector(OutlierConfig(max_ejection_percent=50), clock=clock)
    d.update_pool(["a", "b"])
    fail(d, "a", 5)
    assert d.available(["a", "b"]) == ["b"]  # 50% left: not below the threshold

    d = OutlierDetector(OutlierConfig(), clock=clock)
    d.update_pool(["only"])
    fail(d, "only", 5)
    assert d.is_ejected("only")
    assert d.available(["only"]) == ["only"]  # nowhere else to go

    d = OutlierDetector(OutlierConfig(panic_threshold=0), clock=clock)
    fail(d, "only", 5)
    assert d.available(["only"]) == []


def test_update_pool_forgets_removed_instances() -> None:
    d = detector(FakeClock())
    fail(d, POOL[0], 5)
    d.update_pool(POOL[1:])
    assert d.pool_size == 9
    assert not d.is_ejected(POOL[0])
    assert d.next_wakeup() > 0


def test_instances_join_on_first_result() -> None:
    d: OutlierDetector[str] = OutlierDetector(clock=FakeClock())
    d.on_result("x", True)
    assert d.pool_size == 1


# -- interval checks ------------------------------------------------------------------------------


def feed(d: OutlierDetector[str], inst: str, requests: int, failures: int) -> None:
    for i in range(requests):
        d.on_result(inst, i >= failures, status=None if i >= failures else 500)


RATES_ONLY = {"consecutive_5xx": 0}  # so that only the interval checks eject


def test_success_rate_outlier_is_ejected_at_the_interval() -> None:
    clock = FakeClock()
    events: list[PolicyEvent] = []
    d = detector(clock, events, max_ejection_percent=50, **RATES_ONLY)
    for inst in POOL[:6]:
        feed(d, inst, 200, 2)
    feed(d, POOL[6], 200, 60)
    d.tick()
    assert not d.ejected  # not yet: the interval has not passed
    clock.advance(10)
    d.tick()
    assert list(d.ejected) == [POOL[6]]
    assert events[0].data["reason"] == "success_rate"


def test_success_rate_needs_enough_hosts_and_volume() -> None:
    clock = FakeClock()
    d = detector(clock, **RATES_ONLY)
    for inst in POOL[:4]:
        feed(d, inst, 200, 2)
    feed(d, POOL[4], 200, 60)  # 4 + 1 = 5 hosts with volume: enough
    feed(d, POOL[5], 50, 40)  # too few requests to be judged
    clock.advance(10)
    d.tick()
    assert list(d.ejected) == [POOL[4]]

    d = detector(clock, **RATES_ONLY)
    for inst in POOL[:3]:
        feed(d, inst, 200, 2)
    feed(d, POOL[3], 200, 60)
    clock.advance(10)
    d.tick()
    assert not d.ejected  # 4 hosts < success_rate_minimum_hosts


def test_interval_counters_start_again() -> None:
    clock = FakeClock()
    d = detector(clock, **RATES_ONLY)
    for inst in POOL[:5]:
        feed(d, inst, 60, 1)
    feed(d, POOL[5], 60, 30)
    clock.advance(10)
    d.tick()
    for inst in POOL[:5]:
        feed(d, inst, 60, 1)
    feed(d, POOL[5], 60, 30)
    clock.advance(10)
    d.tick()
    assert not d.ejected  # 60 per interval never reaches the volume of 100


def test_failure_percentage() -> None:
    clock = FakeClock()
    d = detector(
        clock,
        enforcing_failure_percentage=100,
        enforcing_success_rate=0,
        max_ejection_percent=50,
        **RATES_ONLY,
    )
    for inst in POOL[:4]:
        feed(d, inst, 60, 1)
    feed(d, POOL[4], 60, 52)  # 86.7% failures
    clock.advance(10)
    d.tick()
    assert list(d.ejected) == [POOL[4]]


# -- properties ---------------------------------------------------------------------------------

results = st.lists(
    st.tuples(
        st.integers(0, 9),  # instance
        st.sampled_from([None, 200, 500, 503]),  # None: local-origin failure, 200: ok
        st.floats(0, 3, allow_nan=False),  # time to advance
    ),
    max_size=400,
)


@settings(max_examples=120, deadline=None)
@given(
    pool=st.integers(1, 10),
    percent=st.floats(0, 100, allow_nan=False),
    consecutive=st.integers(1, 4),
    seq=results,
    split=st.booleans(),
)
def test_never_ejects_more_than_the_max_percent(
    pool: int,
    percent: float,
    consecutive: int,
    seq: list[tuple[int, int | None, float]],
    split: bool,
) -> None:
    clock = FakeClock(start=0.0)
    instances = POOL[:pool]
    d: OutlierDetector[str] = OutlierDetector(
        OutlierConfig(
            max_ejection_percent=percent,
            consecutive_5xx=consecutive,
            consecutive_local_origin_failure=consecutive,
            split_external_local_origin_errors=split,
            success_rate_request_volume=5,
            success_rate_minimum_hosts=1,
            failure_percentage_request_volume=5,
            failure_percentage_minimum_hosts=1,
            enforcing_failure_percentage=100,
            interval=2,
            base_ejection_time=3,
        ),
        clock=clock,
        rng=random.Random(0),
    )
    d.update_pool(instances)
    allowed = max(1, math.floor(percent * pool / 100 + 1e-9))
    for i, status, dt in seq:
        inst = instances[i % pool]
        if status == 200:
            d.on_result(inst, True, status=200)
        else:
            d.on_result(inst, False, status=status, local_origin=status is None)
        assert len(d.ejected) <= allowed
        clock.advance(dt)
        d.tick()
        assert len(d.ejected) <= allowed
        avail = d.available(instances)
        assert avail  # panic keeps at least someone to call
        assert set(avail) <= set(instances)


@settings(max_examples=60, deadline=None)
@given(
    base=st.floats(0.5, 20, allow_nan=False),
    factor=st.floats(1, 10, allow_nan=False),
    rounds=st.integers(1, 12),
)
def test_ejection_time_grows_and_unejection_happens(
    base: float, factor: float, rounds: int
) -> None:
    clock = FakeClock(start=0.0)
    cap = base * factor
    d: OutlierDetector[str] = OutlierDetector(
        OutlierConfig(base_ejection_time=base, max_ejection_time=cap, interval=1e6), clock=clock
    )
    d.update_pool(["x", "y"])
    last = 0.0
    for k in range(1, rounds + 1):
        fail(d, "x", 5)
        assert d.is_ejected("x")
        duration = d.ejected["x"] - clock.monotonic()
        assert duration >= last - 1e-9  # never shorter than the previous one
        assert duration <= cap + 1e-9
        assert duration == pytest.approx(min(base * k, cap), rel=1e-9) or duration == pytest.approx(
            cap
        )
        last = duration
        clock.advance(duration)
        d.tick()
        assert not d.is_ejected("x")  # back as soon as the time is up


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_5xx", -1),
        ("interval", 0),
        ("base_ejection_time", math.nan),
        ("max_ejection_time", 1),
        ("max_ejection_percent", 101),
        ("enforcing_success_rate", -5),
        ("success_rate_stdev_factor", -1),
        ("success_rate_request_volume", 1.5),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        OutlierConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.key == field
