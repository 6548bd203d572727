"""The circuit breaker core: config validation, every transition, and model-based properties."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hyp_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from garrison.core import ConfigError, FakeClock
from garrison.resilience._base import PolicyEvent, Rejected
from garrison.resilience._breaker import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    _CountWindow,
    _TimeWindow,
)

FAST, SLOW = 0.1, 5.0  # call durations against slow_call_duration=1.0


def make(**kw: object) -> tuple[CircuitBreaker, FakeClock, list[PolicyEvent]]:
    base: dict[str, object] = {
        "sliding_window_size": 4,
        "minimum_number_of_calls": 4,
        "slow_call_duration": 1.0,
        "wait_duration_in_open": 10.0,
        "permitted_calls_in_half_open": 2,
    }
    base.update(kw)
    clock = FakeClock()
    events: list[PolicyEvent] = []
    br = CircuitBreaker(
        BreakerConfig(**base),  # type: ignore[arg-type]
        name="a->b",
        clock=clock,
        listeners=[events.append],
    )
    return br, clock, events


def trip(br: CircuitBreaker, n: int = 4) -> None:
    for _ in range(n):
        assert br.try_acquire()
        br.on_failure(FAST)


def transitions(events: list[PolicyEvent]) -> list[tuple[str, str, str]]:
    return [(e.data["from"], e.data["to"], e.data["trigger"]) for e in events]


# -- configuration ---------------------------------------------------------------------------


def test_defaults_follow_resilience4j() -> None:
    cfg = BreakerConfig()
    assert cfg.failure_rate_threshold == 0.5
    assert cfg.slow_call_rate_threshold == 1.0
    assert cfg.sliding_window_type == "count"
    assert cfg.sliding_window_size == 100
    assert cfg.minimum_number_of_calls == 100
    assert cfg.permitted_calls_in_half_open == 10
    assert cfg.wait_duration_in_open == 60.0


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("failure_rate_threshold", 0.0, "> 0 and <= 1"),
        ("failure_rate_threshold", 1.5, "> 0 and <= 1"),
        ("failure_rate_threshold", float("nan"), "finite number"),
        ("slow_call_rate_threshold", -0.1, "> 0 and <= 1"),
        ("slow_call_duration", 0, "> 0"),
        ("sliding_window_type", "sliding", "'count' or 'time'"),
        ("sliding_window_size", 0, "integer >= 1"),
        ("sliding_window_size", 2.5, "an integer"),
        ("sliding_window_size", True, "an integer"),
        ("sliding_window_size", 10**9, "<= 1000000"),
        ("minimum_number_of_calls", 0, "integer >= 1"),
        ("wait_duration_in_open", 0.0, "> 0"),
        ("wait_duration_in_open", float("inf"), "finite number"),
        ("wait_duration_multiplier", 0.5, ">= 1"),
        ("max_wait_duration_in_open", -1.0, "> 0"),
        ("permitted_calls_in_half_open", 0, "integer >= 1"),
        ("max_wait_duration_in_half_open", -1.0, ">= 0"),
        ("max_wait_duration_in_half_open", "1s", "finite number"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        BreakerConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.key == field
    assert field in str(info.value)


def test_config_loads_from_plain_data_and_validates() -> None:
    cfg = msgspec.convert({"sliding_window_type": "time", "sliding_window_size": 30}, BreakerConfig)
    assert cfg.sliding_window_type == "time"
    with pytest.raises(ConfigError) as info:
        msgspec.convert({"minimum_number_of_calls": -3}, BreakerConfig)
    assert info.value.key == "minimum_number_of_calls"
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"failure_rate": 0.5}, BreakerConfig)


# -- closed ----------------------------------------------------------------------------------


def test_closed_admits_and_waits_for_minimum_calls() -> None:
    br, _, events = make(minimum_number_of_calls=4, sliding_window_size=10)
    for _ in range(3):
        assert br.try_acquire()
        br.on_failure(FAST)
    assert br.state is BreakerState.CLOSED  # 100% failures but only 3 calls
    assert br.try_acquire()
    br.on_failure(FAST)
    assert br.state is BreakerState.OPEN
    assert transitions(events) == [("closed", "open", "threshold_exceeded")]
    assert events[0].policy == "breaker"
    assert events[0].name == "a->b"
    assert events[0].kind == "state_change"
    assert events[0].data["failure_rate"] == 1.0
    assert events[0].data["retry_after"] == 10.0


def test_rate_exactly_at_threshold_opens() -> None:
    # 3/10 must count as 30% although 0.3 * 10 != 3 in floating point.
    br, _, _ = make(failure_rate_threshold=0.3, sliding_window_size=10, minimum_number_of_calls=10)
    for i in range(10):
        assert br.try_acquire()
        (br.on_failure if i < 3 else br.on_success)(FAST)
    assert br.state is BreakerState.OPEN


def test_below_threshold_stays_closed_and_successes_push_failures_out() -> None:
    br, _, _ = make()
    for ok in (True, False, True, True):  # 25% < 50%
        assert br.try_acquire()
        (br.on_success if ok else br.on_failure)(FAST)
    assert br.state is BreakerState.CLOSED
    m = br.metrics()
    assert (m.buffered_calls, m.failed_calls, m.failure_rate) == (4, 1, 0.25)
    for _ in range(4):
        br.on_success(FAST)
    assert br.metrics().failed_calls == 0


def test_fast_success_completing_minimum_calls_can_open() -> None:
    br, _, _ = make(sliding_window_size=4, minimum_number_of_calls=4)
    for _ in range(3):
        br.on_failure(FAST)
    br.on_success(FAST)  # 3/4 failed, reached only now
    assert br.state is BreakerState.OPEN


def test_minimum_calls_is_capped_by_count_window_size() -> None:
    br, _, _ = make(sliding_window_size=3, minimum_number_of_calls=50)
    trip(br, 3)
    assert br.state is BreakerState.OPEN


def test_slow_calls_open_the_breaker() -> None:
    br, _, events = make(slow_call_rate_threshold=0.5)
    for d in (SLOW, FAST, SLOW, FAST):
        assert br.try_acquire()
        br.on_success(d)
    assert br.state is BreakerState.OPEN
    assert events[0].data["slow_call_rate"] == 0.5
    assert events[0].data["failure_rate"] == 0.0


def test_slow_failures_count_as_both() -> None:
    br, _, _ = make(sliding_window_size=10, minimum_number_of_calls=10)
    br.on_failure(SLOW)
    br.on_success(SLOW)
    br.on_success(FAST)
    m = br.metrics()
    assert (m.failed_calls, m.slow_calls, m.buffered_calls) == (1, 2, 3)


def test_ignored_calls_are_not_recorded_when_closed() -> None:
    br, _, _ = make()
    assert br.try_acquire()
    br.on_ignored()
    assert br.metrics().buffered_calls == 0


def test_time_window_forgets_old_failures() -> None:
    br, clock, _ = make(sliding_window_type="time", sliding_window_size=10)
    for _ in range(3):
        br.on_failure(FAST)
    clock.advance(10.0)  # those three leave the window
    for _ in range(3):
        br.on_success(FAST)
    br.on_failure(FAST)
    assert br.state is BreakerState.CLOSED
    assert br.metrics().buffered_calls == 4
    br.on_failure(FAST)
    assert br.state is BreakerState.CLOSED  # 2/5


def test_time_window_eviction_alone_can_open_on_a_fast_success() -> None:
    br, clock, _ = make(
        sliding_window_type="time", sliding_window_size=5, minimum_number_of_calls=3
    )
    for _ in range(4):
        br.on_success(FAST)
    clock.advance(1.0)
    for _ in range(2):
        br.on_failure(FAST)
    clock.advance(1.0)
    br.on_failure(FAST)  # 3/7
    assert br.state is BreakerState.CLOSED
    clock.advance(3.5)  # the four successes leave the window
    assert br.metrics().buffered_calls == 3  # a read evicts too
    br.on_success(FAST)  # 3/4 failed
    assert br.state is BreakerState.OPEN


# -- open ------------------------------------------------------------------------------------


def test_open_rejects_with_time_left() -> None:
    br, clock, _ = make()
    trip(br)
    clock.advance(4.0)
    assert not br.try_acquire()
    with pytest.raises(Rejected) as info:
        br.acquire()
    assert info.value.policy == "breaker"
    assert info.value.reason == "open"
    assert info.value.retry_after == pytest.approx(6.0)
    assert not info.value.retryable
    assert br.metrics().not_permitted_calls == 2
    # outcomes of calls admitted before the trip change nothing
    br.on_success(FAST)
    br.on_failure(FAST)
    assert br.state is BreakerState.OPEN


def test_open_moves_to_half_open_when_the_wait_is_over() -> None:
    br, clock, events = make()
    trip(br)
    clock.advance(9.999)
    assert br.state is BreakerState.OPEN
    clock.advance(0.001)
    assert br.state is BreakerState.HALF_OPEN
    assert transitions(events)[-1] == ("open", "half_open", "wait_elapsed")


def test_open_wait_grows_per_reopen_and_is_capped() -> None:
    br, clock, events = make(
        wait_duration_multiplier=2.0, max_wait_duration_in_open=35.0, permitted_calls_in_half_open=1
    )
    trip(br)
    waits = [events[-1].data["retry_after"]]
    for _ in range(4):
        clock.advance(waits[-1])
        assert br.try_acquire()
        br.on_failure(FAST)
        assert br.state is BreakerState.OPEN
        waits.append(events[-1].data["retry_after"])
    assert waits == [10.0, 20.0, 35.0, 35.0, 35.0]
    # closing resets the growth
    clock.advance(35.0)
    assert br.try_acquire()
    br.on_success(FAST)
    assert br.state is BreakerState.CLOSED
    trip(br)
    assert events[-1].data["retry_after"] == 10.0


def test_growth_never_overflows() -> None:
    br, clock, events = make(
        wait_duration_multiplier=1e6,
        max_wait_duration_in_open=100.0,
        permitted_calls_in_half_open=1,
    )
    trip(br)
    for _ in range(300):
        clock.advance(events[-1].data["retry_after"])
        assert br.try_acquire()
        br.on_failure(FAST)
    assert events[-1].data["retry_after"] == 100.0


def test_cap_never_shortens_the_base_wait() -> None:
    br, clock, events = make(
        wait_duration_in_open=50.0,
        max_wait_duration_in_open=5.0,
        wait_duration_multiplier=3.0,
        permitted_calls_in_half_open=1,
    )
    trip(br)
    clock.advance(50.0)
    assert br.try_acquire()
    br.on_failure(FAST)
    assert events[-1].data["retry_after"] == 50.0


# -- half-open -------------------------------------------------------------------------------


def half_open(**kw: object) -> tuple[CircuitBreaker, FakeClock, list[PolicyEvent]]:
    br, clock, events = make(**kw)
    trip(br)
    clock.advance(10.0)
    return br, clock, events


def test_half_open_admits_only_the_permitted_probes() -> None:
    br, _, _ = half_open(permitted_calls_in_half_open=3)
    assert [br.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    with pytest.raises(Rejected) as info:
        br.acquire()
    assert info.value.reason == "half-open probes busy"
    assert info.value.retry_after is None
    assert br.metrics().not_permitted_calls == 3


def test_ignored_probe_hands_its_permit_back() -> None:
    br, _, _ = half_open(permitted_calls_in_half_open=1)
    assert br.try_acquire()
    assert not br.try_acquire()
    br.on_ignored()
    assert br.state is BreakerState.HALF_OPEN
    assert br.try_acquire()
    br.on_ignored()
    br.on_ignored()  # one too many: must not create a second permit
    assert br.try_acquire()
    assert not br.try_acquire()


def test_passing_probes_close_with_a_fresh_window() -> None:
    br, _, events = half_open(permitted_calls_in_half_open=2)
    assert br.try_acquire()
    assert br.try_acquire()
    br.on_success(FAST)
    assert br.state is BreakerState.HALF_OPEN
    br.on_success(FAST)
    assert br.state is BreakerState.CLOSED
    assert transitions(events)[-1] == ("half_open", "closed", "probes_passed")
    assert br.metrics().buffered_calls == 0


def test_failing_probes_reopen() -> None:
    br, _, events = half_open(permitted_calls_in_half_open=2)
    assert br.try_acquire()
    assert br.try_acquire()
    br.on_success(FAST)
    br.on_failure(FAST)  # 1/2 = 50% >= 50%
    assert br.state is BreakerState.OPEN
    assert transitions(events)[-1] == ("half_open", "open", "probes_failed")
    assert events[-1].data["failure_rate"] == 0.5


def test_slow_probes_reopen() -> None:
    br, _, _ = half_open(permitted_calls_in_half_open=2, slow_call_rate_threshold=1.0)
    assert br.try_acquire()
    assert br.try_acquire()
    br.on_success(SLOW)
    br.on_success(SLOW)
    assert br.state is BreakerState.OPEN


def test_half_open_decides_as_soon_as_the_outcome_is_certain() -> None:
    br, _, _ = half_open(permitted_calls_in_half_open=4, failure_rate_threshold=0.5)
    assert br.try_acquire()
    assert br.try_acquire()
    br.on_failure(FAST)
    assert br.state is BreakerState.HALF_OPEN
    br.on_failure(FAST)  # 2 of 4 already failed: 50% whatever the other two do
    assert br.state is BreakerState.OPEN

    br, _, _ = half_open(permitted_calls_in_half_open=4, failure_rate_threshold=0.5)
    for _ in range(3):
        assert br.try_acquire()
        br.on_success(FAST)
    # 3 successes: even a failing 4th probe gives 25% < 50%
    assert br.state is BreakerState.CLOSED


def test_half_open_times_out_to_open() -> None:
    br, clock, events = half_open(
        permitted_calls_in_half_open=2, max_wait_duration_in_half_open=5.0
    )
    assert br.try_acquire()  # a probe that never reports
    clock.advance(5.0)
    assert not br.try_acquire()
    assert br.state is BreakerState.OPEN
    assert transitions(events)[-1] == ("half_open", "open", "probe_timeout")


def test_half_open_metrics_show_the_probes() -> None:
    br, _, _ = half_open(permitted_calls_in_half_open=3)
    assert br.try_acquire()
    br.on_success(SLOW)
    m = br.metrics()
    assert m.state is BreakerState.HALF_OPEN
    assert (m.buffered_calls, m.slow_calls, m.slow_call_rate) == (1, 1, 1.0)


def test_permits_from_before_the_episode_do_not_count_as_probes() -> None:
    br, clock, _ = make(permitted_calls_in_half_open=1)
    old = br.acquire()  # admitted while closed, still running
    trip(br)
    clock.advance(10.0)
    probe = br.acquire()
    assert probe != old
    br.on_ignored(old)  # must not free the probe's slot
    assert not br.try_acquire()
    br.on_failure(FAST, old)  # must not decide anything
    assert br.state is BreakerState.HALF_OPEN
    br.on_success(FAST, probe)
    assert br.state is BreakerState.CLOSED
    br.on_failure(FAST, old)  # late reports in closed are ordinary data
    assert br.metrics().failed_calls == 1


# -- operators -------------------------------------------------------------------------------


def test_force_open_rejects_until_reset() -> None:
    br, clock, events = make()
    br.force_open()
    br.force_open()  # idempotent
    clock.advance(1e6)
    assert br.state is BreakerState.FORCED_OPEN
    with pytest.raises(Rejected) as info:
        br.acquire()
    assert (info.value.reason, info.value.retry_after) == ("forced open", None)
    br.reset()
    assert br.state is BreakerState.CLOSED
    assert transitions(events) == [
        ("closed", "forced_open", "force_open"),
        ("forced_open", "closed", "reset"),
    ]


def test_disable_admits_everything_and_records_nothing() -> None:
    br, _, events = make()
    trip(br)
    br.disable()
    for _ in range(10):
        assert br.try_acquire()
        br.on_failure(FAST)
    assert br.state is BreakerState.DISABLED
    br.reset()
    assert br.state is BreakerState.CLOSED
    assert br.metrics().buffered_calls == 0
    assert [t for _, t, _ in transitions(events)] == ["open", "disabled", "closed"]


def test_reset_clears_the_window_and_reports() -> None:
    br, _, events = make()
    br.on_failure(FAST)
    br.reset()
    assert br.metrics().buffered_calls == 0
    assert events[-1].kind == "reset"


def test_a_failing_listener_never_breaks_the_breaker(caplog: pytest.LogCaptureFixture) -> None:
    def boom(event: PolicyEvent) -> None:
        raise RuntimeError("sink down")

    br, _, events = make()
    br.add_listener(boom)
    with caplog.at_level(logging.ERROR, logger="garrison.resilience"):
        trip(br)
    assert br.state is BreakerState.OPEN
    assert len(events) == 1
    assert "policy listener failed" in caplog.text
    br.remove_listener(boom)


def test_default_clock_and_repr() -> None:
    br = CircuitBreaker()
    assert br.try_acquire()
    br.on_success(0.001)
    assert br.state is BreakerState.CLOSED
    assert "closed" in repr(br)
    assert br.config == BreakerConfig()


# -- properties ------------------------------------------------------------------------------

codes = st.sampled_from([0, 0, 0, 1, 2, 3])  # bit 0 failed, bit 1 slow


@settings(max_examples=150, deadline=None)
@given(size=st.integers(1, 8), steps=st.lists(st.tuples(st.booleans(), codes), max_size=60))
def test_count_window_equals_brute_force(size: int, steps: list[tuple[bool, int]]) -> None:
    w = _CountWindow(size, size)
    seen: list[int] = []
    for _, code in steps:
        w.record(code)
        seen.append(code)
        last = seen[-size:]
        assert (w.calls, w.failures, w.slow) == (
            len(last),
            sum(c & 1 for c in last),
            sum(c >> 1 for c in last),
        )


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(1, 6),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.25, 0.5, 0.99, 1.0, 2.5, 7.0]), codes, st.booleans()
        ),
        max_size=60,
    ),
)
def test_time_window_equals_brute_force(size: int, steps: list[tuple[float, int, bool]]) -> None:
    clock = FakeClock(start=100.0)
    w = _TimeWindow(size, 1, clock)
    seen: list[tuple[int, int]] = []
    for dt, code, read_only in steps:
        clock.advance(dt)
        now = int(clock.monotonic() // 1)
        if read_only:
            w.refresh()
        else:
            w.record(code)
            seen.append((now, code))
        live = [c for s, c in seen if s > now - size]
        assert (w.calls, w.failures, w.slow) == (
            len(live),
            sum(c & 1 for c in live),
            sum(c >> 1 for c in live),
        )


outcomes = st.sampled_from(["ok", "ok", "fail", "slow_ok", "slow_fail", "ignored"])


@dataclass
class Call:
    permit: int | None
    gen: int
    probe: bool


class BreakerMachine(RuleBasedStateMachine):
    """Random use of a breaker against a brute-force model of its rules.

    With ``tokens`` every call passes its permit back, and the strict guarantee is checked: no
    more than N probes of the current half-open episode are ever in flight. Without, the loose
    one: the episode admits at most N probes plus one per permit handed back.
    """

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.calls: list[Call] = []

    @initialize(
        tokens=st.booleans(),
        window=st.sampled_from(["count", "time"]),
        size=st.integers(1, 6),
        minimum=st.integers(1, 6),
        fail=st.sampled_from([0.2, 0.3, 0.5, 0.75, 1.0]),
        slow=st.sampled_from([0.3, 0.5, 1.0]),
        probes=st.integers(1, 4),
        mult=st.sampled_from([1.0, 2.0]),
        ho_limit=st.sampled_from([0.0, 3.0]),
    )
    def setup(
        self,
        tokens: bool,
        window: str,
        size: int,
        minimum: int,
        fail: float,
        slow: float,
        probes: int,
        mult: float,
        ho_limit: float,
    ) -> None:
        self.tokens = tokens
        self.cfg = BreakerConfig(
            sliding_window_type=window,  # type: ignore[arg-type]
            sliding_window_size=size,
            minimum_number_of_calls=minimum,
            failure_rate_threshold=fail,
            slow_call_rate_threshold=slow,
            slow_call_duration=1.0,
            wait_duration_in_open=2.0,
            wait_duration_multiplier=mult,
            max_wait_duration_in_open=6.0,
            permitted_calls_in_half_open=probes,
            max_wait_duration_in_half_open=ho_limit,
        )
        self.br = CircuitBreaker(self.cfg, clock=self.clock, listeners=[self.on_event])
        self.state = "closed"
        self.gen = 0
        self.records: list[tuple[int, int]] = []  # (second, code) since entering closed
        self.ho_codes: list[int] = []
        self.ho_admitted = self.ho_ignored = 0

    def on_event(self, event: PolicyEvent) -> None:
        assert event.data["from"] == self.state
        hyp_event(f"{event.data['from']}->{event.data['to']}")
        self.state = event.data["to"]
        self.gen += 1
        if self.state == "closed":
            self.records = []
        if self.state == "half_open":
            self.ho_codes = []
            self.ho_admitted = self.ho_ignored = 0

    # the model's rules

    def exceeded(self) -> bool:
        cfg, now = self.cfg, int(self.clock.monotonic() // 1)
        if cfg.sliding_window_type == "count":
            live = [c for _, c in self.records[-cfg.sliding_window_size :]]
            minimum = min(cfg.minimum_number_of_calls, cfg.sliding_window_size)
        else:
            live = [c for s, c in self.records if s > now - cfg.sliding_window_size]
            minimum = cfg.minimum_number_of_calls
        n = len(live)
        return n >= minimum and (
            sum(c & 1 for c in live) / n >= cfg.failure_rate_threshold
            or sum(c >> 1 for c in live) / n >= cfg.slow_call_rate_threshold
        )

    def verdict(self) -> str | None:
        n = self.cfg.permitted_calls_in_half_open
        fails = sum(c & 1 for c in self.ho_codes)
        slows = sum(c >> 1 for c in self.ho_codes)
        rest = n - len(self.ho_codes)
        f, s = self.cfg.failure_rate_threshold, self.cfg.slow_call_rate_threshold
        if fails / n >= f or slows / n >= s:
            return "open"
        if (fails + rest) / n < f and (slows + rest) / n < s:
            return "closed"
        return None

    # rules

    def admit(self) -> Call | None:
        if self.tokens:
            try:
                permit: int | None = self.br.acquire()
            except Rejected:
                return None
            assert permit == self.gen
        else:
            if not self.br.try_acquire():
                return None
            permit = None
        probe = self.state == "half_open"
        if probe:
            self.ho_admitted += 1
        return Call(permit, self.gen, probe)

    def report(self, call: Call, outcome: str) -> None:
        before = self.state
        current = call.permit is None or call.permit == self.gen
        if outcome == "ignored":
            if before == "half_open" and current and self.ho_admitted - self.ho_ignored > 0:
                self.ho_ignored += 1  # the loose model's upper bound on released permits
            self.br.on_ignored(call.permit)
            assert self.state == before
            return
        code = {"ok": 0, "fail": 1, "slow_ok": 2, "slow_fail": 3}[outcome]
        duration = 5.0 if code & 2 else 0.1
        (self.br.on_failure if code & 1 else self.br.on_success)(duration, call.permit)
        if before == "closed":
            self.records.append((int(self.clock.monotonic() // 1), code))
            assert self.state == ("open" if self.exceeded() else "closed")
        elif before == "half_open" and current:
            self.ho_codes.append(code)
            assert self.state == (self.verdict() or "half_open")
        else:
            assert self.state == before

    # rules

    @rule()
    def acquire_and_hold(self) -> None:
        call = self.admit()
        if call is not None:
            self.calls.append(call)

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), outcome=outcomes)
    def complete_held(self, data: st.DataObject, outcome: str) -> None:
        self.report(self.calls.pop(data.draw(st.integers(0, len(self.calls) - 1))), outcome)

    @rule(burst=st.lists(outcomes, min_size=1, max_size=8))
    def calls_in_a_row(self, burst: list[str]) -> None:
        for outcome in burst:
            call = self.admit()
            if call is not None:
                self.report(call, outcome)

    @rule(dt=st.sampled_from([0.1, 0.5, 1.0, 2.0, 3.0, 6.0, 6.0]))
    def advance(self, dt: float) -> None:
        self.clock.advance(dt)

    @rule()
    def read(self) -> None:
        m = self.br.metrics()
        assert m.state.value == self.state

    @rule(op=st.sampled_from([None] * 40 + ["force_open", "disable", "reset"]))
    def operate(self, op: str | None) -> None:
        if op is None:  # operators act rarely, so that the automatic transitions get exercised
            return
        getattr(self.br, op)()
        assert self.state == {"force_open": "forced_open", "disable": "disabled"}.get(op, "closed")

    @invariant()
    def probes_are_bounded(self) -> None:
        if getattr(self, "br", None) is None or self.state != "half_open":
            return
        n = self.cfg.permitted_calls_in_half_open
        if self.tokens:
            in_flight = sum(1 for c in self.calls if c.probe and c.gen == self.gen)
            assert in_flight <= n
        assert self.ho_admitted <= n + self.ho_ignored


BreakerMachine.TestCase.settings = settings(
    max_examples=120,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBreakerMachine = BreakerMachine.TestCase
