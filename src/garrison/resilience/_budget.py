"""Retry budget: retries limited to a fraction of recent traffic, with a floor.

Theory of operation
-------------------
As in Finagle's ``RetryBudget`` and Envoy's retry budgets, retries are a *share* of the traffic
rather than a per-call count: when a callee fails wholesale, every caller's retries stop at
``ratio`` x its own request rate instead of multiplying the load by ``max_attempts``.

Time is cut into ``buckets`` buckets of ``window / buckets`` seconds each, kept in two ring
arrays (requests, retries) with running totals. Touching the budget first advances the ring to
the current bucket, zeroing the buckets that fell out of the window (at most ``buckets`` of them,
so the work is O(1) amortized and bounded), then counts. The window is therefore the current
bucket plus the ``buckets - 1`` before it: between ``window - window / buckets`` and ``window``
seconds long.

A withdrawal is granted when, counting it, the retries in the window stay within
``max(ratio x requests in the window, min_retries_per_second x window)``. The floor lets a
quiet caller still retry now and then. Only original requests are recorded
(:meth:`RetryBudget.record_request`); retries are not requests, so they do not earn budget.
"""

from __future__ import annotations

import math
import time

import msgspec

from garrison.core import Clock, ConfigError, SystemClock

__all__ = ["RetryBudget", "RetryBudgetConfig"]


class RetryBudgetConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration of a :class:`RetryBudget`. Defaults are Finagle's."""

    ratio: float = 0.2
    """Retries allowed per original request in the window (0.2: at most 20% extra load)."""
    min_retries_per_second: float = 10.0
    """Floor: this many retries per second of window are always allowed, whatever the traffic."""
    window: float = 10.0
    """Length of the sliding window, in seconds."""
    buckets: int = 10
    """How many buckets the window is cut into; more buckets slide more smoothly."""

    def __post_init__(self) -> None:
        _require(_finite(self.ratio) and self.ratio >= 0, "ratio", "a number >= 0", self.ratio)
        _require(
            _finite(self.min_retries_per_second) and self.min_retries_per_second >= 0,
            "min_retries_per_second",
            "a number >= 0",
            self.min_retries_per_second,
        )
        _require(_finite(self.window) and self.window > 0, "window", "seconds > 0", self.window)
        _require(
            isinstance(self.buckets, int)
            and not isinstance(self.buckets, bool)
            and 1 <= self.buckets <= 1000,
            "buckets",
            "an integer from 1 to 1000",
            self.buckets,
        )


class RetryBudget:
    """A sliding-window retry budget (see the module docstring).

    Call :meth:`record_request` once per original request and :meth:`try_withdraw` before each
    retry (or hedge); a ``False`` means the retry must not be sent.
    """

    __slots__ = (
        "_end",
        "_floor",
        "_head",
        "_inv_width",
        "_now",
        "_pos",
        "_ratio",
        "_requests",
        "_retries",
        "_total_requests",
        "_total_retries",
        "config",
    )

    def __init__(self, config: RetryBudgetConfig | None = None, *, clock: Clock | None = None):
        self.config = config = config or RetryBudgetConfig()
        clock = clock or SystemClock()
        # SystemClock.monotonic is time.monotonic; calling it directly saves a Python frame.
        self._now = time.monotonic if type(clock) is SystemClock else clock.monotonic
        self._ratio = config.ratio
        self._floor = config.min_retries_per_second * config.window
        self._inv_width = config.buckets / config.window
        self._requests = [0] * config.buckets
        self._retries = [0] * config.buckets
        self._total_requests = 0
        self._total_retries = 0
        self._pos = 0  # ring index of the current bucket
        self._head = math.floor(
            self._now() * self._inv_width
        )  # absolute number of the current bucket
        self._end = self._bucket_start(self._head + 1)  # first instant of the next bucket

    def record_request(self) -> None:
        """Count one original request (it earns ``ratio`` of a retry)."""
        now = self._now()
        if now >= self._end:
            self._advance(now)
        self._requests[self._pos] += 1
        self._total_requests += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget; ``False`` (and nothing taken) if it is exhausted."""
        now = self._now()
        if now >= self._end:
            self._advance(now)
        if self._total_retries + 1 > max(self._ratio * self._total_requests, self._floor):
            return False
        self._retries[self._pos] += 1
        self._total_retries += 1
        return True

    def can_withdraw(self) -> bool:
        """Whether :meth:`try_withdraw` would succeed now, without taking anything."""
        self._sync()
        return self._total_retries + 1 <= max(self._ratio * self._total_requests, self._floor)

    @property
    def requests(self) -> int:
        """Original requests counted in the window now."""
        self._sync()
        return self._total_requests

    @property
    def retries(self) -> int:
        """Retries granted in the window now."""
        self._sync()
        return self._total_retries

    def _sync(self) -> None:
        now = self._now()
        if now >= self._end:
            self._advance(now)

    def _bucket_start(self, k: int) -> float:
        # The least float t with floor(t * inv_width) >= k, so that the fast path's `now >= end`
        # agrees exactly with the bucket number floor(now * inv_width), rounding included. k / inv
        # is within an ulp or two of it, so each loop runs a step or two at most.
        inv = self._inv_width
        t = k / inv
        while math.floor(math.nextafter(t, -math.inf) * inv) >= k:
            t = math.nextafter(t, -math.inf)
        while math.floor(t * inv) < k:
            t = math.nextafter(t, math.inf)
        return t

    def _advance(self, now: float) -> None:
        # Only ever called with now >= _end, so the bucket number has moved forward (a clock
        # that goes backwards never gets here: it keeps counting in the current bucket).
        k = math.floor(now * self._inv_width)
        steps = k - self._head
        n = len(self._requests)
        self._head = k
        self._end = self._bucket_start(k + 1)
        if steps >= n:
            self._requests[:] = [0] * n
            self._retries[:] = [0] * n
            self._total_requests = self._total_retries = 0
            return
        req, ret, pos = self._requests, self._retries, self._pos
        for _ in range(steps):
            pos = pos + 1 if pos + 1 < n else 0
            self._total_requests -= req[pos]
            self._total_retries -= ret[pos]
            req[pos] = ret[pos] = 0
        self._pos = pos


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _require(ok: bool, field: str, expected: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"expected {expected}, got {value!r}", key=field)
