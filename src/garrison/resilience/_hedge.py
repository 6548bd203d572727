"""Hedging decisions: after a delay with no answer, send another attempt, within a budget.

Theory of operation
-------------------
A hedged call sends its first attempt, and if no answer has come after :meth:`Hedger.delay`
seconds, a second one to another instance ("The Tail at Scale", Dean & Barroso), up to
``max_hedged`` extra attempts; the first answer wins and the others are cancelled. The delay is
fixed, or the ``percentile`` of recent attempt latencies so that only the slowest few percent of
calls are hedged, clamped to ``[min_delay, max_delay]`` (``max_delay`` until ``min_samples``
latencies are known).

Hedges are extra load, so they are paid from a :class:`~garrison.resilience._budget.RetryBudget`
of their own: at most ``budget.ratio`` hedges per request in the window (plus the budget's
floor). When a callee slows down for everyone, hedging stops at that share instead of doubling
its load.

The percentile comes from :class:`LatencyWindow`: a ring of the last ``window`` latencies whose
percentile is recomputed (a sort, ~6 us for 256 values) when asked for after at least
``window / 4`` new samples. That is O(1) amortized per sample (~0.1 us at the defaults), exact over
a recent window rather than an approximation over all time, and at most a quarter-window stale.
Only idempotent calls may be hedged; that is the caller's decision, not this module's.
"""

from __future__ import annotations

import math

import msgspec

from garrison.core import Clock, ConfigError

from ._budget import RetryBudget, RetryBudgetConfig

__all__ = ["HedgeConfig", "Hedger", "LatencyWindow"]


class HedgeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When and how much to hedge."""

    delay: float | None = None
    """Fixed seconds to wait before each hedge; ``None`` uses the latency ``percentile``."""
    percentile: float = 0.95
    """Which latency percentile of recent attempts to wait before hedging (0 < p < 1)."""
    min_delay: float = 0.001
    """Floor of the adaptive delay, in seconds."""
    max_delay: float = 1.0
    """Cap of the adaptive delay, in seconds; also the delay until ``min_samples`` are known."""
    min_samples: int = 32
    """Latencies needed before the percentile is trusted."""
    window: int = 256
    """How many recent latencies the percentile is computed over."""
    max_hedged: int = 1
    """Extra attempts per call at most."""
    budget: RetryBudgetConfig = RetryBudgetConfig(ratio=0.1, min_retries_per_second=1.0)
    """Hedges allowed as a share of requests: ``ratio`` per request, plus a per-second floor."""

    def __post_init__(self) -> None:
        if self.delay is not None:
            _require(_finite(self.delay) and self.delay >= 0, "delay", "seconds >= 0", self.delay)
        _require(
            _finite(self.percentile) and 0 < self.percentile < 1,
            "percentile",
            "a fraction between 0 and 1 (0.95 for p95)",
            self.percentile,
        )
        _require(
            _finite(self.min_delay) and self.min_delay >= 0,
            "min_delay",
            "seconds >= 0",
            self.min_delay,
        )
        _require(
            _finite(self.max_delay) and self.max_delay >= self.min_delay,
            "max_delay",
            f"seconds >= min_delay ({self.min_delay})",
            self.max_delay,
        )
        _require(
            _int(self.min_samples) and self.min_samples >= 1,
            "min_samples",
            "an integer >= 1",
            self.min_samples,
        )
        _require(_int(self.window) and self.window >= 1, "window", "an integer >= 1", self.window)
        _require(
            _int(self.max_hedged) and self.max_hedged >= 0,
            "max_hedged",
            "an integer >= 0",
            self.max_hedged,
        )
        _require(
            isinstance(self.budget, RetryBudgetConfig),
            "budget",
            "a RetryBudgetConfig",
            self.budget,
        )


class LatencyWindow:
    """The percentile ``q`` of the last ``size`` values added (nearest rank), O(1) amortized.

    :meth:`value` is ``None`` until ``min_samples`` values have been added.
    """

    __slots__ = ("_buf", "_cached", "_every", "_i", "_min", "_n", "_q", "_stale")

    def __init__(self, size: int = 256, q: float = 0.95, *, min_samples: int = 1) -> None:
        if size < 1 or not 0 < q < 1 or min_samples < 1:
            raise ValueError(
                f"LatencyWindow: need size >= 1, 0 < q < 1 and min_samples >= 1, "
                f"got {size}, {q}, {min_samples}"
            )
        self._buf = [0.0] * size
        self._q = q
        self._min = min_samples
        self._i = 0
        self._n = 0
        self._every = max(1, size // 4)
        self._stale = 0
        self._cached: float | None = None

    def add(self, value: float) -> None:
        """Add one value (the oldest drops out once the window is full)."""
        i = self._i
        self._buf[i] = value
        self._i = i + 1 if i + 1 < len(self._buf) else 0
        if self._n < len(self._buf):
            self._n += 1
        self._stale += 1

    def __len__(self) -> int:
        return self._n

    def value(self) -> float | None:
        """The percentile of the window, ``None`` until ``min_samples`` values are known.

        Recomputed only after ``size / 4`` new values, so it may lag the newest few.
        """
        if self._cached is None or self._stale >= self._every:
            if self._n < self._min:
                return None
            ordered = sorted(self._buf[: self._n])
            self._cached = ordered[max(0, math.ceil(self._q * self._n) - 1)]
            self._stale = 0
        return self._cached


class Hedger:
    """The hedging decision of one edge (see the module docstring).

    Per call: :meth:`record_request` once; wait :meth:`delay`; if no answer yet, send a hedge
    when :meth:`should_hedge` says so (repeat up to ``max_hedged``); feed every attempt that
    completes to :meth:`record_latency`, timed from that attempt's own start.
    """

    __slots__ = ("_latencies", "budget", "config", "hedges")

    def __init__(
        self,
        config: HedgeConfig | None = None,
        *,
        budget: RetryBudget | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config = config or HedgeConfig()
        self.budget = budget or RetryBudget(config.budget, clock=clock)
        """The budget hedges are paid from (the config's unless one is given)."""
        self._latencies = LatencyWindow(
            config.window, config.percentile, min_samples=config.min_samples
        )
        self.hedges = 0
        """Hedges granted so far (a metric)."""

    def record_request(self) -> None:
        """Count one call (it earns ``budget.ratio`` of a hedge)."""
        self.budget.record_request()

    def delay(self) -> float:
        """Seconds to wait for an answer before sending a hedge."""
        p = self.config
        if p.delay is not None:
            return p.delay
        q = self._latencies.value()
        if q is None:
            return p.max_delay
        return min(p.max_delay, max(p.min_delay, q))

    def should_hedge(self, sent: int, *, remaining: float | None = None) -> bool:
        """Whether to send a hedge now, ``sent`` hedges having been sent for this call already.

        ``False`` past ``max_hedged``, when the deadline (``remaining`` seconds) is spent, or
        when the budget refuses; a ``True`` has taken the hedge from the budget.
        """
        if sent >= self.config.max_hedged or (remaining is not None and remaining <= 0):
            return False
        if not self.budget.try_withdraw():
            return False
        self.hedges += 1
        return True

    def record_latency(self, seconds: float) -> None:
        """Feed the latency of one completed attempt (a cancelled one is not fed)."""
        self._latencies.add(seconds)


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _require(ok: bool, field: str, expected: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"expected {expected}, got {value!r}", key=field)
