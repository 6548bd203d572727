"""Client-side adaptive throttling, as Google SRE describes it ("Handling Overload").

Theory of operation
-------------------
A client that keeps sending to an overloaded backend makes the backend spend effort refusing
calls. Instead, each client keeps two counts over a sliding window (two minutes by default):

* ``requests``: calls the application attempted, including the ones this throttle refused;
* ``accepts``: calls the backend accepted (answered with anything but an overload refusal).

While the backend accepts everything, ``requests == accepts``. When it starts refusing, the
client refuses new calls itself with probability::

    p = max(0, (requests - K * accepts) / (requests + 1))

With ``K = 2`` the client sends up to about twice what the backend accepts, so the backend still
sees enough traffic to show when it recovers; a smaller ``K`` throttles sooner, a larger one
later. Because locally refused calls still count as requests, ``p`` rises as long as the
backend keeps refusing and falls as soon as it accepts again.

The window is a ring of time buckets: each call adds to the current bucket and keeps running
totals, and moving to a new bucket clears the buckets that fell out of the window, so every call
costs O(1) whatever the traffic. ``random`` is injectable so tests can make the coin
deterministic. Calls at or above ``never_throttle`` (e.g. CRITICAL_PLUS) are counted but never
refused locally.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from garrison.core import Clock, ConfigError, SystemClock

from ._base import Criticality, Rejected

__all__ = ["AdaptiveThrottle", "ThrottleConfig", "ThrottleSnapshot"]


class ThrottleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration of an :class:`AdaptiveThrottle`."""

    k: float = 2.0
    """Multiplier of accepts: the client sends up to ``k`` times what the backend accepts.
    Must be >= 1 (below 1 a healthy backend would be throttled)."""
    window: float = 120.0
    """Length of the sliding window, in seconds."""
    buckets: int = 24
    """Number of buckets the window is divided into (its time resolution)."""
    never_throttle: Criticality | None = None
    """Calls of this criticality or higher are never refused locally; ``None`` throttles all."""
    shadow: bool = False
    """Never refuse; only count what would have been refused."""

    def __post_init__(self) -> None:
        if not self.k >= 1.0:
            raise ConfigError(f"must be >= 1.0, got {self.k}", key="k")
        if not self.window > 0:
            raise ConfigError(f"must be > 0 seconds, got {self.window}", key="window")
        if not 1 <= self.buckets <= 3600:
            raise ConfigError(f"must be in [1, 3600], got {self.buckets}", key="buckets")


@dataclass(frozen=True, slots=True)
class ThrottleSnapshot:
    """An adaptive throttle's state at one moment."""

    name: str
    """The throttle's name."""
    requests: int
    """Calls attempted within the window."""
    accepts: int
    """Calls the backend accepted within the window."""
    reject_probability: float
    """The probability the next call is refused locally."""
    throttled: int
    """Calls refused locally since creation (in shadow mode: that would have been refused)."""
    backend_rejected: int
    """Overload refusals reported by :meth:`AdaptiveThrottle.on_rejected` since creation."""
    shadow: bool
    """Whether the throttle only counts refusals."""


class AdaptiveThrottle:
    """Refuses calls locally with the probability the backend's recent refusals justify.

    Per call: :meth:`try_acquire` (or :meth:`acquire`) before sending, then :meth:`on_accepted`
    when the backend accepted it or :meth:`on_rejected` when it refused for overload. Calls that
    fail for other reasons (a timeout, a bug) should report neither.
    """

    __slots__ = (
        "_accepts",
        "_backend_rejected",
        "_bucket_accepts",
        "_bucket_end",
        "_bucket_requests",
        "_cur",
        "_k",
        "_n",
        "_never",
        "_now",
        "_random",
        "_requests",
        "_shadow",
        "_throttled",
        "_width",
        "config",
        "name",
    )

    def __init__(
        self,
        config: ThrottleConfig | None = None,
        *,
        name: str = "",
        clock: Clock | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.config = config = config or ThrottleConfig()
        """The configuration the throttle was built from."""
        self.name = name
        """The throttle's name, usually the edge (``caller->callee``)."""
        clock = clock or SystemClock()
        # The system clock's bound builtin skips a Python-level call on the hot path.
        self._now = time.monotonic if type(clock) is SystemClock else clock.monotonic
        self._random = random
        self._k = config.k
        self._never = 99 if config.never_throttle is None else int(config.never_throttle)
        self._shadow = config.shadow
        self._n = config.buckets
        self._width = config.window / config.buckets
        self._bucket_requests = [0] * self._n
        self._bucket_accepts = [0] * self._n
        self._cur = 0
        self._bucket_end = self._now() + self._width
        self._requests = 0
        self._accepts = 0
        self._throttled = 0
        self._backend_rejected = 0

    def _advance(self, now: float) -> None:
        # Move to the bucket holding ``now``, clearing every bucket passed on the way.
        steps = int((now - self._bucket_end) // self._width) + 1
        n = self._n
        if steps >= n:
            self._bucket_requests = [0] * n
            self._bucket_accepts = [0] * n
            self._requests = self._accepts = 0
            self._cur = (self._cur + steps) % n
        else:
            cur = self._cur
            for _ in range(steps):
                cur = (cur + 1) % n
                self._requests -= self._bucket_requests[cur]
                self._accepts -= self._bucket_accepts[cur]
                self._bucket_requests[cur] = self._bucket_accepts[cur] = 0
            self._cur = cur
        self._bucket_end += steps * self._width

    def try_acquire(self, criticality: Criticality = Criticality.DEFAULT) -> bool:
        """Count a call and decide whether it may be sent (``False``: refuse it locally)."""
        now = self._now()
        if now >= self._bucket_end:
            self._advance(now)
        requests = self._requests
        self._requests = requests + 1
        self._bucket_requests[self._cur] += 1
        excess = requests - self._k * self._accepts
        if excess <= 0 or criticality >= self._never:
            return True
        if self._random() < excess / (requests + 1):
            self._throttled += 1
            return self._shadow
        return True

    def acquire(self, criticality: Criticality = Criticality.DEFAULT) -> None:
        """Like :meth:`try_acquire` but raises :class:`Rejected` (``policy="throttle"``,
        reason ``throttled``, not retryable) when the call is refused locally."""
        if not self.try_acquire(criticality):
            raise Rejected("throttle", "throttled")

    def on_accepted(self) -> None:
        """The backend accepted a call (any answer but an overload refusal)."""
        now = self._now()
        if now >= self._bucket_end:
            self._advance(now)
        self._accepts += 1
        self._bucket_accepts[self._cur] += 1

    def on_rejected(self) -> None:
        """The backend refused a call for overload (e.g. 429/503 with a do-not-retry hint)."""
        self._backend_rejected += 1

    @property
    def requests(self) -> int:
        """Calls attempted within the window."""
        self._refresh()
        return self._requests

    @property
    def accepts(self) -> int:
        """Calls accepted by the backend within the window."""
        self._refresh()
        return self._accepts

    @property
    def reject_probability(self) -> float:
        """``max(0, (requests - k * accepts) / (requests + 1))`` over the current window."""
        self._refresh()
        return max(0.0, (self._requests - self._k * self._accepts) / (self._requests + 1))

    def _refresh(self) -> None:
        now = self._now()
        if now >= self._bucket_end:
            self._advance(now)

    def snapshot(self) -> ThrottleSnapshot:
        """The window's counts, the current probability and the counters."""
        return ThrottleSnapshot(
            name=self.name,
            requests=self.requests,
            accepts=self.accepts,
            reject_probability=self.reject_probability,
            throttled=self._throttled,
            backend_rejected=self._backend_rejected,
            shadow=self._shadow,
        )

    def __repr__(self) -> str:
        return (
            f"AdaptiveThrottle(name={self.name!r}, requests={self._requests}, "
            f"accepts={self._accepts})"
        )
