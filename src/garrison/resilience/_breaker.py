"""Circuit breaker: stop calling a callee that fails or is slow, probe it, resume when it heals.

Theory of operation
-------------------
The breaker is a sans-I/O state machine. The caller asks before each call (``try_acquire`` or
``acquire``) and reports exactly one outcome per admitted call afterwards (``on_success``,
``on_failure`` with the call's duration, or ``on_ignored`` for a call that says nothing about the
callee's health, e.g. a cancellation or a 4xx). Time comes from an injected clock; nothing here
sleeps or schedules, so every transition is checked lazily when the breaker is next used.

    CLOSED ──rates over threshold──▶ OPEN ──wait elapsed──▶ HALF_OPEN ──probes pass──▶ CLOSED
                                      ▲                         │
                                      └─probes fail or time out─┘

* CLOSED admits every call and records outcomes in a sliding window: the last N calls (a ring
  buffer) or the last N seconds (one-second buckets). Each keeps running totals, so recording
  is O(1). Once the window holds ``minimum_number_of_calls``, a failure rate or slow-call rate
  at or over its threshold opens the breaker.
* OPEN rejects every call for ``wait_duration_in_open``, multiplied by
  ``wait_duration_multiplier`` for each consecutive re-open (capped), then lets probes through.
* HALF_OPEN admits at most ``permitted_calls_in_half_open`` probes, never more in flight at
  once; ``on_ignored`` hands a probe's permit back. The probes' rates decide: over threshold,
  OPEN again (for longer); under, CLOSED with an empty window. The decision is taken as soon as
  the remaining probes can no longer change it.
* Operators can pin the breaker: ``force_open()`` rejects everything, ``disable()`` admits
  everything and records nothing, ``reset()`` returns to a fresh CLOSED state.

Every transition increments a generation number; ``acquire()`` returns it as a permit. Outcomes
reported with a permit from an earlier generation never count as half-open probes, so a call
admitted before the breaker opened cannot free or decide a probe slot. Outcomes reported
without a permit are attributed to the current state.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import msgspec

from garrison.core import Clock, ConfigError, SystemClock
from garrison.resilience._base import Listener, PolicyEvent, Rejected, emit

__all__ = ["BreakerConfig", "BreakerMetrics", "BreakerState", "CircuitBreaker"]

_MAX_WINDOW = 1_000_000


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of a :class:`CircuitBreaker`; defaults follow resilience4j.

    Rates are fractions in ``(0, 1]`` and durations are seconds. Construction validates every
    field and raises :class:`~garrison.core.ConfigError` naming the first bad one.
    """

    failure_rate_threshold: float = 0.5
    """Open when at least this fraction of the calls in the window failed."""
    slow_call_rate_threshold: float = 1.0
    """Open when at least this fraction of the calls in the window were slow."""
    slow_call_duration: float = 60.0
    """A call that took at least this long is slow (whether it succeeded or failed)."""
    sliding_window_type: Literal["count", "time"] = "count"
    """``count``: the window is the last ``sliding_window_size`` calls; ``time``: the calls of
    the last ``sliding_window_size`` seconds, in one-second buckets."""
    sliding_window_size: int = 100
    """Calls (count window) or seconds (time window) in the window."""
    minimum_number_of_calls: int = 100
    """Rates are not acted on until the window holds this many calls (for a count window at
    most ``sliding_window_size`` are required)."""
    wait_duration_in_open: float = 60.0
    """How long the breaker stays open before letting probes through."""
    wait_duration_multiplier: float = 1.0
    """Factor applied to the open wait for each consecutive re-open after failed probes
    (1.0: constant wait; 2.0: exponential backoff)."""
    max_wait_duration_in_open: float = 300.0
    """Cap of the grown open wait; it never shortens ``wait_duration_in_open``."""
    permitted_calls_in_half_open: int = 10
    """Probe calls admitted in half-open; their outcome closes or re-opens the breaker."""
    max_wait_duration_in_half_open: float = 0.0
    """Re-open when probing has not concluded after this long; 0 waits for every probe."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~garrison.core.ConfigError` naming the first invalid field."""
        _number(self, "failure_rate_threshold", low=0.0, high=1.0, low_open=True)
        _number(self, "slow_call_rate_threshold", low=0.0, high=1.0, low_open=True)
        _number(self, "slow_call_duration", low=0.0, low_open=True)
        if self.sliding_window_type not in ("count", "time"):
            raise ConfigError(
                f"expected 'count' or 'time', got {self.sliding_window_type!r}",
                key="sliding_window_type",
            )
        _integer(self, "sliding_window_size", low=1, high=_MAX_WINDOW)
        _integer(self, "minimum_number_of_calls", low=1)
        _number(self, "wait_duration_in_open", low=0.0, low_open=True)
        _number(self, "wait_duration_multiplier", low=1.0)
        _number(self, "max_wait_duration_in_open", low=0.0, low_open=True)
        _integer(self, "permitted_calls_in_half_open", low=1, high=_MAX_WINDOW)
        _number(self, "max_wait_duration_in_half_open", low=0.0)


def _number(
    cfg: object,
    field: str,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
) -> None:
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"expected a finite number, got {value!r}", key=field)
    if (value <= low if low_open else value < low) or value > high:
        lo = f"> {low:g}" if low_open else f">= {low:g}"
        hi = f" and <= {high:g}" if high != math.inf else ""
        raise ConfigError(f"expected a number {lo}{hi}, got {value!r}", key=field)


def _integer(cfg: object, field: str, *, low: int, high: int | None = None) -> None:
    value = getattr(cfg, field)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"expected an integer, got {value!r}", key=field)
    if value < low or (high is not None and value > high):
        hi = f" and <= {high}" if high is not None else ""
        raise ConfigError(f"expected an integer >= {low}{hi}, got {value!r}", key=field)


class BreakerState(enum.Enum):
    """The states of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    """Calls flow; outcomes are recorded in the sliding window."""
    OPEN = "open"
    """Calls are rejected until the open wait has elapsed."""
    HALF_OPEN = "half_open"
    """A bounded number of probe calls decide whether to close or re-open."""
    FORCED_OPEN = "forced_open"
    """An operator holds the breaker open: every call is rejected."""
    DISABLED = "disabled"
    """An operator switched the breaker off: every call is admitted, nothing is recorded."""


class _Trigger(enum.Enum):
    THRESHOLD_EXCEEDED = "threshold_exceeded"
    WAIT_ELAPSED = "wait_elapsed"
    PROBES_PASSED = "probes_passed"
    PROBES_FAILED = "probes_failed"
    PROBE_TIMEOUT = "probe_timeout"
    FORCE_OPEN = "force_open"
    DISABLE = "disable"
    RESET = "reset"


_S, _T = BreakerState, _Trigger
CLOSED, OPEN, HALF_OPEN = _S.CLOSED, _S.OPEN, _S.HALF_OPEN
FORCED_OPEN, DISABLED = _S.FORCED_OPEN, _S.DISABLED

_TRANSITIONS: dict[tuple[BreakerState, _Trigger], BreakerState] = {
    (CLOSED, _T.THRESHOLD_EXCEEDED): OPEN,
    (OPEN, _T.WAIT_ELAPSED): HALF_OPEN,
    (HALF_OPEN, _T.PROBES_PASSED): CLOSED,
    (HALF_OPEN, _T.PROBES_FAILED): OPEN,
    (HALF_OPEN, _T.PROBE_TIMEOUT): OPEN,
    # Operators may move the breaker from any state.
    **{(s, _T.FORCE_OPEN): FORCED_OPEN for s in _S},
    **{(s, _T.DISABLE): DISABLED for s in _S},
    **{(s, _T.RESET): CLOSED for s in _S},
}

# Outcome codes stored in the windows: bit 0 = failed, bit 1 = slow.
_FAILED = 1
_SLOW = 2


class _CountWindow:
    """The last ``size`` outcomes in a ring buffer, with running totals."""

    __slots__ = ("_min", "_pos", "_ring", "calls", "failures", "size", "slow")

    def __init__(self, size: int, min_calls: int) -> None:
        self.size = size
        self._min = min_calls
        self._ring = [0] * size
        self._pos = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def record(self, code: int) -> bool:
        """Add an outcome; ``True`` if a fast success may have raised a rate (it reached the
        minimum number of calls)."""
        pos = self._pos
        reached = False
        if self.calls == self.size:
            old = self._ring[pos]
            if old:
                self.failures -= old & _FAILED
                self.slow -= old >> 1
        else:
            self.calls += 1
            reached = self.calls == self._min
        self._ring[pos] = code
        if code:
            self.failures += code & _FAILED
            self.slow += code >> 1
        pos += 1
        self._pos = 0 if pos == self.size else pos
        return reached

    def refresh(self) -> None:
        """Nothing expires by time in a count window."""

    def clear(self) -> None:
        self._ring = [0] * self.size
        self._pos = self.calls = self.failures = self.slow = 0


class _TimeWindow:
    """The outcomes of the last ``size`` whole seconds, with running totals.

    Only seconds that saw a call get a bucket, kept oldest first in a ring of ``size`` slots
    (there can be no more non-empty seconds in the window). A bucket is pushed once and evicted
    once, so recording is O(1) amortized however sparse or dense the calls are; calls within the
    second of the newest bucket take a shortcut with no eviction at all.
    """

    __slots__ = (
        "_b_calls",
        "_b_fail",
        "_b_sec",
        "_b_slow",
        "_cur_sec",
        "_head",
        "_len",
        "_min",
        "_now",
        "_tail",
        "calls",
        "failures",
        "size",
        "slow",
    )

    def __init__(self, size: int, min_calls: int, clock: Clock) -> None:
        self.size = size
        self._min = min_calls
        self._now = clock.monotonic
        self._b_sec: list[int] = []
        self._b_calls: list[int] = []
        self._b_fail: list[int] = []
        self._b_slow: list[int] = []
        self._cur_sec: int | None = None
        self._head = self._tail = self._len = 0
        self.calls = self.failures = self.slow = 0
        self.clear()

    def record(self, code: int) -> bool:
        """Add an outcome; ``True`` if a fast success may have raised a rate (buckets may have
        left the window, or it reached the minimum number of calls)."""
        sec = int(self._now() // 1.0)
        if sec == self._cur_sec:  # same second as the newest bucket: nothing can expire
            tail = self._tail
            self._b_calls[tail] += 1
            self.calls += 1
            if code:
                self._b_fail[tail] += code & _FAILED
                self._b_slow[tail] += code >> 1
                self.failures += code & _FAILED
                self.slow += code >> 1
            return self.calls == self._min
        self._evict(sec)
        n = self._len
        tail = self._tail
        if not (n and self._b_sec[tail] == sec):
            tail = (self._head + n) % self.size
            self._b_sec[tail] = sec
            self._b_calls[tail] = self._b_fail[tail] = self._b_slow[tail] = 0
            self._tail = tail
            self._len = n + 1
        self._cur_sec = sec
        self._b_calls[tail] += 1
        self._b_fail[tail] += code & _FAILED
        self._b_slow[tail] += code >> 1
        self.calls += 1
        self.failures += code & _FAILED
        self.slow += code >> 1
        return True

    def _evict(self, sec: int) -> None:
        horizon = sec - self.size  # buckets at or before this second have left the window
        head, n = self._head, self._len
        while n and self._b_sec[head] <= horizon:
            self.calls -= self._b_calls[head]
            self.failures -= self._b_fail[head]
            self.slow -= self._b_slow[head]
            head = head + 1 if head + 1 < self.size else 0
            n -= 1
        self._head, self._len = head, n

    def refresh(self) -> None:
        """Drop the buckets that have left the window by now.

        The next record needs no re-check for this: eviction depends only on the second, so a
        record in the newest bucket's second finds nothing more to evict, and one in a later
        second takes the checked path.
        """
        if self._len:
            self._evict(int(self._now() // 1.0))

    def clear(self) -> None:
        size = self.size
        self._b_sec = [0] * size
        self._b_calls = [0] * size
        self._b_fail = [0] * size
        self._b_slow = [0] * size
        self._cur_sec = None
        self._head = self._tail = self._len = 0
        self.calls = self.failures = self.slow = 0


@dataclass(frozen=True, slots=True)
class BreakerMetrics:
    """A snapshot of a breaker; in half-open the counts are those of the probes."""

    state: BreakerState
    """The state when the snapshot was taken."""
    failure_rate: float
    """Failed calls / buffered calls (0.0 when nothing is buffered)."""
    slow_call_rate: float
    """Slow calls / buffered calls (0.0 when nothing is buffered)."""
    buffered_calls: int
    """Calls currently in the window."""
    failed_calls: int
    """Failed calls in the window."""
    slow_calls: int
    """Slow calls in the window."""
    not_permitted_calls: int
    """Calls rejected since the breaker was created."""


class CircuitBreaker:
    """A circuit breaker core (sans-I/O): ask before a call, report its outcome after.

    ``name`` identifies the instance in events (usually the edge, ``caller->callee``);
    ``listeners`` receive a :class:`PolicyEvent` of kind ``state_change`` on every transition.
    """

    __slots__ = (
        "_clock",
        "_config",
        "_fail_thr",
        "_gen",
        "_ho_calls",
        "_ho_deadline",
        "_ho_fail",
        "_ho_out",
        "_ho_permits",
        "_ho_slow",
        "_listeners",
        "_min_calls",
        "_not_permitted",
        "_open_until",
        "_reopens",
        "_slow_duration",
        "_slow_thr",
        "_state",
        "_window",
        "name",
    )

    def __init__(
        self,
        config: BreakerConfig | None = None,
        *,
        name: str = "breaker",
        clock: Clock | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        cfg = config if config is not None else BreakerConfig()
        self._config = cfg
        self.name = name
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._listeners: list[Listener] = list(listeners)
        self._window: _CountWindow | _TimeWindow
        if cfg.sliding_window_type == "count":
            self._min_calls = min(cfg.minimum_number_of_calls, cfg.sliding_window_size)
            self._window = _CountWindow(cfg.sliding_window_size, self._min_calls)
        else:
            self._min_calls = cfg.minimum_number_of_calls
            self._window = _TimeWindow(cfg.sliding_window_size, self._min_calls, self._clock)
        self._fail_thr = cfg.failure_rate_threshold
        self._slow_thr = cfg.slow_call_rate_threshold
        self._slow_duration = cfg.slow_call_duration
        self._state = CLOSED
        self._gen = 0
        self._reopens = 0
        self._open_until = 0.0
        self._ho_deadline = math.inf
        self._ho_permits = self._ho_out = self._ho_calls = self._ho_fail = self._ho_slow = 0
        self._not_permitted = 0

    # -- asking ------------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Whether a call may start now; a ``True`` must be followed by exactly one outcome."""
        state = self._state
        if state is CLOSED or state is DISABLED:
            return True
        return self._acquire_slow()

    def acquire(self) -> int:
        """Admit a call and return its permit, or raise :class:`Rejected` (``policy="breaker"``).

        Pass the permit to the outcome method to make half-open accounting exact.
        """
        state = self._state
        if state is CLOSED or state is DISABLED or self._acquire_slow():
            return self._gen
        raise self.rejection()

    def rejection(self) -> Rejected:
        """The :class:`Rejected` that describes why calls are refused now.

        ``retry_after`` is the time left open (``None`` when forced open or when the half-open
        probes are all taken).
        """
        state = self.state
        if state is OPEN:
            left = max(self._open_until - self._clock.monotonic(), 0.0)
            return Rejected("breaker", "open", retry_after=left)
        if state is FORCED_OPEN:
            return Rejected("breaker", "forced open")
        return Rejected("breaker", "half-open probes busy")

    def _acquire_slow(self) -> bool:
        self._poll(self._clock.monotonic())
        state = self._state
        if state is HALF_OPEN and self._ho_permits > 0:
            self._ho_permits -= 1
            self._ho_out += 1
            return True
        self._not_permitted += 1
        return False

    def _poll(self, now: float) -> None:
        """Take the transitions that are due by time alone."""
        if self._state is OPEN:
            if now >= self._open_until:
                self._fire(_T.WAIT_ELAPSED, now)
        elif self._state is HALF_OPEN and now >= self._ho_deadline:
            self._fire(_T.PROBE_TIMEOUT, now)

    # -- reporting ---------------------------------------------------------------------------

    def on_success(self, duration: float, permit: int | None = None) -> None:
        """Report that an admitted call succeeded after ``duration`` seconds."""
        if self._state is CLOSED:
            w = self._window
            if duration < self._slow_duration:
                # A fast success raises no rate unless it completes the minimum number of
                # calls or old buckets left the window: skip the divisions on the hot path.
                if w.record(0):
                    self._check()
            else:
                w.record(_SLOW)
                self._check()
        elif self._state is HALF_OPEN:
            self._probe_done(_SLOW if duration >= self._slow_duration else 0, permit)

    def on_failure(self, duration: float, permit: int | None = None) -> None:
        """Report that an admitted call failed after ``duration`` seconds."""
        code = (_SLOW | _FAILED) if duration >= self._slow_duration else _FAILED
        if self._state is CLOSED:
            self._window.record(code)
            self._check()
        elif self._state is HALF_OPEN:
            self._probe_done(code, permit)

    def on_ignored(self, permit: int | None = None) -> None:
        """Report that an admitted call ended without saying anything about the callee.

        Nothing is recorded; a half-open probe's permit is handed back.
        """
        if (
            self._state is HALF_OPEN
            and (permit is None or permit == self._gen)
            and self._ho_out > 0
        ):
            self._ho_out -= 1
            self._ho_permits += 1

    def _check(self) -> None:
        w = self._window
        calls = w.calls
        if calls >= self._min_calls and (
            w.failures / calls >= self._fail_thr or w.slow / calls >= self._slow_thr
        ):
            self._fire(_T.THRESHOLD_EXCEEDED, self._clock.monotonic())

    def _probe_done(self, code: int, permit: int | None) -> None:
        if permit is not None and permit != self._gen:
            return  # admitted before this half-open episode: not a probe
        if self._ho_out > 0:
            self._ho_out -= 1
        self._ho_calls += 1
        self._ho_fail += code & _FAILED
        self._ho_slow += code >> 1
        n = self._config.permitted_calls_in_half_open
        # Decide as soon as the probes still to come cannot change the verdict.
        if self._ho_fail / n >= self._fail_thr or self._ho_slow / n >= self._slow_thr:
            self._fire(_T.PROBES_FAILED, self._clock.monotonic())
            return
        rest = n - self._ho_calls
        if (self._ho_fail + rest) / n < self._fail_thr and (
            self._ho_slow + rest
        ) / n < self._slow_thr:
            self._fire(_T.PROBES_PASSED, self._clock.monotonic())

    # -- operators ---------------------------------------------------------------------------

    def force_open(self) -> None:
        """Hold the breaker open (every call rejected) until :meth:`reset`."""
        if self._state is not FORCED_OPEN:
            self._fire(_T.FORCE_OPEN, self._clock.monotonic())

    def disable(self) -> None:
        """Switch the breaker off (every call admitted, nothing recorded) until :meth:`reset`."""
        if self._state is not DISABLED:
            self._fire(_T.DISABLE, self._clock.monotonic())

    def reset(self) -> None:
        """Return to CLOSED with an empty window and the open wait back at its base."""
        self._fire(_T.RESET, self._clock.monotonic())

    # -- observing ---------------------------------------------------------------------------

    @property
    def config(self) -> BreakerConfig:
        """The configuration in force."""
        return self._config

    @property
    def state(self) -> BreakerState:
        """The current state (an elapsed open wait moves it to half-open first)."""
        if self._state is OPEN or self._state is HALF_OPEN:
            self._poll(self._clock.monotonic())
        return self._state

    def metrics(self) -> BreakerMetrics:
        """A snapshot of the rates and counts."""
        state = self.state
        if state is HALF_OPEN:
            calls, failed, slow = self._ho_calls, self._ho_fail, self._ho_slow
        else:
            w = self._window
            w.refresh()
            calls, failed, slow = w.calls, w.failures, w.slow
        return BreakerMetrics(
            state=state,
            failure_rate=failed / calls if calls else 0.0,
            slow_call_rate=slow / calls if calls else 0.0,
            buffered_calls=calls,
            failed_calls=failed,
            slow_calls=slow,
            not_permitted_calls=self._not_permitted,
        )

    def add_listener(self, listener: Listener) -> None:
        """Receive a :class:`PolicyEvent` on every state change."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop sending events to ``listener``."""
        self._listeners.remove(listener)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    # -- transitions -------------------------------------------------------------------------

    def _fire(self, trigger: _Trigger, now: float) -> None:
        src = self._state
        dst = _TRANSITIONS[(src, trigger)]
        # Rates that explain the move, read before the entry action clears them.
        if src is HALF_OPEN:
            n = max(self._ho_calls, 1)
            rates = (self._ho_fail / n, self._ho_slow / n)
        else:
            w = self._window
            n = max(w.calls, 1)
            rates = (w.failures / n, w.slow / n)
        _ENTER[dst](self, trigger, now)
        self._state = dst
        self._gen += 1
        if self._listeners:
            data: dict[str, object] = {
                "from": src.value,
                "to": dst.value,
                "trigger": trigger.value,
                "failure_rate": rates[0],
                "slow_call_rate": rates[1],
            }
            if dst is OPEN:
                data["retry_after"] = self._open_until - now
            kind = "state_change" if src is not dst else "reset"
            emit(self._listeners, PolicyEvent("breaker", self.name, kind, now, data))

    def _enter_closed(self, trigger: _Trigger, now: float) -> None:
        self._window.clear()
        self._reopens = 0

    def _enter_open(self, trigger: _Trigger, now: float) -> None:
        cfg = self._config
        self._reopens = self._reopens + 1 if trigger is not _T.THRESHOLD_EXCEEDED else 0
        wait = cfg.wait_duration_in_open
        mult = cfg.wait_duration_multiplier
        if self._reopens and mult > 1.0:
            cap = max(cfg.max_wait_duration_in_open, wait)
            # Compared in logs first so that a long run of re-opens never overflows the power.
            if self._reopens * math.log(mult) >= math.log(cap / wait):
                wait = cap
            else:
                wait = min(wait * mult**self._reopens, cap)
        self._open_until = now + wait

    def _enter_half_open(self, trigger: _Trigger, now: float) -> None:
        cfg = self._config
        self._ho_permits = cfg.permitted_calls_in_half_open
        self._ho_out = self._ho_calls = self._ho_fail = self._ho_slow = 0
        limit = cfg.max_wait_duration_in_half_open
        self._ho_deadline = now + limit if limit > 0 else math.inf

    def _enter_pinned(self, trigger: _Trigger, now: float) -> None:
        pass


_ENTER: dict[BreakerState, Callable[[CircuitBreaker, _Trigger, float], None]] = {
    CLOSED: CircuitBreaker._enter_closed,
    OPEN: CircuitBreaker._enter_open,
    HALF_OPEN: CircuitBreaker._enter_half_open,
    FORCED_OPEN: CircuitBreaker._enter_pinned,
    DISABLED: CircuitBreaker._enter_pinned,
}
