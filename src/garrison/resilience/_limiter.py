"""The concurrency limiter: admit a call while there is room, shedding the least important first.

Theory of operation
-------------------
:meth:`ConcurrencyLimiter.try_acquire` is the door. It returns a :class:`Token` when the call may
start and ``None`` when it may not; :meth:`ConcurrencyLimiter.acquire` raises
:class:`~garrison.resilience._base.Rejected` instead. Three checks, in order:

1. **Expired work is dropped.** A call whose ``deadline_remaining`` is at most ``min_deadline``
   cannot finish in time for anyone to use the answer, so it is refused before it costs anything.
2. **Criticality shedding.** Each criticality may fill only a fraction of the limit: by default
   SHEDDABLE work is refused once 75% of the limit is in flight, DEFAULT at 90%, CRITICAL and
   CRITICAL_PLUS only at 100%. As load rises the least important work is refused first and the
   last slots stay free for the work that matters (Google SRE, "Handling Overload"). The caps are
   integers recomputed only when the limit changes, so the check is one list lookup.
3. **The limit itself.** The limit comes from a limit algorithm (:mod:`._limits`), by default
   Gradient2 aggregated over one-second windows, so it follows the capacity the callee shows.

A token is released exactly once, by the caller saying how the call went: :meth:`Token.on_success`
(the RTT is a valid sample), :meth:`Token.on_dropped` (timed out or refused for overload: the
limit should shrink) or :meth:`Token.on_ignore` (failed for a reason unrelated to load: no sample).
Later calls on a released token do nothing, so a token can never be released twice and inflight
can never go negative. ``with limiter.acquire() as token:`` releases on exit.

The same class serves both sides of an edge: on the server it sheds at the door, on the client it
limits what one caller sends to one callee. In shadow mode it admits everything and only counts
what it would have refused, so an operator can try it before enforcing it.

Nothing here awaits or locks: a limiter belongs to one event loop.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import msgspec

from garrison.core import Clock, ConfigError, DeadlineExceeded, SystemClock

from ._base import Criticality, Listener, PolicyEvent, Rejected
from ._limits import FixedLimit, Gradient2Config, Limit, LimitConfig, WindowConfig, make_limit

__all__ = ["ConcurrencyLimiter", "LimiterConfig", "LimiterSnapshot", "Token"]

_REASONS = ("limit reached", "shed", "deadline expired")
_LIMIT, _SHED, _DEADLINE = 0, 1, 2
_LEVELS = tuple(Criticality)


class LimiterConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration of a :class:`ConcurrencyLimiter`.

    The ``*_fraction`` fields say how much of the limit each criticality may fill; they must not
    decrease with criticality. A fraction above 1 lets that criticality exceed the limit a little.
    """

    limit: LimitConfig = Gradient2Config()
    """The limit algorithm and its parameters, e.g. ``{algorithm = "gradient2",
    rtt_tolerance = 1.0}`` or ``{algorithm = "fixed", limit = 32}``."""
    window: WindowConfig | None = WindowConfig()
    """Aggregate samples over windows before updating the algorithm; ``None`` feeds every
    sample straight in. Not used by fixed limits or the Envoy controller (it windows itself)."""
    sheddable_fraction: float = 0.75
    """SHEDDABLE calls are refused once this fraction of the limit is in flight."""
    default_fraction: float = 0.9
    """DEFAULT calls are refused once this fraction of the limit is in flight."""
    critical_fraction: float = 1.0
    """CRITICAL calls are refused once this fraction of the limit is in flight."""
    critical_plus_fraction: float = 1.0
    """CRITICAL_PLUS calls are refused once this fraction of the limit is in flight."""
    min_deadline: float = 0.0
    """Calls with no more than this many seconds left are dropped before they start."""
    shadow: bool = False
    """Admit everything; only count what would have been refused."""

    def __post_init__(self) -> None:
        previous = 0.0
        for key in _FRACTION_KEYS:
            value = getattr(self, key)
            if not 0 < value <= 2:
                raise ConfigError(f"must be in (0, 2], got {value}", key=key)
            if value < previous:
                raise ConfigError(
                    f"must be >= the fraction of the criticality below ({previous}), got {value}",
                    key=key,
                )
            previous = value
        if self.min_deadline < 0:
            raise ConfigError(f"must be >= 0 seconds, got {self.min_deadline}", key="min_deadline")

    def fractions(self) -> tuple[float, ...]:
        """The fractions indexed by :class:`Criticality`."""
        return tuple(getattr(self, key) for key in _FRACTION_KEYS)


_FRACTION_KEYS = (
    "sheddable_fraction",
    "default_fraction",
    "critical_fraction",
    "critical_plus_fraction",
)


@dataclass(frozen=True, slots=True)
class LimiterSnapshot:
    """A limiter's counters at one moment (counters only grow; rates are the reader's job)."""

    name: str
    """The limiter's name."""
    limit: int
    """The current limit."""
    inflight: int
    """Calls admitted and not yet released."""
    accepted: int
    """Calls admitted (tokens issued), shadow admissions included."""
    succeeded: int
    """Tokens released with :meth:`Token.on_success`."""
    dropped: int
    """Tokens released with :meth:`Token.on_dropped`."""
    ignored: int
    """Tokens released with :meth:`Token.on_ignore`."""
    rejected: int
    """Calls refused (in shadow mode: that would have been refused)."""
    rejected_by_reason: dict[str, int]
    """Refusals by reason: ``limit reached``, ``shed``, ``deadline expired``."""
    rejected_by_criticality: dict[str, int]
    """Refusals by criticality name (``sheddable`` ...)."""
    shadow: bool
    """Whether the limiter only counts refusals."""


class Token:
    """Permission for one call to run; release it once with how the call went."""

    __slots__ = ("_inflight", "_limiter", "_start")

    def __init__(self, limiter: ConcurrencyLimiter, start: float, inflight: int) -> None:
        self._limiter: ConcurrencyLimiter | None = limiter
        self._start = start
        self._inflight = inflight

    @property
    def released(self) -> bool:
        """Whether the token was already released."""
        return self._limiter is None

    @property
    def start(self) -> float:
        """When the call was admitted, on the limiter's clock."""
        return self._start

    def on_success(self) -> None:
        """The call finished normally: release and feed its RTT to the limit algorithm."""
        lim = self._limiter
        if lim is None:
            return
        self._limiter = None
        lim._inflight -= 1
        lim._succeeded += 1
        start = self._start
        lim._on_sample(start, lim._now() - start, self._inflight, False)

    def on_dropped(self) -> None:
        """The call timed out or was refused for overload: release and let the limit shrink."""
        lim = self._limiter
        if lim is None:
            return
        self._limiter = None
        lim._inflight -= 1
        lim._dropped += 1
        start = self._start
        lim._on_sample(start, lim._now() - start, self._inflight, True)

    def on_ignore(self) -> None:
        """The call failed for a reason unrelated to load: release without a sample."""
        lim = self._limiter
        if lim is None:
            return
        self._limiter = None
        lim._inflight -= 1
        lim._ignored += 1

    def __enter__(self) -> Token:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # An explicit on_* call inside the block wins: release is idempotent.
        if exc_type is None:
            self.on_success()
        elif issubclass(exc_type, (TimeoutError, DeadlineExceeded)):
            self.on_dropped()
        else:
            self.on_ignore()

    def __repr__(self) -> str:
        state = "released" if self._limiter is None else "held"
        return f"<Token {state} start={self._start:.6f} inflight={self._inflight}>"


class ConcurrencyLimiter:
    """An adaptive concurrency limit with criticality-aware load shedding.

    ``limit`` may be a :class:`~garrison.resilience._limits.Limit` instance or an int (a fixed
    limit); otherwise the algorithm is built from ``config``. One algorithm instance serves one
    limiter. ``random`` feeds the Vegas probe jitter.
    """

    __slots__ = (
        "_accepted",
        "_algorithm",
        "_caps",
        "_dropped",
        "_fractions",
        "_ignored",
        "_inflight",
        "_last_reason",
        "_limit",
        "_min_deadline",
        "_now",
        "_on_sample",
        "_rejected",
        "_shadow",
        "_succeeded",
        "config",
        "name",
    )

    def __init__(
        self,
        config: LimiterConfig | None = None,
        *,
        limit: Limit | int | None = None,
        name: str = "",
        clock: Clock | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.config = config = config or LimiterConfig()
        """The configuration the limiter was built from."""
        self.name = name
        """The limiter's name, usually the edge (``caller->callee``)."""
        clock = clock or SystemClock()
        algorithm: Limit
        if limit is None:
            algorithm = make_limit(
                config.limit, window=config.window, name=name, clock=clock, random=random
            )
        elif isinstance(limit, int):
            algorithm = FixedLimit(limit, name=name, clock=clock)
        else:
            algorithm = limit
            if not algorithm.name:
                algorithm.name = name
        self._algorithm = algorithm
        # The system clock's bound builtin skips a Python-level call on the hot path.
        self._now = time.monotonic if type(clock) is SystemClock else clock.monotonic
        self._on_sample = algorithm.on_sample
        self._fractions = config.fractions()
        self._min_deadline = config.min_deadline
        self._shadow = config.shadow
        self._inflight = 0
        self._accepted = 0
        self._succeeded = 0
        self._dropped = 0
        self._ignored = 0
        self._rejected = [[0, 0, 0] for _ in _LEVELS]
        self._last_reason = ""
        self._limit = 0
        self._caps: list[int] = []
        self._apply_limit(algorithm.limit)
        # Registered first, so the limiter's caps are current before any user listener runs.
        algorithm.add_listener(self._on_limit_change)

    # -- the door ---------------------------------------------------------------------------

    def try_acquire(
        self,
        criticality: Criticality = Criticality.DEFAULT,
        deadline_remaining: float | None = None,
    ) -> Token | None:
        """A :class:`Token` if a call of this criticality may start now, else ``None``.

        ``deadline_remaining`` is the caller's budget in seconds, if it has one; a call with no
        time left is refused before it starts.
        """
        inflight = self._inflight
        if inflight >= self._caps[criticality] or (
            deadline_remaining is not None and deadline_remaining <= self._min_deadline
        ):
            return self._refuse(criticality, inflight, deadline_remaining)
        self._inflight = inflight = inflight + 1
        self._accepted += 1
        return Token(self, self._now(), inflight)

    def acquire(
        self,
        criticality: Criticality = Criticality.DEFAULT,
        deadline_remaining: float | None = None,
    ) -> Token:
        """Like :meth:`try_acquire` but raises :class:`Rejected` (``policy="limiter"``, reason
        ``limit reached``, ``shed <criticality>`` or ``deadline expired``) instead of ``None``.

        Rejections are not retryable: the callee is overloaded, and retrying elsewhere in the
        chain would only add load.
        """
        token = self.try_acquire(criticality, deadline_remaining)
        if token is None:
            raise self.rejection()
        return token

    def rejection(self) -> Rejected:
        """The :class:`Rejected` describing the last refusal of :meth:`try_acquire`."""
        return Rejected("limiter", self._last_reason)

    def _refuse(
        self, criticality: Criticality, inflight: int, deadline_remaining: float | None
    ) -> Token | None:
        if deadline_remaining is not None and deadline_remaining <= self._min_deadline:
            reason, self._last_reason = _DEADLINE, "deadline expired"
        elif inflight >= self._limit:
            reason, self._last_reason = _LIMIT, "limit reached"
        else:
            reason, self._last_reason = _SHED, f"shed {criticality.name.lower()}"
        self._rejected[criticality][reason] += 1
        if not self._shadow:
            return None
        self._inflight = inflight = inflight + 1
        self._accepted += 1
        return Token(self, self._now(), inflight)

    # -- the limit --------------------------------------------------------------------------

    def _apply_limit(self, limit: int) -> None:
        self._limit = limit
        # A cap below 1 would refuse a criticality even on an idle service.
        self._caps = [max(1, int(limit * f + 1e-9)) for f in self._fractions]

    def _on_limit_change(self, event: PolicyEvent) -> None:
        self._apply_limit(self._algorithm.limit)

    @property
    def algorithm(self) -> Limit:
        """The limit algorithm."""
        return self._algorithm

    @property
    def limit(self) -> int:
        """The current concurrency limit."""
        return self._limit

    @property
    def inflight(self) -> int:
        """Calls admitted and not yet released."""
        return self._inflight

    def capacity(self, criticality: Criticality = Criticality.DEFAULT) -> int:
        """How many calls may be in flight before calls of ``criticality`` are refused."""
        return self._caps[criticality]

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with a ``limit_change`` event whenever the limit changes."""
        self._algorithm.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``."""
        self._algorithm.remove_listener(listener)

    def snapshot(self) -> LimiterSnapshot:
        """The current limit, inflight and counters."""
        by_reason = {name: sum(row[i] for row in self._rejected) for i, name in enumerate(_REASONS)}
        by_criticality = {c.name.lower(): sum(self._rejected[c]) for c in _LEVELS}
        return LimiterSnapshot(
            name=self.name,
            limit=self._limit,
            inflight=self._inflight,
            accepted=self._accepted,
            succeeded=self._succeeded,
            dropped=self._dropped,
            ignored=self._ignored,
            rejected=sum(by_reason.values()),
            rejected_by_reason=by_reason,
            rejected_by_criticality=by_criticality,
            shadow=self._shadow,
        )

    def __repr__(self) -> str:
        return (
            f"ConcurrencyLimiter(name={self.name!r}, limit={self._limit}, "
            f"inflight={self._inflight})"
        )
