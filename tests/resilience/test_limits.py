"""The limit algorithms, driven sample by sample on a fake clock."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock
from garrison.resilience._base import Listener, PolicyEvent
from garrison.resilience._limiter import LimiterConfig
from garrison.resilience._limits import (
    AIMDConfig,
    AIMDLimit,
    EnvoyGradientConfig,
    EnvoyGradientLimit,
    FixedConfig,
    FixedLimit,
    Gradient2Config,
    Gradient2Limit,
    Limit,
    VegasConfig,
    VegasLimit,
    WindowConfig,
    WindowedLimit,
    make_limit,
)


def feed(
    limit: Limit,
    clock: FakeClock,
    *,
    rtt: float,
    inflight: int | None = None,
    dropped: bool = False,
    n: int = 1,
) -> None:
    """Feed ``n`` calls of ``rtt`` seconds, each started at the clock's time, one after another.

    ``inflight`` defaults to the current limit (the limit is in use).
    """
    for _ in range(n):
        start = clock.monotonic()
        clock.advance(rtt)
        limit.on_sample(start, rtt, limit.limit if inflight is None else inflight, dropped)


class Recorder:
    """A listener collecting events."""

    def __init__(self) -> None:
        self.events: list[PolicyEvent] = []

    def __call__(self, event: PolicyEvent) -> None:
        self.events.append(event)


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (FixedConfig, {"limit": 0}, "limit"),
        (AIMDConfig, {"min_limit": 0}, "min_limit"),
        (AIMDConfig, {"min_limit": 10, "max_limit": 5, "initial_limit": 5}, "max_limit"),
        (AIMDConfig, {"initial_limit": 500}, "initial_limit"),
        (AIMDConfig, {"backoff_ratio": 1.0}, "backoff_ratio"),
        (AIMDConfig, {"backoff_ratio": 0.2}, "backoff_ratio"),
        (AIMDConfig, {"timeout": 0}, "timeout"),
        (VegasConfig, {"smoothing": 0}, "smoothing"),
        (VegasConfig, {"alpha": 7}, "beta"),
        (VegasConfig, {"threshold": 4}, "alpha"),
        (VegasConfig, {"threshold": -1}, "threshold"),
        (VegasConfig, {"probe_multiplier": 0}, "probe_multiplier"),
        (Gradient2Config, {"smoothing": 1.5}, "smoothing"),
        (Gradient2Config, {"rtt_tolerance": 0.9}, "rtt_tolerance"),
        (Gradient2Config, {"long_window": 0}, "long_window"),
        (Gradient2Config, {"queue_size": -1}, "queue_size"),
        (Gradient2Config, {"drop_backoff": 0.1}, "drop_backoff"),
        (Gradient2Config, {"max_limit": 2}, "max_limit"),
        (EnvoyGradientConfig, {"min_rtt_interval": 0}, "min_rtt_interval"),
        (EnvoyGradientConfig, {"update_interval": -1}, "update_interval"),
        (EnvoyGradientConfig, {"min_rtt_requests": 0}, "min_rtt_requests"),
        (EnvoyGradientConfig, {"min_rtt_jitter": 2}, "min_rtt_jitter"),
        (EnvoyGradientConfig, {"min_concurrency": 0}, "min_concurrency"),
        (EnvoyGradientConfig, {"buffer": -0.1}, "buffer"),
        (EnvoyGradientConfig, {"percentile": 0}, "percentile"),
        (EnvoyGradientConfig, {"max_limit": 2}, "max_limit"),
        (WindowConfig, {"min_window": 0}, "min_window"),
        (WindowConfig, {"max_window": 0.5}, "max_window"),
        (WindowConfig, {"min_samples": 0}, "min_samples"),
        (WindowConfig, {"min_rtt": -1}, "min_rtt"),
    ],
)
def test_bad_config_names_the_field(cls: Any, kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        cls(**kwargs)
    assert info.value.key == key
    assert key in str(info.value)


def test_config_from_plain_data_picks_the_algorithm() -> None:
    cfg = msgspec.convert(
        {"limit": {"algorithm": "vegas", "alpha": 2, "beta": 4}, "window": None},
        LimiterConfig,
    )
    assert isinstance(cfg.limit, VegasConfig)
    assert (cfg.limit.alpha, cfg.limit.beta) == (2, 4)
    assert cfg.window is None
    with pytest.raises(ConfigError) as info:
        msgspec.convert({"limit": {"algorithm": "gradient2", "smoothing": 0}}, LimiterConfig)
    assert info.value.key == "smoothing"
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"limit": {"algorithm": "nope"}}, LimiterConfig)


def test_make_limit_builds_and_wraps() -> None:
    assert isinstance(make_limit(FixedConfig(limit=3), window=WindowConfig()), FixedLimit)
    assert isinstance(make_limit(EnvoyGradientConfig(), window=WindowConfig()), EnvoyGradientLimit)
    assert isinstance(make_limit(AIMDConfig()), AIMDLimit)
    windowed = make_limit(VegasConfig(), window=WindowConfig(), name="a->b")
    assert isinstance(windowed, WindowedLimit)
    assert isinstance(windowed.delegate, VegasLimit)
    assert windowed.name == "a->b"
    assert isinstance(make_limit(Gradient2Config()), Gradient2Limit)
    for limit in (FixedLimit(), AIMDLimit(), VegasLimit(), Gradient2Limit(), windowed):
        assert isinstance(limit, Limit)


# -- fixed ------------------------------------------------------------------------------------


def test_fixed_limit_ignores_samples_and_can_be_set() -> None:
    clock = FakeClock()
    limit = FixedLimit(7, name="x", clock=clock)
    rec = Recorder()
    limit.add_listener(rec)
    feed(limit, clock, rtt=10.0, dropped=True, n=5)
    assert limit.limit == 7
    limit.set(9)
    limit.set(9)
    assert limit.limit == 9
    assert [(e.policy, e.name, e.kind, e.data["from"], e.data["to"]) for e in rec.events] == [
        ("limiter", "x", "limit_change", 7, 9)
    ]
    assert rec.events[0].at == clock.monotonic()
    with pytest.raises(ConfigError):
        limit.set(0)
    limit.remove_listener(rec)
    limit.remove_listener(rec)  # unknown: ignored
    limit.set(3)
    assert len(rec.events) == 1


# -- AIMD -------------------------------------------------------------------------------------


def test_aimd_grows_by_one_while_in_use() -> None:
    clock = FakeClock()
    limit = AIMDLimit(AIMDConfig(initial_limit=10, max_limit=15))
    feed(limit, clock, rtt=0.01, n=3)
    assert limit.limit == 13
    feed(limit, clock, rtt=0.01, n=10)
    assert limit.limit == 15  # bounded by max_limit


def test_aimd_does_not_grow_when_app_limited() -> None:
    clock = FakeClock()
    limit = AIMDLimit(AIMDConfig(initial_limit=10))
    feed(limit, clock, rtt=0.01, inflight=4, n=20)
    assert limit.limit == 10


def test_aimd_backs_off_on_drop_and_on_timeout() -> None:
    clock = FakeClock()
    limit = AIMDLimit(AIMDConfig(initial_limit=20, backoff_ratio=0.5, timeout=1.0, min_limit=3))
    feed(limit, clock, rtt=0.01, dropped=True)
    assert limit.limit == 10
    feed(limit, clock, rtt=2.0)  # slower than the timeout: a drop
    assert limit.limit == 5
    feed(limit, clock, rtt=0.01, dropped=True, n=5)
    assert limit.limit == 3  # bounded by min_limit


def test_aimd_small_limit_still_decreases() -> None:
    clock = FakeClock()
    limit = AIMDLimit(AIMDConfig(initial_limit=2, backoff_ratio=0.9))
    feed(limit, clock, rtt=0.01, dropped=True)
    assert limit.limit == 1  # int(2 * 0.9) == 1, and at least one less than before


# -- Vegas ------------------------------------------------------------------------------------


def test_vegas_grows_without_queueing_and_shrinks_with_it() -> None:
    clock = FakeClock()
    limit = VegasLimit(VegasConfig(initial_limit=20, max_limit=100), random=lambda: 0.999)
    feed(limit, clock, rtt=0.010)  # first sample: the no-load RTT
    assert limit.rtt_noload == 0.010
    assert limit.limit == 20
    feed(limit, clock, rtt=0.010, n=3)  # no queue: + beta * log10 each time
    assert limit.limit == 20 + 3 * 6
    before = limit.limit
    feed(limit, clock, rtt=0.030, n=5)  # queue = limit * 2/3: well above beta
    assert limit.limit == before - 5
    feed(limit, clock, rtt=0.010, dropped=True)
    assert limit.limit == before - 6


def test_vegas_sweet_spot_and_app_limited_keep_the_limit() -> None:
    clock = FakeClock()
    limit = VegasLimit(VegasConfig(initial_limit=20), random=lambda: 0.999)
    feed(limit, clock, rtt=0.100)
    # queue = ceil(20 * (1 - 100/118)) = 4: between alpha (3) and beta (6)
    feed(limit, clock, rtt=0.118, n=5)
    assert limit.limit == 20
    feed(limit, clock, rtt=0.100, inflight=5, n=5)  # app limited
    assert limit.limit == 20


def test_vegas_probes_for_a_new_noload_rtt() -> None:
    clock = FakeClock()
    # jitter 0.5: probe after 0.5 * 2 * limit(10) = 10 samples
    config = VegasConfig(initial_limit=10, probe_multiplier=2, smoothing=0.01)
    limit = VegasLimit(config, random=lambda: 0.0)
    feed(limit, clock, rtt=0.010)
    feed(limit, clock, rtt=0.050, n=8)
    assert limit.rtt_noload == 0.010
    feed(limit, clock, rtt=0.050)  # the 10th sample is the probe
    assert limit.rtt_noload == 0.050


def test_vegas_ignores_zero_rtt() -> None:
    limit = VegasLimit()
    limit.on_sample(1.0, 0.0, 20, False)
    assert limit.rtt_noload == 0.0


# -- Gradient2 --------------------------------------------------------------------------------


def test_gradient2_grows_while_latency_is_steady() -> None:
    clock = FakeClock()
    limit = Gradient2Limit(Gradient2Config(initial_limit=20, max_limit=40))
    feed(limit, clock, rtt=0.010, n=10)
    grown = limit.limit
    assert grown > 20
    feed(limit, clock, rtt=0.010, n=200)
    assert limit.limit == 40  # bounded by max_limit
    assert limit.long_rtt == pytest.approx(0.010)


def test_gradient2_shrinks_when_latency_rises() -> None:
    clock = FakeClock()
    limit = Gradient2Limit(Gradient2Config(initial_limit=50, min_limit=10, max_limit=100))
    feed(limit, clock, rtt=0.010, n=20)
    high = limit.limit
    feed(limit, clock, rtt=0.030, n=5)  # 3x the long-term average, tolerance is 1.5
    assert limit.limit < high
    feed(limit, clock, rtt=0.030, n=200)
    assert limit.limit >= 10  # bounded by min_limit
    assert limit.limit < high


def test_gradient2_tolerates_latency_within_tolerance() -> None:
    clock = FakeClock()
    limit = Gradient2Limit(Gradient2Config(initial_limit=20, max_limit=1000, rtt_tolerance=1.5))
    feed(limit, clock, rtt=0.010, n=20)
    before = limit.estimate
    feed(limit, clock, rtt=0.014, n=5)  # 1.4x: within rtt_tolerance 1.5, still growing
    assert limit.estimate > before


def test_gradient2_does_not_move_when_app_limited() -> None:
    clock = FakeClock()
    limit = Gradient2Limit(Gradient2Config(initial_limit=40))
    feed(limit, clock, rtt=0.010, inflight=5, n=20)
    feed(limit, clock, rtt=0.100, inflight=5, n=20)
    assert limit.limit == 40


def test_gradient2_recovers_its_baseline_after_overload() -> None:
    clock = FakeClock()
    limit = Gradient2Limit(Gradient2Config(long_window=10))
    feed(limit, clock, rtt=0.100, n=50)
    assert limit.long_rtt == pytest.approx(0.100)
    feed(limit, clock, rtt=0.010, n=30)
    # without the extra 0.95 decay an exponential average of span 10 would still be above 0.02
    assert limit.long_rtt < 0.02


def test_gradient2_drops_ignored_by_default_and_backed_off_when_configured() -> None:
    clock = FakeClock()
    netflix = Gradient2Limit(Gradient2Config(initial_limit=50, max_limit=60))
    feed(netflix, clock, rtt=0.010, dropped=True, n=20)
    assert netflix.limit >= 50
    backoff = Gradient2Limit(Gradient2Config(initial_limit=50, drop_backoff=0.5))
    feed(backoff, clock, rtt=0.010, n=10)
    long = backoff.long_rtt
    feed(backoff, clock, rtt=5.0, dropped=True)
    assert backoff.limit == int(backoff.estimate) < 30
    assert backoff.long_rtt == long  # a timeout's RTT stays out of the baseline


def test_gradient2_queue_size_functions() -> None:
    clock = FakeClock()
    config = Gradient2Config(initial_limit=100, max_limit=1000, smoothing=1.0)
    sqrt = Gradient2Limit(
        Gradient2Config(**{**msgspec.structs.asdict(config), "queue_size": "sqrt"})
    )
    feed(sqrt, clock, rtt=0.01)
    assert sqrt.limit == 110
    log = Gradient2Limit(
        Gradient2Config(**{**msgspec.structs.asdict(config), "queue_size": "log10"})
    )
    feed(log, clock, rtt=0.01)
    assert log.limit == 102
    custom = Gradient2Limit(config, queue_size=lambda limit: limit / 2)
    feed(custom, clock, rtt=0.01)
    assert custom.limit == 150


def test_gradient2_emits_limit_change_events() -> None:
    clock = FakeClock()
    limit = Gradient2Limit(name="api->db")
    rec = Recorder()
    limit.add_listener(rec)
    while not rec.events:
        feed(limit, clock, rtt=0.01)
    (event,) = rec.events
    assert (event.policy, event.name, event.kind) == ("limiter", "api->db", "limit_change")
    assert event.at == clock.monotonic()  # the end of the sample that changed the limit
    assert event.data["from"] == 20
    assert event.data["to"] == limit.limit == 21
    assert event.data["algorithm"] == "gradient2"
    assert event.data["rtt"] == pytest.approx(0.01)


def test_a_failing_listener_does_not_break_the_algorithm(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    limit = AIMDLimit(AIMDConfig(initial_limit=5))

    def boom(event: PolicyEvent) -> None:
        raise RuntimeError("sink down")

    limit.add_listener(boom)
    feed(limit, clock, rtt=0.01, n=2)
    assert limit.limit == 7
    assert "policy listener failed" in caplog.text


# -- Envoy gradient ---------------------------------------------------------------------------


def is_measuring(limit: EnvoyGradientLimit) -> bool:
    return limit.measuring  # read through a call: mypy would narrow the property across feeds


def test_envoy_gradient_measures_min_rtt_then_adapts() -> None:
    clock = FakeClock()
    config = EnvoyGradientConfig(min_rtt_requests=5, update_interval=0.1, min_rtt_jitter=0)
    limit = EnvoyGradientLimit(config, random=lambda: 0.0)
    assert is_measuring(limit)
    assert limit.limit == 3
    feed(limit, clock, rtt=0.010, n=5)
    assert not is_measuring(limit)
    assert limit.min_rtt == pytest.approx(0.010)
    # latency at minRTT: gradient 1.25 per window, plus sqrt headroom
    for _ in range(20):
        feed(limit, clock, rtt=0.010, n=10)
    grown = limit.limit
    assert grown > 50
    # latency 4x minRTT: gradient 0.5 (clamped) per window
    feed(limit, clock, rtt=0.040, n=10)
    assert limit.limit < grown * 0.6


def test_envoy_gradient_remeasures_periodically_and_ignores_older_calls() -> None:
    clock = FakeClock()
    config = EnvoyGradientConfig(min_rtt_requests=3, min_rtt_interval=1.0, min_rtt_jitter=0)
    limit = EnvoyGradientLimit(config)
    feed(limit, clock, rtt=0.01, n=3)
    for _ in range(20):
        feed(limit, clock, rtt=0.01, n=5)
    high = limit.limit
    old_start = clock.monotonic()
    clock.advance(1.0)
    feed(limit, clock, rtt=0.01)  # past the interval: a new measurement starts
    assert is_measuring(limit)
    assert limit.limit == 3
    limit.on_sample(old_start, clock.monotonic() - old_start, 50, False)  # started before: ignored
    feed(limit, clock, rtt=0.02, n=3)
    assert not is_measuring(limit)
    assert limit.min_rtt == pytest.approx(0.02)
    assert limit.limit == high  # the limit from before the measurement returns


def test_envoy_gradient_remeasures_when_stuck_at_the_minimum() -> None:
    clock = FakeClock()
    config = EnvoyGradientConfig(min_rtt_requests=3, update_interval=0.1, min_concurrency=3)
    limit = EnvoyGradientLimit(config)
    feed(limit, clock, rtt=0.001, n=3)  # an unrepresentatively low minRTT
    windows = 0
    while not is_measuring(limit) and windows < 50:
        feed(limit, clock, rtt=0.05, n=3)
        windows += 1
    assert limit.measuring
    feed(limit, clock, rtt=0.05, n=3)
    assert limit.min_rtt == pytest.approx(0.05)


# -- windowed ---------------------------------------------------------------------------------


class RecordingLimit:
    """A Limit that records the samples it is given."""

    name = ""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, int, bool]] = []

    @property
    def limit(self) -> int:
        return 10

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        self.samples.append((start_time, rtt, inflight, dropped))

    def add_listener(self, listener: Listener) -> None:
        pass

    def remove_listener(self, listener: Listener) -> None:
        pass


def test_windowed_limit_aggregates_a_window_into_one_sample() -> None:
    clock = FakeClock(start=100.0)
    inner = RecordingLimit()
    limit = WindowedLimit(inner, WindowConfig(min_window=1.0, max_window=1.0, min_samples=3))
    feed(limit, clock, rtt=0.01)  # the first sample opens the first window
    assert inner.samples == []
    rtts = itertools.cycle([0.01, 0.03])
    for i in range(60):
        feed(limit, clock, rtt=next(rtts), inflight=i % 7, dropped=(i == 30))
    # 60 samples of 0.01/0.03 s = 1.2 s: exactly one window closed
    assert len(inner.samples) == 1
    start, rtt, inflight, dropped = inner.samples[0]
    assert rtt == pytest.approx(0.02, rel=0.05)
    assert inflight == 6
    assert dropped
    assert start + rtt == pytest.approx(clock.monotonic(), abs=0.3)


def test_windowed_limit_discards_thin_windows_and_tiny_rtts() -> None:
    clock = FakeClock()
    inner = RecordingLimit()
    limit = WindowedLimit(inner, WindowConfig(min_samples=10, min_rtt=0.001))
    feed(limit, clock, rtt=0.5, n=5)  # windows of at most 2 samples: all too thin
    assert inner.samples == []
    feed(limit, clock, rtt=0.0001, n=100)  # below min_rtt: ignored
    assert inner.samples == []
    clock.advance(5.0)
    feed(limit, clock, rtt=0.1)  # closes the thin window, opens a new one of 1 s
    feed(limit, clock, rtt=0.0001, dropped=True, n=3)  # drops count whatever their RTT
    feed(limit, clock, rtt=0.1, n=11)
    assert len(inner.samples) == 1
    _, rtt, _, dropped = inner.samples[0]
    assert dropped
    assert rtt == pytest.approx(0.1)  # the drops' tiny RTTs stay out of the average


def test_windowed_limit_passes_on_windows_of_fast_refusals() -> None:
    clock = FakeClock()
    inner = AIMDLimit(AIMDConfig(initial_limit=20))
    limit = WindowedLimit(inner, WindowConfig(min_samples=3))
    for _ in range(3):
        feed(limit, clock, rtt=0.00001, dropped=True, n=5)
        clock.advance(1.0)
    assert inner.limit < 20
    vegas = VegasLimit(VegasConfig(initial_limit=20))
    vegas.on_sample(0.0, 0.0, 20, True)
    assert vegas.limit < 20
    gradient = Gradient2Limit(Gradient2Config(initial_limit=20, drop_backoff=0.5))
    gradient.on_sample(0.0, 0.0, 20, True)
    assert gradient.limit == 10


def test_windowed_limit_forwards_name_limit_and_listeners() -> None:
    inner = AIMDLimit(AIMDConfig(initial_limit=4))
    limit = WindowedLimit(inner)
    limit.name = "edge"
    assert inner.name == "edge"
    assert limit.limit == 4
    rec = Recorder()
    limit.add_listener(rec)
    inner.on_sample(0.0, 0.1, 4, False)
    assert len(rec.events) == 1
    limit.remove_listener(rec)
    inner.on_sample(0.0, 0.1, 5, False)
    assert len(rec.events) == 1
    assert "AIMDLimit" in repr(limit)


# -- properties -------------------------------------------------------------------------------

samples = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=10.0, allow_nan=False),
        st.integers(min_value=0, max_value=500),
        st.booleans(),
    ),
    max_size=200,
)


def _algorithms() -> list[Limit]:
    return [
        AIMDLimit(AIMDConfig(initial_limit=10, min_limit=2, max_limit=50)),
        VegasLimit(VegasConfig(initial_limit=10, min_limit=2, max_limit=50), random=lambda: 0.3),
        Gradient2Limit(Gradient2Config(initial_limit=10, min_limit=2, max_limit=50)),
        Gradient2Limit(
            Gradient2Config(initial_limit=10, min_limit=2, max_limit=50, drop_backoff=0.5)
        ),
        EnvoyGradientLimit(
            EnvoyGradientConfig(min_concurrency=2, max_limit=50, min_rtt_requests=3),
            random=lambda: 0.3,
        ),
        WindowedLimit(
            Gradient2Limit(Gradient2Config(initial_limit=10, min_limit=2, max_limit=50)),
            WindowConfig(min_samples=1, min_window=0.1, max_window=0.1),
        ),
    ]


@settings(max_examples=60, deadline=None)
@given(samples)
def test_every_algorithm_stays_within_its_bounds(seq: list[tuple[float, int, bool]]) -> None:
    for limit in _algorithms():
        rec = Recorder()
        limit.add_listener(rec)
        now = 0.0
        for rtt, inflight, dropped in seq:
            limit.on_sample(now, rtt, inflight, dropped)
            now += rtt + 0.001
            assert 2 <= limit.limit <= 50, limit
        # every event reports a real change, and the last one the current limit
        assert all(e.data["from"] != e.data["to"] for e in rec.events)
        if rec.events:
            assert rec.events[-1].data["to"] == limit.limit
