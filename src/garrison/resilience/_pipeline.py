"""The pipeline: every policy of one edge composed into a single call path.

Theory of operation
-------------------
A :class:`Pipeline` is built once from a :class:`PolicyConfig` and shared by every call on its
edge. The order of the policies is fixed and documented (outermost first)::

    fallback                 catches what is left after everything below gave up
      retry + budget         each attempt goes through everything below, again
        (hedging)            instead of waiting out a slow attempt, race a second one
          rate limit         token bucket: refuse beyond the configured rate (local, or
                             shared by the fleet through Redis: the one async admission)
          adaptive throttle  the SRE client-side formula: refuse locally what the callee refuses
          circuit breaker    refuse while the callee is failing; probe it when half-open
          bulkhead           cap the calls in flight, queue a few, time the queue out
          concurrency limit  adaptive (Gradient2/AIMD/Vegas) limit, sheds low criticality first
            attempt timeout  cancel an attempt that outlives its budget
              the call

Why this order: local refusals (rate, throttle, breaker, bulkhead, limiter) happen before
anything is spent and are never reported to the breaker as the callee's failures; the breaker
sits outside the bulkhead so a full bulkhead does not open it; the limiter is innermost so the
latency it learns from is the callee's, not the queue's; retries wrap everything so that each
attempt is admitted afresh (a retry during an open breaker is refused, not sent).

The path is written as one flat coroutine, not as a chain of nested wrappers: each policy costs
a method call on its sans-I/O core, and the whole pipeline adds a few microseconds per call. A
shared rate limit (``rate_limit.shared``) is the one admission that awaits (a Redis round trip,
bounded by ``redis_timeout``); it is a single ``is not None`` test when not configured.
Per-attempt timeouts use the shared :class:`~garrison.core.TimeoutWheel` (about 1 µs) unless the
attempt enforces its budget itself (an HTTP transport does: ``native_timeout``).

The cores, the counters, the events and the synchronous steps (admission, the reports, giving
back what an attempt holds) live in :class:`_PipelineBase`; :class:`Pipeline` adds the async
call path and :class:`~garrison.resilience._sync.SyncPipeline` the synchronous one (for plain
``def`` functions), so both decide with the same code.

Shadow mode: a policy named in ``shadow`` decides as usual but never refuses; the refusals it
would have made are counted (:attr:`Pipeline.shadow_rejections`) and announced as events, so an
operator can try a policy on live traffic before enforcing it. A shadowed bulkhead never makes a
call wait either: a call that finds every slot taken goes ahead at once without a slot and
counts as a refusal the bulkhead would have made (queue or not), so trying a bulkhead out never
adds latency.

Accounting: every admission is undone exactly once. A call refused by an inner policy hands back
what the outer ones granted (bulkhead slot, breaker permit); an attempt's outcome releases its
slot and reports to each core once. A :class:`~garrison.core.RemoteStatusError` is judged by its
status like a returned status: a 4xx is the callee answering, not failing. Errors other than
answers (timeouts, transport errors) are neither accepts nor overload for the throttle.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar

import msgspec

from garrison.core import (
    Clock,
    Deadline,
    DeadlineExceeded,
    RemoteStatusError,
    SystemClock,
    TimeoutWheel,
    current_deadline,
    default_wheel,
)

from ._base import Criticality, Listener, PolicyEvent, Rejected, emit
from ._breaker import BreakerConfig, CircuitBreaker
from ._budget import RetryBudget, RetryBudgetConfig
from ._bulkhead import AsyncBulkhead, Bulkhead, BulkheadConfig
from ._hedge import HedgeConfig, Hedger
from ._limiter import ConcurrencyLimiter, LimiterConfig, Token
from ._outlier import OutlierConfig
from ._ratelimit import RateLimitConfig, SharedRateLimit, TokenBucket
from ._retry import Retrier, RetryPolicy
from ._throttle import AdaptiveThrottle, ThrottleConfig

__all__ = ["Outcome", "Pipeline", "PolicyConfig", "POLICY_NAMES"]

T = TypeVar("T")

POLICY_NAMES = (
    "timeout",
    "retry",
    "retry_budget",
    "hedge",
    "rate_limit",
    "throttle",
    "breaker",
    "bulkhead",
    "limiter",
    "outlier",
)
"""The policies a :class:`PolicyConfig` can hold, in pipeline order (outlier detection acts in
the load balancer, not in the pipeline)."""
_SHADOWABLE = frozenset({"rate_limit", "throttle", "breaker", "bulkhead", "limiter"})


class PolicyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The policies of one edge (or route); absent policies are off."""

    timeout: float | None = None
    """Budget of one attempt, in seconds (the caller's deadline may cut it shorter)."""
    retry: RetryPolicy | None = None
    """Retries with backoff and full jitter."""
    retry_budget: RetryBudgetConfig | None = None
    """Retries as a share of recent requests; with ``retry`` and no budget, a default one."""
    hedge: HedgeConfig | None = None
    """Hedged attempts for slow calls (only for idempotent calls)."""
    rate_limit: RateLimitConfig | None = None
    """A token bucket: local, or shared by every replica through Redis (``shared``)."""
    throttle: ThrottleConfig | None = None
    """Client-side adaptive throttling (Google SRE)."""
    breaker: BreakerConfig | None = None
    """A circuit breaker."""
    bulkhead: BulkheadConfig | None = None
    """A concurrency cap with a bounded queue."""
    limiter: LimiterConfig | None = None
    """An adaptive concurrency limit with criticality-aware shedding."""
    outlier: OutlierConfig | None = None
    """Outlier detection: the balancer ejects failing instances (quarantine)."""
    shadow: tuple[str, ...] = ()
    """Policies that only record what they would have refused."""

    def __post_init__(self) -> None:
        from garrison.core import ConfigError

        if self.timeout is not None and not (math.isfinite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"expected seconds > 0; got {self.timeout!r}", key="timeout")
        for name in self.shadow:
            if name not in _SHADOWABLE:
                raise ConfigError(
                    f"cannot shadow {name!r}; expected one of {sorted(_SHADOWABLE)}",
                    key="shadow",
                )
            if getattr(self, name) is None:
                raise ConfigError(f"shadows {name!r}, which is not configured", key="shadow")
        if self.hedge is not None and self.retry is not None:
            raise ConfigError(
                "hedge and retry cannot be combined on one edge: hedging already sends extra "
                "attempts; choose one",
                key="hedge",
            )


class Outcome(msgspec.Struct, frozen=True):
    """How an attempt that returned a value went, for results that carry a status (HTTP)."""

    status: int | None = None
    """The status the callee answered, if any."""
    retry_after: str | None = None
    """The callee's Retry-After header value, if any."""
    no_retry: bool = False
    """The callee said not to retry (``garrison-no-retry``)."""


_OK = Outcome()
Attempt = Callable[[float | None], Awaitable[T]]
"""One attempt: called with its timeout in seconds (or None) and returning the result."""
Classify = Callable[[Any], Outcome]


def _is_failure(status: int | None) -> bool:
    return status is not None and status >= 500


def _is_overload(status: int | None) -> bool:
    return status == 429 or status == 503


class _BulkheadSide(Protocol):
    """A bulkhead as the shared steps see it: its core, and giving a slot back."""

    @property
    def core(self) -> Bulkhead[Any]: ...

    def release(self) -> None: ...


class _PipelineBase:
    """What :class:`Pipeline` (async) and ``SyncPipeline`` (sync) share: the cores of one
    edge's policies, the counters and events, and the synchronous steps of the call path
    (admission, reports, giving back what an attempt holds). The subclasses add the path
    itself and their own bulkhead (one that waits on the event loop, or one a thread waits on).
    """

    bulkhead: _BulkheadSide | None
    """The bulkhead (its I/O layer), or None."""

    def __init__(
        self,
        cfg: PolicyConfig,
        *,
        name: str,
        version: int,
        clock: Clock | None,
    ) -> None:
        self.config = cfg
        self.name = name
        """The edge this pipeline protects (``caller->callee`` or ``caller->callee /route``)."""
        self.version = version
        """Bumped by the registry on every replacement; in-flight calls keep their version."""
        self._clock = clock or SystemClock()
        clk = self._clock
        # Attempt durations on the pipeline's clock, so the cores see one time line (the
        # system clock's bound builtin skips a Python-level call on the hot path).
        self._now = time.monotonic if type(clk) is SystemClock else clk.monotonic
        self.timeout = cfg.timeout
        budget = None
        if cfg.retry is not None or cfg.retry_budget is not None:
            budget = RetryBudget(cfg.retry_budget or RetryBudgetConfig(), clock=clk)
        self.budget = budget
        self.retrier = Retrier(cfg.retry, budget=budget, clock=clk) if cfg.retry else None
        self.hedger = Hedger(cfg.hedge, clock=clk) if cfg.hedge else None
        rl = cfg.rate_limit
        self.rate = TokenBucket(rl, clock=clk) if rl is not None and rl.shared is None else None
        """The local token bucket, or None."""
        self.shared_rate = (
            SharedRateLimit(
                rl, key=rl.key or SharedRateLimit.default_key(name), name=name, clock=clk
            )
            if rl is not None and rl.shared is not None
            else None
        )
        """The token bucket shared through Redis, or None."""
        self.throttle = (
            AdaptiveThrottle(cfg.throttle, name=name, clock=clk) if cfg.throttle else None
        )
        self.breaker = CircuitBreaker(cfg.breaker, name=name, clock=clk) if cfg.breaker else None
        self.bulkhead = None
        self.limiter = (
            ConcurrencyLimiter(cfg.limiter, name=name, clock=clk) if cfg.limiter else None
        )
        self.shadow = frozenset(cfg.shadow)
        self.shadow_rejections: dict[str, int] = dict.fromkeys(sorted(self.shadow), 0)
        """Refusals each shadowed policy would have made."""
        self.rejections: dict[str, int] = {}
        """Refusals made, by policy."""
        self.calls = 0
        """Calls started (attempts and retries counted once)."""
        self.attempts = 0
        """Attempts sent to the callee."""
        self.failures = 0
        """Calls that ended in an exception after every retry."""
        self._listeners: list[Listener] = []

    # -- events --------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Receive the :class:`PolicyEvent` of every policy of this pipeline."""
        self._listeners.append(listener)
        for core in (self.breaker, self.limiter, self.shared_rate):
            if core is not None:
                core.add_listener(listener)

    def _refuse(self, policy: str, rejection: Rejected) -> None:
        """Count a refusal; raise it unless the policy is in shadow mode."""
        if policy in self.shadow:
            self.shadow_rejections[policy] += 1
            if self._listeners:
                emit(
                    self._listeners,
                    PolicyEvent(
                        policy,
                        self.name,
                        "shadow_rejection",
                        self._clock.monotonic(),
                        {"reason": rejection.reason},
                    ),
                )
            return
        self.rejections[policy] = self.rejections.get(policy, 0) + 1
        raise rejection

    def _admit(self, criticality: Criticality, left: float | None) -> int | None:
        """The synchronous admissions (rate, throttle, breaker); returns the breaker permit."""
        # Expired work is dropped before it takes a token, a throttle count or a probe.
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"{self.name}: deadline spent before the attempt")
        rate = self.rate
        if rate is not None and not rate.try_acquire():
            self._refuse(
                "rate_limit", Rejected("rate_limit", "rate exceeded", retry_after=rate.wait_time())
            )
        throttle = self.throttle
        if throttle is not None and not throttle.try_acquire(criticality):
            self._refuse("throttle", Rejected("throttle", "callee refuses most calls"))
        permit: int | None = None
        breaker = self.breaker
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except Rejected as rej:
                self._refuse("breaker", rej)
        return permit

    def _left_after_wait(self, deadline: Deadline, permit: int | None, in_bulkhead: bool) -> float:
        """The caller's time left after a bulkhead wait; gives everything back if none is."""
        left = deadline.remaining()
        if left <= 0:
            self._abandon(permit, in_bulkhead, None)
            raise DeadlineExceeded(f"{self.name}: deadline spent waiting for the bulkhead")
        return left

    def _acquire_limiter(
        self, criticality: Criticality, left: float | None, permit: int | None, in_bulkhead: bool
    ) -> Token | None:
        assert self.limiter is not None
        token = self.limiter.try_acquire(criticality, left)
        if token is None:
            self._limiter_refused(permit, in_bulkhead)
        return token

    def _limiter_refused(self, permit: int | None, in_bulkhead: bool) -> None:
        """The limiter said no (its shadow mode admits and never gets here)."""
        assert self.limiter is not None
        if "limiter" not in self.shadow:
            # Refused for real: hand back what the outer policies granted. (In shadow mode
            # the call goes on holding them, and its outcome releases them.)
            self._abandon(permit, in_bulkhead, None)
        self._refuse("limiter", self.limiter.rejection())

    def _abandon(self, permit: int | None, in_bulkhead: bool, token: Token | None) -> None:
        """Give back what an attempt holds without saying anything about the callee."""
        if in_bulkhead:
            self.bulkhead.release()  # type: ignore[union-attr]
        if permit is not None:
            self.breaker.on_ignored(permit)  # type: ignore[union-attr]
        if token is not None:
            token.on_ignore()

    def _succeed(
        self, duration: float, permit: int | None, in_bulkhead: bool, token: Token | None
    ) -> None:
        """Report an attempt that succeeded (the async path inlines these same steps)."""
        if in_bulkhead:
            self.bulkhead.release()  # type: ignore[union-attr]
        if permit is not None:
            self.breaker.on_success(duration, permit)  # type: ignore[union-attr]
        if token is not None:
            token.on_success()
        if self.throttle is not None:
            self.throttle.on_accepted()

    def _report(
        self,
        error: BaseException | None,
        status: int | None,
        duration: float,
        permit: int | None,
        in_bulkhead: bool,
        token: Token | None,
    ) -> None:
        """Report an attempt that did not simply succeed (an error, or a status >= 429)."""
        if in_bulkhead:
            self.bulkhead.release()  # type: ignore[union-attr]
        # An interruption (a cancellation, Ctrl-C, SystemExit) says nothing about the callee.
        cancelled = error is not None and not isinstance(error, Exception)
        # Whether the callee answered: a status (returned or raised) is an answer; a timeout,
        # a transport error or a bug is not.
        answered = error is None
        if isinstance(error, RemoteStatusError):
            answered, status = True, error.status
        overload = _is_overload(status) or isinstance(error, Rejected)
        breaker = self.breaker
        if breaker is not None and permit is not None:
            if cancelled:
                breaker.on_ignored(permit)
            elif not answered or _is_failure(status):
                breaker.on_failure(duration, permit)
            else:
                breaker.on_success(duration, permit)
        if token is not None:
            if cancelled:
                token.on_ignore()
            elif overload or isinstance(error, TimeoutError | DeadlineExceeded):
                token.on_dropped()
            elif answered:
                token.on_success()
            else:
                token.on_ignore()
        throttle = self.throttle
        if throttle is not None and not cancelled:
            if overload:
                throttle.on_rejected()
            elif answered:
                throttle.on_accepted()

    # -- introspection -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The state of every policy, for metrics, the CLI and the control plane."""
        out: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "calls": self.calls,
            "attempts": self.attempts,
            "failures": self.failures,
            "rejections": dict(self.rejections),
            "shadow": sorted(self.shadow),
            "shadow_rejections": dict(self.shadow_rejections),
        }
        if self.breaker is not None:
            m = self.breaker.metrics()
            out["breaker"] = {
                "state": m.state.value,
                "failure_rate": m.failure_rate,
                "slow_call_rate": m.slow_call_rate,
                "not_permitted": m.not_permitted_calls,
            }
        if self.limiter is not None:
            s = self.limiter.snapshot()
            out["limiter"] = {"limit": s.limit, "inflight": s.inflight, "rejected": s.rejected}
        if self.bulkhead is not None:
            core = self.bulkhead.core
            out["bulkhead"] = {"active": core.active, "waiting": core.waiting}
        if self.retrier is not None:
            out["retry"] = {
                "retries": self.retrier.retries,
                "gave_up": {k.value: v for k, v in self.retrier.stops.items() if v},
            }
        if self.throttle is not None:
            out["throttle"] = {"reject_probability": self.throttle.reject_probability}
        if self.shared_rate is not None:
            out["rate_limit"] = self.shared_rate.snapshot()
        return out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} v{self.version}>"


class Pipeline(_PipelineBase):
    """Every policy of one edge, composed; shared by all calls on the edge.

    Build with :meth:`from_config`; call with :meth:`call` (any async function) or
    :meth:`execute` (an attempt function that receives its timeout, e.g. an HTTP request whose
    transport enforces it). For plain ``def`` functions, see ``SyncPipeline`` (what
    ``@resilient`` builds around a sync function).
    """

    bulkhead: AsyncBulkhead | None

    def __init__(
        self,
        config: PolicyConfig | None = None,
        *,
        name: str = "pipeline",
        version: int = 1,
        clock: Clock | None = None,
        fallback: Callable[[BaseException], Awaitable[Any]] | None = None,
    ) -> None:
        cfg = config or PolicyConfig()
        super().__init__(cfg, name=name, version=version, clock=clock)
        self.fallback = fallback
        """Called with the final exception; fixed at construction."""
        self._wheel: TimeoutWheel | None = None
        self.bulkhead = (
            AsyncBulkhead(cfg.bulkhead, name=name, clock=self._clock) if cfg.bulkhead else None
        )
        if fallback is None and self.hedger is None:
            self.execute = self._run  # type: ignore[method-assign]  # one coroutine frame less

    @classmethod
    def from_config(cls, config: PolicyConfig, **kw: Any) -> Pipeline:
        """A pipeline of the policies in ``config`` (see :class:`Pipeline` for ``kw``)."""
        return cls(config, **kw)

    # -- the call path -------------------------------------------------------------------------

    async def call(self, fn: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` through the pipeline (timeouts by the shared wheel).

        ``fn`` must return an awaitable. A plain ``def`` function raises :class:`TypeError` as
        soon as it has returned (telling sync functions apart costs nothing this way, but it
        has run once): decorate it with ``@resilient`` instead, which gives sync functions a
        sync pipeline.
        """

        def attempt(_: float | None) -> Awaitable[T]:
            return fn(*args, **kwargs)

        try:
            return await self.execute(attempt, native_timeout=False)
        except TypeError as exc:
            if _awaited_a_plain_value(exc):
                name = getattr(fn, "__qualname__", repr(fn))
                raise TypeError(
                    f"Pipeline.call needs an async function; {name} returned a value that "
                    "cannot be awaited (it has run once). For a plain def function use "
                    "@resilient(...) on it (a sync function gets a sync wrapper and a "
                    "SyncPipeline) or SyncPipeline.call"
                ) from exc
            raise

    async def execute(
        self,
        attempt: Attempt[T],
        *,
        criticality: Criticality = Criticality.DEFAULT,
        may_retry: bool = True,
        classify: Classify | None = None,
        native_timeout: bool = True,
    ) -> T:
        """Run ``attempt`` through every policy; retried attempts call it again.

        ``attempt(timeout)`` gets the budget of that attempt: the smaller of the edge's
        ``timeout`` and the caller's remaining deadline (``None`` when there is neither).
        With ``native_timeout`` the attempt enforces it itself; otherwise the pipeline cancels
        it. ``classify(result)`` reads the status of a result (HTTP); a status of 500 or more
        counts as the callee's failure, 429/503 as overload, and a status the retry policy
        names is retried. ``may_retry`` is False when another layer retries this call.
        """
        if self.hedger is None:
            run = self._run(
                attempt,
                criticality=criticality,
                may_retry=may_retry,
                classify=classify,
                native_timeout=native_timeout,
            )
        else:
            self.calls += 1
            run = self._hedged(attempt, criticality, classify, native_timeout)
        if self.fallback is None:
            return await run
        try:
            return await run
        except Exception as exc:  # the fallback's job is precisely to catch what is left
            if isinstance(exc, TypeError) and _awaited_a_plain_value(exc):
                raise  # a sync function given to call(): a bug to show, not a failure to hide
            result: T = await self.fallback(exc)
            return result

    async def _run(
        self,
        attempt: Attempt[T],
        *,
        criticality: Criticality = Criticality.DEFAULT,
        may_retry: bool = True,
        classify: Classify | None = None,
        native_timeout: bool = True,
    ) -> T:
        # One flat loop: admission, the call and the reports inline, so that the success path
        # is a handful of method calls on the cores and no extra coroutine frames. Without
        # hedging or a fallback, ``execute`` *is* this method (bound at construction).
        self.calls += 1
        retrier = self.retrier
        if self.budget is not None:
            self.budget.record_request()
        breaker = self.breaker
        bulkhead = self.bulkhead
        limiter = self.limiter
        shared = self.shared_rate
        now = self._now
        n = 0
        while True:
            n += 1
            deadline = current_deadline()
            left = None if deadline is None else deadline.remaining()
            if shared is not None:
                left = await self._admit_shared(shared, deadline, left)
            permit = self._admit(criticality, left)
            in_bulkhead = False
            if bulkhead is not None:
                if bulkhead.core.try_acquire():
                    in_bulkhead = True
                else:
                    in_bulkhead = await self._wait_bulkhead(criticality, permit, left)
                    if deadline is not None:  # the wait took some of the caller's time
                        left = self._left_after_wait(deadline, permit, in_bulkhead)
            token: Token | None = None
            if limiter is not None:
                token = limiter.try_acquire(criticality, left)
                if token is None:
                    self._limiter_refused(permit, in_bulkhead)
            budget = self.timeout
            if left is not None and (budget is None or left < budget):
                budget = left
            self.attempts += 1
            start = now()
            try:
                if native_timeout or budget is None:
                    result = await attempt(budget)
                else:
                    wheel = self._wheel
                    if wheel is None or wheel.closed:  # first use, or a new event loop
                        wheel = self._wheel = default_wheel()
                    entry = wheel.enter(budget)
                    try:
                        result = await attempt(budget)
                    except asyncio.CancelledError:
                        if wheel.leave(entry, True):
                            raise TimeoutError(f"{self.name}: attempt timed out") from None
                        raise
                    except BaseException:
                        # Leave on every exit: a timeout left armed would cancel this task
                        # later, in the middle of whatever it does next.
                        wheel.leave(entry, False)
                        raise
                    wheel.leave(entry, False)
            except BaseException as exc:
                self._report(exc, None, now() - start, permit, in_bulkhead, token)
                if retrier is None or isinstance(exc, asyncio.CancelledError):
                    if not isinstance(exc, asyncio.CancelledError):
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
                await self._clock.sleep(d.delay)
                continue
            # -- the success path --
            if classify is None:
                outcome = _OK
            else:
                try:
                    outcome = classify(result)
                except BaseException:  # a broken classify must not leak the slot or permit
                    self._abandon(permit, in_bulkhead, token)
                    raise
            status = outcome.status
            if status is None or status < 429:
                if in_bulkhead:
                    bulkhead.release()  # type: ignore[union-attr]
                if permit is not None:
                    breaker.on_success(now() - start, permit)  # type: ignore[union-attr]
                if token is not None:
                    token.on_success()
                if self.throttle is not None:
                    self.throttle.on_accepted()
                return result
            self._report(None, status, now() - start, permit, in_bulkhead, token)
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
            await self._clock.sleep(d.delay)

    async def _admit_shared(
        self, shared: SharedRateLimit, deadline: Deadline | None, left: float | None
    ) -> float | None:
        """The shared rate limit (a Redis trip): first of all admissions, so nothing is held
        yet when it refuses; returns the caller's time left after the trip."""
        if left is not None and left <= 0:
            raise DeadlineExceeded(f"{self.name}: deadline spent before the attempt")
        rejection = await shared.acquire(left)
        if rejection is not None:
            self._refuse("rate_limit", rejection)
        return None if deadline is None else deadline.remaining()

    async def _wait_bulkhead(
        self, criticality: Criticality, permit: int | None, left: float | None
    ) -> bool:
        """The bulkhead is full: queue (or be refused); True once a slot is held.

        The wait never outlasts the caller's deadline (``left`` seconds).
        """
        bulkhead = self.bulkhead
        assert bulkhead is not None
        if "bulkhead" in self.shadow:
            # Shadow mode never makes a call wait: it would have queued or been refused.
            self._refuse("bulkhead", Rejected("bulkhead", "full"))
            return False
        wait: float | None = None
        if left is not None and left < bulkhead.core.config.queue_timeout:
            wait = left
        try:
            await bulkhead.acquire(criticality, wait)
        except Rejected as rej:
            self._abandon(permit, False, None)
            if wait is not None and rej.reason == "queue timeout":
                raise DeadlineExceeded(
                    f"{self.name}: deadline spent waiting for the bulkhead"
                ) from None
            self._refuse("bulkhead", rej)
            raise  # not reached: a shadowed bulkhead never waits
        except BaseException:
            self._abandon(permit, False, None)
            raise
        return True

    async def _attempt(
        self,
        attempt: Attempt[T],
        criticality: Criticality,
        classify: Classify | None,
        native_timeout: bool,
    ) -> tuple[T, int | None]:
        """One admitted attempt, for hedging (the plain path inlines the same steps); returns
        the result and its status."""
        deadline = current_deadline()
        left = None if deadline is None else deadline.remaining()
        if self.shared_rate is not None:
            left = await self._admit_shared(self.shared_rate, deadline, left)
        permit = self._admit(criticality, left)
        in_bulkhead = False
        if self.bulkhead is not None:
            if self.bulkhead.core.try_acquire():
                in_bulkhead = True
            else:
                in_bulkhead = await self._wait_bulkhead(criticality, permit, left)
                if deadline is not None:
                    left = self._left_after_wait(deadline, permit, in_bulkhead)
        token = None
        if self.limiter is not None:
            token = self._acquire_limiter(criticality, left, permit, in_bulkhead)
        budget = self.timeout
        if left is not None and (budget is None or left < budget):
            budget = left
        self.attempts += 1
        start = self._now()
        try:
            if native_timeout or budget is None:
                result = await attempt(budget)
            else:
                async with default_wheel().timeout(budget):
                    result = await attempt(budget)
        except BaseException as exc:
            self._report(exc, None, self._now() - start, permit, in_bulkhead, token)
            raise
        try:
            status = classify(result).status if classify is not None else None
        except BaseException:
            self._abandon(permit, in_bulkhead, token)
            raise
        duration = self._now() - start
        self._report(None, status, duration, permit, in_bulkhead, token)
        assert self.hedger is not None
        self.hedger.record_latency(duration)  # the attempt's own latency, for the percentile
        return result, status

    async def _hedged(
        self,
        attempt: Attempt[T],
        criticality: Criticality,
        classify: Classify | None,
        native_timeout: bool,
    ) -> T:
        """Race attempts: after the hedge delay with no answer, send another (budget allowing)."""
        hedger = self.hedger
        assert hedger is not None
        hedger.record_request()
        max_hedged = hedger.config.max_hedged
        pending: set[asyncio.Task[tuple[T, int | None]]] = {
            asyncio.ensure_future(self._attempt(attempt, criticality, classify, native_timeout))
        }
        hedges = 0  # extra attempts sent for this call
        may_hedge = max_hedged > 0
        last_error: BaseException | None = None
        last_result: list[T] = []
        try:
            while pending:
                # The budget is asked only once the delay has passed with no answer: a call
                # answered in time must not spend a hedge.
                wait = hedger.delay() if may_hedge else None
                done, pending = await asyncio.wait(
                    pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # the delay passed with no answer: hedge, budget allowing
                    deadline = current_deadline()
                    left = None if deadline is None else deadline.remaining()
                    if hedger.should_hedge(hedges, remaining=left):
                        hedges += 1
                        pending.add(
                            asyncio.ensure_future(
                                self._attempt(attempt, criticality, classify, native_timeout)
                            )
                        )
                        may_hedge = hedges < max_hedged
                    else:
                        may_hedge = False  # budget or deadline spent: wait for what runs
                    continue
                winner: list[T] = []
                for task in done:  # every one is looked at, so no exception goes unretrieved
                    if task.cancelled():
                        continue
                    exc = task.exception()
                    if exc is not None:
                        last_error = exc
                        continue
                    result, status = task.result()
                    if winner:
                        continue
                    if _is_failure(status) and pending:
                        last_result = [result]  # a failure; another attempt may still win
                        continue
                    winner.append(result)
                if winner:
                    return winner[0]
            if last_result:
                return last_result[0]
            self.failures += 1
            if last_error is None:  # every attempt was cancelled from outside the pipeline
                raise asyncio.CancelledError
            raise last_error
        finally:
            for task in pending:  # the losers: cancelled, their slots released as they unwind
                task.cancel()
                task.add_done_callback(_retrieve)


def _awaited_a_plain_value(exc: TypeError) -> bool:
    """Whether ``exc`` was raised by the pipeline awaiting what an attempt returned (a sync
    function given to :meth:`Pipeline.call`), not by anything the attempt itself ran."""
    tb: TracebackType | None = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code in _AWAIT_SITES and "can't be used in 'await' expression" in str(exc)


_AWAIT_SITES = frozenset({Pipeline._run.__code__, Pipeline._attempt.__code__})


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a cancelled loser's outcome as seen (it may end in an error, not a cancellation)."""
    if not task.cancelled():
        task.exception()
