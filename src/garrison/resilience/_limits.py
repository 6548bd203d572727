"""Concurrency limit algorithms: how many calls may be in flight at once, learned from latency.

Theory of operation
-------------------
A *limit algorithm* watches finished calls and proposes a concurrency limit. The limiter
(:mod:`._limiter`) feeds it one sample per finished call: when the call started, how long it
took (``rtt``), how many calls were in flight when it started, and whether it was *dropped*
(timed out, or refused by an overloaded peer). The algorithm updates :attr:`Limit.limit` and tells
its listeners with a ``limit_change`` :class:`~garrison.resilience._base.PolicyEvent`.

The algorithms follow Netflix's concurrency-limits library (names and defaults included):

* :class:`FixedLimit`: a constant, settable at run time; the baseline to compare against.
* :class:`AIMDLimit`: loss based, like TCP Reno: +1 while the limit is in use and nothing is
  dropped, times ``backoff_ratio`` on a drop or on an RTT above ``timeout``.
* :class:`VegasLimit`: delay based, like TCP Vegas: the queue is estimated as
  ``limit * (1 - rtt_noload / rtt)`` from the smallest RTT seen (re-probed now and then, with
  jitter) and the limit grows while that queue is short and shrinks when it is long.
* :class:`Gradient2Limit`: compares the latest RTT with a long-term exponential average of RTTs.
  ``gradient = clamp(tolerance * long / short, 0.5, 1)`` scales the limit, a queue allowance lets
  it grow, and smoothing damps each step. Averages (not minimums) keep it robust to bursty RPC
  latencies; when latency falls far below the average, the average is pulled down faster.
* :class:`WindowedLimit` wraps any of them: samples are aggregated over a window (average RTT,
  largest inflight, any drop) and the inner algorithm sees one sample per window, which is both
  steadier and cheaper on the hot path.

Every adaptive algorithm refuses to *grow* while the limit is not used (``inflight < limit / 2``):
an idle service proves nothing about its capacity ("app limited" in Netflix's words).

Time is seconds on the limiter's clock. Algorithms never read a clock themselves: events are
stamped with the sample's end time, ``start_time + rtt``. Nothing here is thread-safe; a limiter
and its algorithm belong to one event loop.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Callable
from typing import ClassVar, Literal, Protocol, runtime_checkable

import msgspec

from garrison.core import Clock, ConfigError, SystemClock

from ._base import Listener, PolicyEvent, emit

__all__ = [
    "AIMDConfig",
    "AIMDLimit",
    "EnvoyGradientConfig",
    "EnvoyGradientLimit",
    "FixedConfig",
    "FixedLimit",
    "Gradient2Config",
    "Gradient2Limit",
    "Limit",
    "LimitConfig",
    "VegasConfig",
    "VegasLimit",
    "WindowConfig",
    "WindowedLimit",
    "make_limit",
]


# --------------------------------------------------------------------------------------------
# configuration


class _Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class _LimitConfig(_Config, frozen=True, kw_only=True, tag_field="algorithm"):
    pass


def _require(config: object, key: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ConfigError(f"must be {expected}, got {getattr(config, key)!r}", key=key)


def _check_bounds(config: AIMDConfig | VegasConfig | Gradient2Config) -> None:
    lo, hi = config.min_limit, config.max_limit
    _require(config, "min_limit", lo >= 1, ">= 1")
    _require(config, "max_limit", hi >= lo, f">= min_limit ({lo})")
    _require(config, "initial_limit", lo <= config.initial_limit <= hi, f"within [{lo}, {hi}]")


class FixedConfig(_LimitConfig, frozen=True, kw_only=True, tag="fixed"):
    """``algorithm = "fixed"``: a constant limit."""

    limit: int = 20
    """The number of calls allowed in flight."""

    def __post_init__(self) -> None:
        _require(self, "limit", self.limit >= 1, ">= 1")


class AIMDConfig(_LimitConfig, frozen=True, kw_only=True, tag="aimd"):
    """``algorithm = "aimd"``: additive increase, multiplicative decrease on drops."""

    initial_limit: int = 20
    """The limit before any sample arrives."""
    min_limit: int = 1
    """The limit never falls below this."""
    max_limit: int = 200
    """The limit never rises above this."""
    backoff_ratio: float = 0.9
    """Factor applied to the limit on a drop, in [0.5, 1)."""
    timeout: float = 5.0
    """A call slower than this many seconds counts as a drop."""

    def __post_init__(self) -> None:
        _check_bounds(self)
        _require(self, "backoff_ratio", 0.5 <= self.backoff_ratio < 1.0, "in [0.5, 1.0)")
        _require(self, "timeout", self.timeout > 0, "> 0 seconds")


class VegasConfig(_LimitConfig, frozen=True, kw_only=True, tag="vegas"):
    """``algorithm = "vegas"``: TCP Vegas on the estimated queue ``limit * (1 - min_rtt / rtt)``.

    ``threshold``, ``alpha`` and ``beta`` are multiples of ``max(1, floor(log10(limit)))``, so
    the bands widen slowly as the limit grows.
    """

    initial_limit: int = 20
    """The limit before any sample arrives."""
    min_limit: int = 1
    """The limit never falls below this."""
    max_limit: int = 1000
    """The limit never rises above this."""
    smoothing: float = 1.0
    """Weight of a new estimate against the current limit, in (0, 1]; 1 means no smoothing."""
    threshold: int = 1
    """A queue at most this long means no queueing: grow fast (by ``beta``)."""
    alpha: int = 3
    """A queue shorter than this is manageable: grow by log10(limit)."""
    beta: int = 6
    """A queue longer than this means congestion: shrink by log10(limit)."""
    probe_multiplier: int = 30
    """Re-measure the no-load RTT every ``probe_multiplier * limit`` samples (with jitter in
    [0.5, 1)), so a stale minimum cannot pin the limit down forever."""

    def __post_init__(self) -> None:
        _check_bounds(self)
        _require(self, "smoothing", 0 < self.smoothing <= 1, "in (0, 1]")
        _require(self, "threshold", self.threshold >= 0, ">= 0")
        _require(self, "alpha", self.alpha >= self.threshold, ">= threshold")
        _require(self, "beta", self.beta > self.alpha, "> alpha")
        _require(self, "probe_multiplier", self.probe_multiplier >= 1, ">= 1")


class Gradient2Config(_LimitConfig, frozen=True, kw_only=True, tag="gradient2"):
    """``algorithm = "gradient2"``: the latest RTT against a long-term average of RTTs."""

    initial_limit: int = 20
    """The limit before any sample arrives."""
    min_limit: int = 4
    """The limit never falls below this (Netflix uses 20, Envoy 3)."""
    max_limit: int = 200
    """The limit never rises above this."""
    smoothing: float = 0.2
    """Weight of a new estimate against the current limit, in (0, 1]."""
    rtt_tolerance: float = 1.0
    """How much slower than the long-term average the latest RTT may be before the limit
    shrinks; >= 1. Netflix's default is 1.5 (50% extra latency tolerated); garrison defaults
    to 1.0 because with 1.5 the long-term average absorbs sustained queueing and the limit
    keeps drifting up under overload (measured in bench/resilience_overload.py: p99 at 3x
    load 3.3x the unloaded p99 with 1.5, 2.0x with 1.0)."""
    long_window: int = 600
    """Span, in samples, of the long-term exponential RTT average (a sample per window when
    wrapped in :class:`WindowedLimit`, so 600 one-second windows = 10 minutes)."""
    queue_size: int | Literal["sqrt", "log10"] = 4
    """How much the limit may grow per update while latency is fine: a constant, or
    ``"sqrt"`` (``max(4, sqrt(limit))``, as Envoy) or ``"log10"`` (``max(1, log10(limit))``)."""
    drop_backoff: float = 1.0
    """Factor applied to the limit on a drop, in [0.5, 1]. 1 ignores drops, as Netflix does
    (Gradient2 reacts to latency only); lower it when a peer signals overload by refusing
    quickly rather than by slowing down."""

    def __post_init__(self) -> None:
        _check_bounds(self)
        _require(self, "smoothing", 0 < self.smoothing <= 1, "in (0, 1]")
        _require(self, "rtt_tolerance", self.rtt_tolerance >= 1.0, ">= 1.0")
        _require(self, "long_window", self.long_window >= 1, ">= 1")
        q = self.queue_size
        _require(self, "queue_size", isinstance(q, str) or q >= 0, ">= 0, 'sqrt' or 'log10'")
        _require(self, "drop_backoff", 0.5 <= self.drop_backoff <= 1.0, "in [0.5, 1.0]")


class EnvoyGradientConfig(_LimitConfig, frozen=True, kw_only=True, tag="envoy_gradient"):
    """``algorithm = "envoy_gradient"``: Envoy's gradient controller against a measured minRTT.

    It windows samples itself, so it is never wrapped in :class:`WindowedLimit`.
    """

    min_rtt_interval: float = 60.0
    """Seconds between two minRTT measurements (plus jitter)."""
    min_rtt_requests: int = 50
    """Samples a minRTT measurement aggregates."""
    min_rtt_jitter: float = 0.15
    """Random extra delay before a measurement, as a fraction of ``min_rtt_interval``, so that
    replicas do not all measure at once."""
    min_concurrency: int = 3
    """The limit while minRTT is measured, and the lowest limit ever."""
    buffer: float = 0.25
    """Latency above minRTT tolerated before the limit shrinks, as a fraction of minRTT."""
    update_interval: float = 0.1
    """Seconds of samples aggregated into one limit update; at least twice the minRTT."""
    percentile: float = 0.5
    """The percentile of a window's RTTs taken as its RTT, in (0, 1]."""
    max_limit: int = 1000
    """The limit never rises above this."""

    def __post_init__(self) -> None:
        _require(self, "min_rtt_interval", self.min_rtt_interval > 0, "> 0 seconds")
        _require(self, "update_interval", self.update_interval > 0, "> 0 seconds")
        _require(self, "min_rtt_requests", self.min_rtt_requests >= 1, ">= 1")
        _require(self, "min_rtt_jitter", 0 <= self.min_rtt_jitter <= 1, "in [0, 1]")
        _require(self, "min_concurrency", self.min_concurrency >= 1, ">= 1")
        _require(self, "buffer", self.buffer >= 0, ">= 0")
        _require(self, "percentile", 0 < self.percentile <= 1, "in (0, 1]")
        lo = self.min_concurrency
        _require(self, "max_limit", self.max_limit >= lo, f">= min_concurrency ({lo})")


class WindowConfig(_Config, frozen=True, kw_only=True):
    """How :class:`WindowedLimit` aggregates samples before updating the inner algorithm."""

    min_window: float = 1.0
    """Shortest window, in seconds."""
    max_window: float = 1.0
    """Longest window, in seconds; a window lasts twice its smallest RTT, within the bounds."""
    min_samples: int = 10
    """A window with fewer samples is discarded: too few to say anything."""
    min_rtt: float = 0.0001
    """RTTs below this many seconds are ignored (cache hits, in-process answers); drops are
    always counted."""

    def __post_init__(self) -> None:
        _require(self, "min_window", self.min_window > 0, "> 0 seconds")
        _require(self, "max_window", self.max_window >= self.min_window, ">= min_window")
        _require(self, "min_samples", self.min_samples >= 1, ">= 1")
        _require(self, "min_rtt", self.min_rtt >= 0, ">= 0 seconds")


LimitConfig = FixedConfig | AIMDConfig | VegasConfig | Gradient2Config | EnvoyGradientConfig
"""Any limit algorithm's configuration; the ``algorithm`` key picks one."""


# --------------------------------------------------------------------------------------------
# the protocol and the shared base


@runtime_checkable
class Limit(Protocol):
    """A concurrency limit algorithm, fed with one sample per finished call."""

    name: str
    """The instance's name in events, usually the edge; set by the limiter when empty."""

    @property
    def limit(self) -> int:
        """The current concurrency limit (>= 1)."""
        ...

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        """Learn from one finished call.

        ``start_time`` and ``rtt`` are seconds on the limiter's clock, ``inflight`` the number of
        calls in flight when this one started (itself included), ``dropped`` whether it timed out
        or was refused for overload.
        """
        ...

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with a ``limit_change`` event whenever :attr:`limit` changes."""
        ...

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        ...


class _LimitBase:
    __slots__ = ("_limit", "_listeners", "name")

    algorithm: ClassVar[str] = ""

    def __init__(self, initial: int, name: str) -> None:
        self._limit = initial
        self._listeners: list[Listener] = []
        self.name = name

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self._limit

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with a ``limit_change`` event whenever :attr:`limit` changes."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; unknown listeners are ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _set(self, new: int, at: float, **data: float) -> None:
        old = self._limit
        if new != old:
            self._limit = new
            if self._listeners:
                details: dict[str, object] = {"from": old, "to": new, "algorithm": self.algorithm}
                details.update(data)
                event = PolicyEvent("limiter", self.name, "limit_change", at, details)
                emit(self._listeners, event)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, limit={self._limit})"


def _clamp(value: float, lo: float, hi: float) -> float:
    return lo if value < lo else hi if value > hi else value


def _log10_root(limit: int) -> int:
    # Netflix's Log10RootFunction: a slowly widening band, never below 1.
    return max(1, int(math.log10(limit))) if limit > 0 else 1


# --------------------------------------------------------------------------------------------
# the algorithms


class FixedLimit(_LimitBase):
    """A constant limit; :meth:`set` changes it at run time (e.g. from the control plane)."""

    __slots__ = ("_clock",)

    algorithm = "fixed"

    def __init__(
        self, limit: int | FixedConfig = 20, *, name: str = "", clock: Clock | None = None
    ) -> None:
        config = limit if isinstance(limit, FixedConfig) else FixedConfig(limit=limit)
        super().__init__(config.limit, name)
        self._clock = clock or SystemClock()

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        """Ignore the sample: the limit is fixed."""

    def set(self, limit: int) -> None:
        """Change the limit; listeners hear of it as a ``limit_change`` event."""
        if limit < 1:
            raise ConfigError(f"must be >= 1, got {limit}", key="limit")
        self._set(limit, self._clock.monotonic())


class AIMDLimit(_LimitBase):
    """Loss based: +1 per sample while the limit is in use, times ``backoff_ratio`` on a drop.

    A call slower than ``timeout`` counts as a drop, so a peer that slows down instead of
    failing still pushes the limit down.
    """

    __slots__ = ("_backoff", "_max", "_min", "_timeout")

    algorithm = "aimd"

    def __init__(self, config: AIMDConfig | None = None, *, name: str = "") -> None:
        config = config or AIMDConfig()
        super().__init__(config.initial_limit, name)
        self._min = config.min_limit
        self._max = config.max_limit
        self._backoff = config.backoff_ratio
        self._timeout = config.timeout

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        """Grow by one, or back off on a drop or a timeout."""
        current = self._limit
        if dropped or rtt > self._timeout:
            new = min(current - 1, int(current * self._backoff))
        elif inflight * 2 >= current:
            new = current + 1
        else:
            return  # app limited: no evidence either way
        self._set(max(self._min, min(self._max, new)), start_time + rtt)


class VegasLimit(_LimitBase):
    """Delay based, after TCP Vegas: grows while the estimated queue is short.

    ``rtt_noload`` is the smallest RTT seen since the last probe; every
    ``probe_multiplier * limit`` samples (times a jitter in [0.5, 1) from ``random``) it is reset
    to the current RTT, so a baseline that really moved is learned again.
    """

    __slots__ = (
        "_alpha",
        "_beta",
        "_estimate",
        "_max",
        "_min",
        "_probe_count",
        "_probe_jitter",
        "_probe_multiplier",
        "_random",
        "_smoothing",
        "_threshold",
        "rtt_noload",
    )

    algorithm = "vegas"

    def __init__(
        self,
        config: VegasConfig | None = None,
        *,
        name: str = "",
        random: Callable[[], float] = _random.random,
    ) -> None:
        config = config or VegasConfig()
        super().__init__(config.initial_limit, name)
        self._estimate = float(config.initial_limit)
        self._min = config.min_limit
        self._max = config.max_limit
        self._smoothing = config.smoothing
        self._threshold = config.threshold
        self._alpha = config.alpha
        self._beta = config.beta
        self._probe_multiplier = config.probe_multiplier
        self._random = random
        self._probe_count = 0
        self._probe_jitter = 0.5 + 0.5 * random()
        self.rtt_noload = 0.0
        """The no-load RTT estimate, seconds (0 before the first sample)."""

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        """Update the no-load RTT or the limit from one sample."""
        if rtt <= 0:
            if dropped:  # a refusal without a usable RTT: still a reason to back off
                self._update(start_time, rtt, inflight, dropped)
            return
        self._probe_count += 1
        if self._probe_jitter * self._probe_multiplier * self._estimate <= self._probe_count:
            self._probe_jitter = 0.5 + 0.5 * self._random()
            self._probe_count = 0
            self.rtt_noload = rtt
            return
        if self.rtt_noload == 0 or rtt < self.rtt_noload:
            self.rtt_noload = rtt
            return
        self._update(start_time, rtt, inflight, dropped)

    def _update(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        estimate = self._estimate
        log = _log10_root(int(estimate))
        if dropped:
            new = estimate - log
        elif inflight * 2 < estimate:
            return  # app limited
        else:
            queue = math.ceil(estimate * (1 - self.rtt_noload / rtt))
            if queue <= self._threshold * log:
                new = estimate + self._beta * log  # no queueing: grow fast
            elif queue < self._alpha * log:
                new = estimate + log
            elif queue > self._beta * log:
                new = estimate - log
            else:
                return  # in the sweet spot
        new = _clamp(new, self._min, self._max)
        self._estimate = estimate = (1 - self._smoothing) * estimate + self._smoothing * new
        self._set(int(estimate), start_time + rtt, rtt=rtt, rtt_noload=self.rtt_noload)


_QueueSize = Callable[[int], float]

_QUEUE_FUNCTIONS: dict[str, _QueueSize] = {
    "sqrt": lambda limit: max(4.0, math.sqrt(limit)),
    "log10": lambda limit: float(_log10_root(limit)),
}


class Gradient2Limit(_LimitBase):
    """Netflix's Gradient2: the latest RTT against a long-term exponential average.

    Per sample::

        long     = exponential average of rtt over ~long_window samples
        if long / rtt > 2:  long *= 0.95          # latency recovered: forget the overload fast
        if inflight < limit / 2:  keep the limit  # app limited
        gradient = clamp(rtt_tolerance * long / rtt, 0.5, 1.0)
        new      = limit * gradient + queue_size(limit)
        limit    = clamp(limit * (1 - smoothing) + new * smoothing, min_limit, max_limit)

    With ``gradient == 1`` the limit creeps up by ``smoothing * queue_size`` per update; once the
    latest RTT exceeds ``rtt_tolerance`` times the average it shrinks, at most by half per update
    before smoothing. ``queue_size`` may be a callable of the current limit, overriding the
    configuration.
    """

    __slots__ = (
        "_drop_backoff",
        "_estimate",
        "_factor",
        "_long",
        "_long_count",
        "_max",
        "_min",
        "_queue_size",
        "_smoothing",
        "_tolerance",
        "last_rtt",
    )

    algorithm = "gradient2"

    _WARMUP: ClassVar[int] = 10  # samples averaged plainly before the exponential average starts

    def __init__(
        self,
        config: Gradient2Config | None = None,
        *,
        name: str = "",
        queue_size: _QueueSize | None = None,
    ) -> None:
        config = config or Gradient2Config()
        super().__init__(config.initial_limit, name)
        self._estimate = float(config.initial_limit)
        self._min = config.min_limit
        self._max = config.max_limit
        self._smoothing = config.smoothing
        self._tolerance = config.rtt_tolerance
        self._drop_backoff = config.drop_backoff
        self._factor = 2.0 / (config.long_window + 1)
        self._long = 0.0
        self._long_count = 0
        if queue_size is not None:
            self._queue_size = queue_size
        elif isinstance(config.queue_size, str):
            self._queue_size = _QUEUE_FUNCTIONS[config.queue_size]
        else:
            constant = float(config.queue_size)
            self._queue_size = lambda _limit: constant
        self.last_rtt = 0.0
        """The latest RTT sample, seconds."""

    @property
    def long_rtt(self) -> float:
        """The long-term RTT average, seconds (0 before the first sample)."""
        return self._long

    @property
    def estimate(self) -> float:
        """The unrounded limit estimate."""
        return self._estimate

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        """Update the long-term average and the limit from one sample."""
        estimate = self._estimate
        at = start_time + rtt
        if dropped and self._drop_backoff < 1.0:
            # A drop's RTT (often a timeout) says nothing about normal latency: keep it out of
            # the average and back off.
            self._estimate = _clamp(estimate * self._drop_backoff, self._min, self._max)
            self._set(int(self._estimate), at, rtt=rtt, long_rtt=self._long)
            return
        if rtt <= 0:
            return
        self.last_rtt = rtt
        if self._long_count < self._WARMUP:
            self._long_count += 1
            self._long += (rtt - self._long) / self._long_count
        else:
            self._long += (rtt - self._long) * self._factor
        long = self._long
        if long / rtt > 2:
            self._long = long * 0.95  # as Netflix: applied after this update's gradient input

        if inflight < estimate / 2:
            return  # app limited

        gradient = _clamp(self._tolerance * long / rtt, 0.5, 1.0)
        new = estimate * gradient + self._queue_size(int(estimate))
        new = estimate * (1 - self._smoothing) + new * self._smoothing
        self._estimate = estimate = _clamp(new, self._min, self._max)
        self._set(int(estimate), at, rtt=rtt, long_rtt=long, gradient=gradient)


class EnvoyGradientLimit(_LimitBase):
    """Envoy's adaptive concurrency gradient controller.

    Every ``min_rtt_interval`` (with jitter) the limit is pinned to ``min_concurrency`` until
    ``min_rtt_requests`` calls that started after the pin have finished; a percentile of their
    RTTs is the new minRTT, the latency of an unloaded callee, and the previous limit returns.
    Between measurements, every ``update_interval``::

        gradient = clamp(minRTT * (1 + buffer) / windowRTT, 0.5, 2.0)
        limit    = clamp(limit * gradient + sqrt(limit * gradient), min_concurrency, max_limit)

    Because the baseline is re-measured under ideal conditions rather than averaged from live
    traffic, sustained overload cannot teach it that queueing is normal (Gradient2's drift). A
    limit stuck at ``min_concurrency`` for five windows suggests a bad minRTT and triggers a new
    measurement at once. ``random`` draws the jitter.
    """

    __slots__ = (
        "_at_min",
        "_buffer",
        "_deferred",
        "_epoch",
        "_interval",
        "_jitter",
        "_max",
        "_measuring",
        "_min",
        "_next_measure",
        "_percentile",
        "_random",
        "_requests",
        "_samples",
        "_update_interval",
        "_window_end",
        "min_rtt",
    )

    algorithm = "envoy_gradient"

    def __init__(
        self,
        config: EnvoyGradientConfig | None = None,
        *,
        name: str = "",
        random: Callable[[], float] = _random.random,
    ) -> None:
        config = config or EnvoyGradientConfig()
        super().__init__(config.min_concurrency, name)
        self._min = config.min_concurrency
        self._max = config.max_limit
        self._buffer = config.buffer
        self._percentile = config.percentile
        self._interval = config.min_rtt_interval
        self._jitter = config.min_rtt_jitter
        self._requests = config.min_rtt_requests
        self._update_interval = config.update_interval
        self._random = random
        self._samples: list[float] = []
        self._at_min = 0
        self._window_end = 0.0
        self._next_measure = 0.0
        # As Envoy: start by measuring, at the minimum concurrency.
        self._measuring = True
        self._deferred = config.min_concurrency
        self._epoch = -math.inf
        self.min_rtt = 0.0
        """The measured minRTT, seconds (0 before the first measurement ends)."""

    @property
    def measuring(self) -> bool:
        """Whether a minRTT measurement is under way (the limit is pinned to the minimum)."""
        return self._measuring

    def _window(self) -> float:
        # A window shorter than two RTTs would judge the previous limit, not the current one,
        # and the limit would oscillate (Envoy's 100 ms assumes millisecond RTTs).
        return max(self._update_interval, 2 * self.min_rtt)

    def _aggregate(self) -> float:
        samples = sorted(self._samples)
        self._samples.clear()
        return samples[max(0, math.ceil(self._percentile * len(samples)) - 1)]

    def _start_measuring(self, at: float) -> None:
        self._measuring = True
        self._deferred = self._limit
        self._epoch = at
        self._samples.clear()
        self._at_min = 0
        self._set(self._min, at, measuring=1)

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        """Add a sample; finish a measurement or a window when it is complete."""
        if rtt < 0 or start_time < self._epoch:
            return  # started before the current measurement: not an unloaded sample
        end = start_time + rtt
        self._samples.append(rtt)
        if self._measuring:
            if len(self._samples) >= self._requests:
                self.min_rtt = self._aggregate()
                self._measuring = False
                self._next_measure = end + self._interval * (1 + self._jitter * self._random())
                self._window_end = end + self._window()
                self._set(self._deferred, end, min_rtt=self.min_rtt)
            return
        if end >= self._next_measure:
            self._start_measuring(end)
            return
        if end < self._window_end:
            return
        self._window_end = end + self._window()
        window_rtt = self._aggregate()
        if window_rtt <= 0 or self.min_rtt <= 0:
            return
        gradient = _clamp(self.min_rtt * (1 + self._buffer) / window_rtt, 0.5, 2.0)
        scaled = self._limit * gradient
        new = int(_clamp(scaled + math.sqrt(scaled), self._min, self._max))
        self._at_min = self._at_min + 1 if new == self._min == self._limit else 0
        self._set(new, end, rtt=window_rtt, min_rtt=self.min_rtt, gradient=gradient)
        if self._at_min >= 5:
            self._start_measuring(end)


class WindowedLimit:
    """Aggregates samples over a time window, then feeds the inner algorithm one sample.

    A window closes at the first sample that ends after it; its sample is the average RTT, the
    largest inflight and whether anything was dropped. The next window lasts twice the smallest
    RTT seen, within ``[min_window, max_window]``. Windows with fewer than ``min_samples``
    samples are discarded.
    """

    __slots__ = (
        "_count",
        "_delegate",
        "_dropped",
        "_max_inflight",
        "_max_window",
        "_min_rtt",
        "_min_samples",
        "_min_window",
        "_next_update",
        "_rtt_count",
        "_rtt_min",
        "_rtt_sum",
    )

    def __init__(self, delegate: Limit, config: WindowConfig | None = None) -> None:
        config = config or WindowConfig()
        self._delegate = delegate
        self._min_window = config.min_window
        self._max_window = config.max_window
        self._min_samples = config.min_samples
        self._min_rtt = config.min_rtt
        self._next_update = -math.inf
        self._reset()

    def _reset(self) -> None:
        self._count = 0
        self._rtt_count = 0
        self._rtt_sum = 0.0
        self._rtt_min = math.inf
        self._max_inflight = 0
        self._dropped = False

    @property
    def delegate(self) -> Limit:
        """The wrapped algorithm."""
        return self._delegate

    @property
    def name(self) -> str:
        """The wrapped algorithm's name."""
        return self._delegate.name

    @name.setter
    def name(self, value: str) -> None:
        self._delegate.name = value

    @property
    def limit(self) -> int:
        """The wrapped algorithm's limit."""
        return self._delegate.limit

    def add_listener(self, listener: Listener) -> None:
        """Listen to the wrapped algorithm's limit changes."""
        self._delegate.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop listening to the wrapped algorithm."""
        self._delegate.remove_listener(listener)

    def on_sample(self, start_time: float, rtt: float, inflight: int, dropped: bool) -> None:
        """Add a sample to the current window; close the window once its time is up."""
        if rtt >= self._min_rtt:
            self._rtt_count += 1
            self._rtt_sum += rtt
            if rtt < self._rtt_min:
                self._rtt_min = rtt
        elif dropped:
            self._dropped = True  # a fast refusal still says "overloaded"
        else:
            return
        self._count += 1
        if inflight > self._max_inflight:
            self._max_inflight = inflight
        if dropped:
            self._dropped = True

        end = start_time + rtt
        if end <= self._next_update:
            return
        count, rtt_count, rtt_sum, rtt_min = (
            self._count,
            self._rtt_count,
            self._rtt_sum,
            self._rtt_min,
        )
        max_inflight, window_dropped = self._max_inflight, self._dropped
        self._reset()
        span = 2 * rtt_min if rtt_count else self._min_window
        self._next_update = end + _clamp(span, self._min_window, self._max_window)
        if count >= self._min_samples and (rtt_count or window_dropped):
            # A window of fast refusals only has no RTT worth learning from: rtt 0 says so.
            avg = rtt_sum / rtt_count if rtt_count else 0.0
            self._delegate.on_sample(end - avg, avg, max_inflight, window_dropped)

    def __repr__(self) -> str:
        return f"WindowedLimit({self._delegate!r})"


def make_limit(
    config: LimitConfig,
    *,
    window: WindowConfig | None = None,
    name: str = "",
    clock: Clock | None = None,
    random: Callable[[], float] = _random.random,
) -> Limit:
    """Build the algorithm ``config`` describes, wrapped in a :class:`WindowedLimit` when
    ``window`` is given. Fixed limits learn nothing and the Envoy controller windows samples
    itself, so neither is ever wrapped."""
    inner: Limit
    if isinstance(config, FixedConfig):
        return FixedLimit(config, name=name, clock=clock)
    if isinstance(config, EnvoyGradientConfig):
        return EnvoyGradientLimit(config, name=name, random=random)
    if isinstance(config, AIMDConfig):
        inner = AIMDLimit(config, name=name)
    elif isinstance(config, VegasConfig):
        inner = VegasLimit(config, name=name, random=random)
    else:
        inner = Gradient2Limit(config, name=name)
    return inner if window is None else WindowedLimit(inner, window)
