"""The pipeline for plain ``def`` functions: the same policies, the same cores, no event loop.

Theory of operation
-------------------
``@resilient(...)`` looks at the function once, when it decorates it: a coroutine function gets
the async :class:`~garrison.resilience.Pipeline`, a plain function gets a :class:`SyncPipeline`
and a plain wrapper (no per-call detection, no event loop, no thread hop). The order of the
policies is the async pipeline's::

    fallback           a sync callable, called with what is left
      retry + budget   waits with time.sleep (injectable) between attempts
        rate limit     the local token bucket
        throttle       the SRE client-side formula
        breaker        with permits: a half-open probe's outcome is counted exactly once
        bulkhead       slots, and a bounded queue in which threads wait (see below)
        limiter        the adaptive concurrency limit, criticality first
          the call

Admission, the reports and the hand-back of what an attempt holds are the very methods the
async pipeline runs (:class:`~garrison.resilience._pipeline._PipelineBase`): the two paths
cannot drift apart in what they decide.

What a sync pipeline refuses, at construction (hence at decoration), with a ``ConfigError``
naming the field:

* ``timeout``: nothing can interrupt a running Python function from outside, so a per-attempt
  timeout would be a promise not kept. Make the function async instead, running the blocking
  part in a thread (``await asyncio.to_thread(fn)``) under the async pipeline: the caller stops
  waiting at the timeout (the thread still runs to its end). The caller's *deadline* still
  counts: expired work is never started, retries never sleep past it, a queued call never waits
  past it, and :meth:`SyncPipeline.execute` hands the time left to the attempt (a sync HTTP
  client enforces it itself).
* ``hedge``: racing attempts needs concurrency the caller's thread does not have.
* ``rate_limit.shared``: the Redis bucket is asyncio code; a sync rate limit is local.

Bulkhead: the same :class:`~garrison.resilience.Bulkhead` core as the async side, with
:class:`threading.Event` waiters instead of futures. A thread that finds every slot taken queues
(up to ``max_queue``, higher criticality first, displacing a lower one from a full queue) and
blocks at most ``queue_timeout`` (or its deadline) for a slot handed straight to it; with the
default ``max_queue = 0`` it is refused at once, never blocking. So a sync bulkhead is neither a
plain non-queueing counter nor a bare ``BoundedSemaphore``: it is exactly the async bulkhead's
semantics, which the same configuration means on both sides.

Threads: the cores are not thread-safe, so every touch of them happens under one
:class:`threading.RLock` per pipeline — admission before the call, the report after it, the
retry decision — and never around the user's function, the retry sleep or a bulkhead wait, so
threads run the protected calls in parallel. Reentrant because a bulkhead release inside a
report wakes a waiter under the same lock, and so that a listener calling back into the pipeline
cannot deadlock it. The lock costs two uncontended acquire/release pairs per successful call.
"""

from __future__ import annotations

import math
import threading
import time
import types
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from garrison.core import Clock, ConfigError, DeadlineExceeded, SystemClock, current_deadline

from ._base import Criticality, Rejected
from ._bulkhead import Bulkhead, BulkheadConfig, Ticket, TicketState
from ._limiter import Token
from ._pipeline import _OK, Classify, PolicyConfig, _PipelineBase

__all__ = ["SyncBulkhead", "SyncPipeline", "check_sync_config"]

T = TypeVar("T")

SyncAttempt = Callable[[float | None], T]
"""One sync attempt: called with the caller's time left in seconds (or None)."""

_WAITING = TicketState.WAITING
_GRANTED = TicketState.GRANTED


def check_sync_config(cfg: PolicyConfig) -> None:
    """Raise :class:`ConfigError` for what a sync pipeline cannot do (see the module doc)."""
    if cfg.timeout is not None:
        raise ConfigError(
            "a per-attempt timeout cannot interrupt a synchronous function (nothing can stop "
            "running Python code from outside), so it is refused rather than not kept. Drop "
            "timeout, or make the function async and run the blocking part in a thread under "
            "the async pipeline: @resilient(timeout=...) async def f(): return await "
            "asyncio.to_thread(g) (the caller stops waiting at the timeout; the thread runs on)",
            key="timeout",
        )
    if cfg.hedge is not None:
        raise ConfigError(
            "hedging races attempts concurrently, which a synchronous call cannot do; use "
            "retry, or an async function",
            key="hedge",
        )
    if cfg.rate_limit is not None and cfg.rate_limit.shared is not None:
        raise ConfigError(
            "a rate limit shared through Redis needs the async pipeline (its client is "
            "asyncio); a sync function can have a local one (leave shared out)",
            key="rate_limit.shared",
        )


class SyncBulkhead:
    """A bulkhead threads wait on: the :class:`Bulkhead` core with :class:`threading.Event`
    waiters, guarded by ``lock`` (the pipeline's).

    Rejections raise :class:`Rejected` (``policy="bulkhead"``, ``full`` or ``queue timeout``),
    as :class:`~garrison.resilience.AsyncBulkhead` does. A waiter interrupted while waiting
    (``KeyboardInterrupt``) never leaks a slot.
    """

    __slots__ = ("_clock", "_core", "_lock")

    def __init__(
        self,
        config: BulkheadConfig | None = None,
        *,
        name: str = "bulkhead",
        clock: Clock | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._core: Bulkhead[threading.Event] = Bulkhead(config, name=name, clock=self._clock)
        self._lock = lock if lock is not None else threading.RLock()

    @property
    def core(self) -> Bulkhead[threading.Event]:
        """The sans-I/O core (for metrics and tests)."""
        return self._core

    def acquire(
        self, criticality: Criticality = Criticality.DEFAULT, timeout: float | None = None
    ) -> None:
        """Take a slot, waiting in the queue at most ``timeout`` seconds (default the queue
        timeout); raise :class:`Rejected` when refused."""
        core = self._core
        with self._lock:
            if core.try_acquire():
                return
            event = threading.Event()
            ticket, changed = core.enqueue(event, criticality, timeout)
            _wake(changed)
            if ticket.state is not _WAITING:
                return  # a slot came free before queueing
            left = ticket.deadline - self._clock.monotonic()
        try:
            event.wait(None if left == math.inf else max(left, 0.0))
        except BaseException:
            # Interrupted while waiting: withdraw, or pass on a slot already handed over.
            with self._lock:
                if not core.cancel(ticket) and ticket.state is _GRANTED:
                    self.release()
            raise
        with self._lock:
            if ticket.state is _WAITING:  # the wait timed out with no decision made
                core.cancel(ticket, timed_out=True)
            state = ticket.state
        if state is _GRANTED:
            return
        if state is TicketState.TIMED_OUT:
            raise Rejected("bulkhead", "queue timeout")
        raise Rejected("bulkhead", "full")

    def release(self) -> None:
        """Give back a slot; the best waiter (if any) is handed it and woken."""
        with self._lock:
            _wake(self._core.release())


class _AsyncGiven(TypeError):
    """An async function was given to a :class:`SyncPipeline`."""


_COROUTINE = types.CoroutineType


def _name(fn: object) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))


def _wake(tickets: Sequence[Ticket[threading.Event]]) -> None:
    for ticket in tickets:
        ticket.waiter.set()


class SyncPipeline(_PipelineBase):
    """Every policy of one edge around synchronous calls; safe to share between threads.

    ``@resilient`` builds one around a plain ``def`` function; build one directly to protect
    any sync callable with :meth:`call`, or an attempt that enforces a time limit itself with
    :meth:`execute`. ``sleep`` waits between retries (``time.sleep``; a test passes one that
    advances its fake clock). ``fallback`` is a sync callable given the final exception.
    """

    bulkhead: SyncBulkhead | None

    def __init__(
        self,
        config: PolicyConfig | None = None,
        *,
        name: str = "pipeline",
        version: int = 1,
        clock: Clock | None = None,
        fallback: Callable[[BaseException], Any] | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        cfg = config or PolicyConfig()
        check_sync_config(cfg)
        super().__init__(cfg, name=name, version=version, clock=clock)
        self.fallback = fallback
        """Called with the final exception; fixed at construction."""
        self._sleep = sleep or time.sleep
        self._lock = threading.RLock()
        self.bulkhead = (
            SyncBulkhead(cfg.bulkhead, name=name, clock=self._clock, lock=self._lock)
            if cfg.bulkhead
            else None
        )

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` through the pipeline.

        ``fn`` must be synchronous: one that returns a coroutine raises :class:`TypeError`
        (the coroutine is closed, never run, and the attempt reported as nothing at all;
        use :class:`~garrison.resilience.Pipeline` for async functions).
        """
        return self._call(fn, args, kwargs)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
        # What call() and the @resilient wrapper run: no closure per call.
        if self.fallback is None:
            return self._run(fn, args, kwargs)
        try:
            return self._run(fn, args, kwargs)
        except Exception as exc:  # the fallback's job is precisely to catch what is left
            if isinstance(exc, _AsyncGiven):
                raise  # a bug to show, not a failure to hide
            result: T = self.fallback(exc)
            return result

    def execute(
        self,
        attempt: SyncAttempt[T],
        *,
        criticality: Criticality = Criticality.DEFAULT,
        may_retry: bool = True,
        classify: Classify | None = None,
    ) -> T:
        """Run ``attempt`` through every policy; retried attempts call it again.

        ``attempt(left)`` gets the caller's time left in seconds (``None`` without a deadline),
        for an attempt that can enforce it itself. ``classify``, ``criticality`` and
        ``may_retry`` are as for :meth:`Pipeline.execute <garrison.resilience.Pipeline.execute>`.
        """
        try:
            return self._run(attempt, None, None, criticality, may_retry, classify)
        except Exception as exc:  # the fallback's job is precisely to catch what is left
            if self.fallback is None or isinstance(exc, _AsyncGiven):
                raise
            result: T = self.fallback(exc)
            return result

    def _run(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...] | None,
        kwargs: dict[str, Any] | None,
        criticality: Criticality = Criticality.DEFAULT,
        may_retry: bool = True,
        classify: Classify | None = None,
    ) -> T:
        # Each attempt runs fn(*args, **kwargs), or fn(time left) when args is None (execute).
        # The async _run's loop, with every touch of the cores under the lock and the call,
        # the retry sleep and a bulkhead wait outside it.
        lock = self._lock
        retrier = self.retrier
        bulkhead = self.bulkhead
        limiter = self.limiter
        now = self._now
        n = 0
        while True:
            n += 1
            deadline = current_deadline()
            left = None if deadline is None else deadline.remaining()
            token: Token | None = None
            with lock:
                if n == 1:
                    self.calls += 1
                    if self.budget is not None:
                        self.budget.record_request()
                permit = self._admit(criticality, left)
                in_bulkhead = queued = False
                if bulkhead is not None:
                    in_bulkhead = bulkhead.core.try_acquire()
                    queued = not in_bulkhead
                if not queued:
                    if limiter is not None:
                        token = limiter.try_acquire(criticality, left)
                        if token is None:
                            self._limiter_refused(permit, in_bulkhead)
                    self.attempts += 1
            if queued:  # every slot taken: wait for one (or be refused) outside the lock
                in_bulkhead = self._wait_bulkhead(criticality, permit, left)
                with lock:
                    if deadline is not None:  # the wait took some of the caller's time
                        left = self._left_after_wait(deadline, permit, in_bulkhead)
                    if limiter is not None:
                        token = self._acquire_limiter(criticality, left, permit, in_bulkhead)
                    self.attempts += 1
            start = now()
            try:
                result = fn(left) if args is None else fn(*args, **kwargs)  # type: ignore[arg-type]
            except BaseException as exc:
                duration = now() - start
                with lock:
                    self._report(exc, None, duration, permit, in_bulkhead, token)
                    if not isinstance(exc, Exception):  # Ctrl-C, SystemExit: not a failure
                        raise
                    if retrier is None:
                        self.failures += 1
                        raise
                    deadline = current_deadline()
                    d = retrier.decide(
                        n,
                        error=exc,
                        remaining=None if deadline is None else deadline.remaining(),
                        may_retry=may_retry,
                    )
                    if not d.retry:
                        self.failures += 1
                        raise
                self._sleep(d.delay)
                continue
            # -- the success path --
            if type(result) is _COROUTINE:
                with lock:
                    self._abandon(permit, in_bulkhead, token)
                result.close()  # type: ignore[attr-defined]  # never run, never awaited
                raise _AsyncGiven(
                    f"SyncPipeline needs a sync function; {_name(fn)} returned a coroutine "
                    "(use @resilient on the async function, or Pipeline.call)"
                )
            if classify is None:
                outcome = _OK
            else:
                try:
                    outcome = classify(result)
                except BaseException:  # a broken classify must not leak the slot or permit
                    with lock:
                        self._abandon(permit, in_bulkhead, token)
                    raise
            duration = now() - start
            status = outcome.status
            if status is None or status < 429:
                with lock:
                    self._succeed(duration, permit, in_bulkhead, token)
                return result
            with lock:
                self._report(None, status, duration, permit, in_bulkhead, token)
                if retrier is None:
                    return result
                deadline = current_deadline()
                d = retrier.decide(
                    n,
                    status=status,
                    retry_after=outcome.retry_after,
                    no_retry=outcome.no_retry,
                    remaining=None if deadline is None else deadline.remaining(),
                    may_retry=may_retry,
                )
                if not d.retry:
                    return result
            self._sleep(d.delay)

    def _wait_bulkhead(
        self, criticality: Criticality, permit: int | None, left: float | None
    ) -> bool:
        """Every slot is taken: queue (or be refused); True once a slot is held. Called
        without the lock; never waits past the caller's deadline (``left`` seconds)."""
        bulkhead = self.bulkhead
        assert bulkhead is not None
        if "bulkhead" in self.shadow:
            # Shadow mode never makes a call wait: it would have queued or been refused.
            with self._lock:
                self._refuse("bulkhead", Rejected("bulkhead", "full"))
            return False
        wait: float | None = None
        if left is not None and left < bulkhead.core.config.queue_timeout:
            wait = left
        try:
            bulkhead.acquire(criticality, wait)
        except Rejected as rej:
            with self._lock:
                self._abandon(permit, False, None)
                if wait is not None and rej.reason == "queue timeout":
                    raise DeadlineExceeded(
                        f"{self.name}: deadline spent waiting for the bulkhead"
                    ) from None
                self._refuse("bulkhead", rej)
            raise  # not reached: a shadowed bulkhead never waits
        except BaseException:
            with self._lock:
                self._abandon(permit, False, None)
            raise
        return True

    def snapshot(self) -> dict[str, Any]:
        """The state of every policy (taken under the lock: one consistent view)."""
        with self._lock:
            return super().snapshot()
