"""Retry decisions: backoff with full jitter, Retry-After, deadlines, budgets, one layer only.

Theory of operation
-------------------
:class:`Retrier` holds no per-call state. After each attempt the caller hands it the attempt
number (1 for the first) and the outcome; :meth:`Retrier.decide` answers with a
:class:`RetryDecision`: retry after ``delay`` seconds, or stop and why. The checks run cheapest
and most final first, so the success path is two comparisons:

1. success (no exception, status not in ``retry_on_status``)  -> stop, ``SUCCESS``
2. a "do not retry" signal: ``ServiceUnavailable.retryable`` false (which covers
   ``Rejected(retryable=False)``), a ``garrison-no-retry`` response, or an outcome that matches
   neither ``retry_on`` nor ``retry_on_status``                  -> stop, ``NOT_RETRYABLE``
3. this layer may not retry (see below)                         -> stop, ``OTHER_LAYER``
4. ``attempt >= max_attempts``                                 -> stop, ``ATTEMPTS_EXHAUSTED``
5. the delay: the server's Retry-After (seconds or HTTP-date, capped at ``max_backoff``) if
   there is one, else full jitter (AWS): ``uniform(0, min(max_backoff,
   initial_backoff x multiplier ** (attempt - 1)))``
6. ``delay + min_attempt_time`` would not fit in the remaining deadline -> stop, ``DEADLINE``
7. the retry budget refuses a withdrawal                        -> stop, ``BUDGET``

The budget is asked last so that only retries that will really be sent spend it.

Retries at one layer only
-------------------------
In a chain A -> B -> C, retrying at every layer multiplies the load on C by the product of the
attempt limits. So every retry carries ``garrison-attempt: N`` (N >= 2), and a layer that may not
retry tells its callees with ``garrison-no-retry: 1``. A service handling a request that arrived
with either header does not retry its own calls (:func:`may_retry`); the outbound headers come
from :func:`retry_headers`. A callee that gave up after its own retries, or that shed the call
under overload, answers with ``garrison-no-retry: 1`` so its caller does not retry either.
"""

from __future__ import annotations

import datetime
import email.utils
import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import msgspec

from garrison.core import Clock, ConfigError, RemoteStatusError, ServiceUnavailable, SystemClock
from garrison.core import TransportError as _TransportError

from ._budget import RetryBudget

__all__ = [
    "ATTEMPT_HEADER",
    "NO_RETRY_HEADER",
    "GiveUp",
    "RetryDecision",
    "RetryPolicy",
    "RetryState",
    "Retrier",
    "may_retry",
    "parse_retry_after",
    "response_forbids_retry",
    "retry_headers",
]

ATTEMPT_HEADER = "garrison-attempt"
"""Request header: which attempt of the caller this request is (``2`` for the first retry)."""
NO_RETRY_HEADER = "garrison-no-retry"
"""Request and response header: ``1`` means "do not retry this call at your layer"."""


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a call is retried. The defaults suit a call between services on one network."""

    max_attempts: int = 3
    """Attempts in all, the first included; 1 disables retries."""
    initial_backoff: float = 0.05
    """Upper bound of the first jittered wait, in seconds."""
    max_backoff: float = 2.0
    """Cap of every wait, in seconds, Retry-After included."""
    multiplier: float = 2.0
    """Growth of the backoff bound per attempt."""
    jitter: bool = True
    """Full jitter (a wait drawn uniformly from 0 to the bound); ``False`` waits the bound."""
    retry_on: tuple[type[Exception], ...] = (_TransportError, ServiceUnavailable, TimeoutError)
    """Exception types worth retrying. A :class:`~garrison.core.RemoteStatusError` is judged by
    its status instead, and a ``ServiceUnavailable`` whose ``retryable`` is false never is.
    :class:`~garrison.core.DeadlineExceeded` is absent on purpose: the caller's time is up."""
    retry_on_status: frozenset[int] = frozenset({429, 502, 503, 504})
    """HTTP statuses worth retrying."""
    honor_retry_after: bool = True
    """Wait what the server's Retry-After asks (capped at ``max_backoff``), not the backoff."""
    min_attempt_time: float = 0.0
    """Seconds an attempt needs to be of any use: a retry is scheduled only when its delay plus
    this still ends before the deadline."""

    def __post_init__(self) -> None:
        _require(
            isinstance(self.max_attempts, int)
            and not isinstance(self.max_attempts, bool)
            and self.max_attempts >= 1,
            "max_attempts",
            "an integer >= 1",
            self.max_attempts,
        )
        _require(
            _finite(self.initial_backoff) and self.initial_backoff >= 0,
            "initial_backoff",
            "seconds >= 0",
            self.initial_backoff,
        )
        _require(
            _finite(self.max_backoff) and self.max_backoff >= self.initial_backoff,
            "max_backoff",
            f"seconds >= initial_backoff ({self.initial_backoff})",
            self.max_backoff,
        )
        _require(
            _finite(self.multiplier) and self.multiplier >= 1,
            "multiplier",
            "a number >= 1",
            self.multiplier,
        )
        _require(
            isinstance(self.retry_on, tuple)
            and all(isinstance(t, type) and issubclass(t, Exception) for t in self.retry_on),
            "retry_on",
            "a tuple of Exception subclasses",
            self.retry_on,
        )
        _require(
            isinstance(self.retry_on_status, frozenset)
            and all(
                isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599
                for s in self.retry_on_status
            ),
            "retry_on_status",
            "a set of HTTP status codes (100-599)",
            self.retry_on_status,
        )
        _require(
            _finite(self.min_attempt_time) and self.min_attempt_time >= 0,
            "min_attempt_time",
            "seconds >= 0",
            self.min_attempt_time,
        )


class GiveUp(enum.Enum):
    """Why a :class:`RetryDecision` says stop."""

    SUCCESS = "success"
    """The outcome was not a failure: nothing to retry."""
    NOT_RETRYABLE = "not_retryable"
    """The failure is not worth retrying, or someone said not to."""
    OTHER_LAYER = "other_layer"
    """This layer may not retry: the request is itself a retry, or was sent with no-retry."""
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    """``max_attempts`` reached."""
    DEADLINE = "deadline"
    """The next attempt would end past the deadline."""
    BUDGET = "budget"
    """The retry budget is spent: the callee is failing for many calls, not just this one."""


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after an attempt: ``retry`` after ``delay`` seconds, or stop for ``reason``."""

    retry: bool
    """Whether to send another attempt."""
    delay: float = 0.0
    """Seconds to wait before it (0 when stopping)."""
    reason: GiveUp | None = None
    """Why to stop (``None`` when retrying)."""


_STOP = {r: RetryDecision(False, 0.0, r) for r in GiveUp}
_SUCCESS = _STOP[GiveUp.SUCCESS]
_EMPTY: Mapping[str, str] = MappingProxyType({})
_NO_RETRY: Mapping[str, str] = MappingProxyType({NO_RETRY_HEADER: "1"})


class Retrier:
    """The retry decision of one edge: a :class:`RetryPolicy`, an optional budget, a clock, an rng.

    Shared by all calls on the edge; per-call state is just the attempt number, which the caller
    keeps itself or in a :class:`RetryState` from :meth:`begin`.
    """

    __slots__ = ("_clock", "_rng", "budget", "config", "retries", "stops")

    def __init__(
        self,
        config: RetryPolicy | None = None,
        *,
        budget: RetryBudget | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config or RetryPolicy()
        self.budget = budget
        """The retry budget consulted before each retry; ``None`` for none."""
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self.retries = 0
        """Retries granted so far (a metric)."""
        self.stops: dict[GiveUp, int] = dict.fromkeys(GiveUp, 0)
        """Failures given up on, by reason (a metric; ``SUCCESS`` is not counted)."""

    def decide(
        self,
        attempt: int,
        *,
        error: BaseException | None = None,
        status: int | None = None,
        retry_after: str | float | None = None,
        no_retry: bool = False,
        remaining: float | None = None,
        may_retry: bool = True,
    ) -> RetryDecision:
        """Decide what follows attempt number ``attempt`` (1 for the first).

        ``error`` is the exception the attempt raised, if any; ``status`` the HTTP status it got
        (a ``RemoteStatusError`` supplies its own). ``retry_after`` is the Retry-After header
        value (delta-seconds or an HTTP-date) and ``no_retry`` whether the response carried
        ``garrison-no-retry``. ``remaining`` is the time left in the deadline
        (:func:`garrison.core.remaining`), ``None`` for no deadline. ``may_retry`` is whether
        this layer may retry at all (:func:`may_retry` of the inbound request's headers).
        """
        p = self.config
        if error is None:
            if status is None or status not in p.retry_on_status:
                return _SUCCESS
            retryable = True
        elif isinstance(error, RemoteStatusError):
            retryable = error.status in p.retry_on_status
        elif isinstance(error, ServiceUnavailable) and not error.retryable:
            retryable = False
        else:
            retryable = isinstance(error, p.retry_on)
        if not retryable or no_retry:
            return self._stop(GiveUp.NOT_RETRYABLE)
        if not may_retry:
            return self._stop(GiveUp.OTHER_LAYER)
        if attempt >= p.max_attempts:
            return self._stop(GiveUp.ATTEMPTS_EXHAUSTED)

        delay: float | None = None
        if p.honor_retry_after:
            if retry_after is None and error is not None:
                retry_after = getattr(error, "retry_after", None)  # e.g. Rejected(retry_after=)
            if retry_after is not None:
                delay = parse_retry_after(retry_after, now=self._clock.time())
        if delay is not None:
            delay = min(delay, p.max_backoff)
        else:
            delay = self.backoff_bound(attempt)
            if p.jitter:
                delay = self._rng.uniform(0.0, delay)
        if remaining is not None and delay + p.min_attempt_time >= remaining:
            return self._stop(GiveUp.DEADLINE)
        if self.budget is not None and not self.budget.try_withdraw():
            return self._stop(GiveUp.BUDGET)
        self.retries += 1
        return RetryDecision(True, delay)

    def begin(self, inbound: Mapping[str, str] | None = None) -> RetryState:
        """The retry state of a new call.

        ``inbound`` are the headers of the request being handled when the call is made (``None``
        outside any request): they say whether this layer may retry.
        """
        return RetryState(self, may_retry=True if inbound is None else may_retry(inbound))

    def backoff_bound(self, attempt: int) -> float:
        """Bound of the wait after attempt ``n``: ``min(max_backoff, initial x mult**(n-1))``."""
        p = self.config
        try:
            bound = p.initial_backoff * p.multiplier ** (attempt - 1)
        except OverflowError:
            return p.max_backoff
        return min(bound, p.max_backoff)

    def _stop(self, reason: GiveUp) -> RetryDecision:
        self.stops[reason] += 1
        return _STOP[reason]


class RetryState:
    """One call's retry state: its attempt number and whether this layer may retry.

    Send each attempt with :meth:`headers`, report its outcome to :meth:`decide`, and on a
    ``retry`` wait ``delay`` and go again (the attempt number has moved on already).
    """

    __slots__ = ("attempt", "may_retry", "retrier")

    def __init__(self, retrier: Retrier, *, may_retry: bool = True) -> None:
        self.retrier = retrier
        """The edge's decision maker."""
        self.attempt = 1
        """The number of the attempt being made (1 for the first)."""
        self.may_retry = may_retry
        """Whether this layer may retry (``False`` when a layer above does)."""

    def headers(self) -> Mapping[str, str]:
        """Headers for the current attempt (:func:`retry_headers`); read-only, merge them in."""
        return retry_headers(self.attempt, may_retry=self.may_retry)

    def decide(
        self,
        *,
        error: BaseException | None = None,
        status: int | None = None,
        retry_after: str | float | None = None,
        no_retry: bool = False,
        remaining: float | None = None,
    ) -> RetryDecision:
        """:meth:`Retrier.decide` for the current attempt; a ``retry`` moves to the next one."""
        d = self.retrier.decide(
            self.attempt,
            error=error,
            status=status,
            retry_after=retry_after,
            no_retry=no_retry,
            remaining=remaining,
            may_retry=self.may_retry,
        )
        if d.retry:
            self.attempt += 1
        return d


def parse_retry_after(value: str | float, *, now: float) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP-date (RFC 9110).

    ``now`` is the current wall time (seconds since the epoch) for dates. A date in the past
    gives 0; an unreadable or negative value gives ``None`` (ignore the header).
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


def may_retry(headers: Mapping[str, str]) -> bool:
    """Whether this layer may retry its calls while handling a request with these headers.

    ``False`` when the request is itself a retry (``garrison-attempt`` >= 2) or carries
    ``garrison-no-retry``: the retries belong to a layer above. Header names are looked up in
    lower case (Starlette's and httpx's header mappings are case-insensitive).
    """
    if _truthy(headers.get(NO_RETRY_HEADER)):
        return False
    attempt = headers.get(ATTEMPT_HEADER)
    if attempt is None:
        return True
    try:
        return int(attempt) <= 1
    except ValueError:
        return False  # unreadable: assume the worst, someone above is retrying


def retry_headers(attempt: int, *, may_retry: bool = True) -> Mapping[str, str]:
    """Headers to send with attempt ``attempt`` of an outbound call (read-only; merge them in).

    A layer that may not retry passes ``may_retry=False`` so that its callees do not retry
    either; the first attempt of a layer that may retry sends nothing.
    """
    if not may_retry:
        return _NO_RETRY
    if attempt <= 1:
        return _EMPTY
    return {ATTEMPT_HEADER: str(attempt)}


def response_forbids_retry(headers: Mapping[str, str]) -> bool:
    """Whether a response carries ``garrison-no-retry`` (pass the result as ``no_retry=``)."""
    return _truthy(headers.get(NO_RETRY_HEADER))


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no")


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _require(ok: bool, field: str, expected: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"expected {expected}, got {value!r}", key=field)
