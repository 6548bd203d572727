"""Outlier detection: the load balancer stops sending to instances that fail more than their peers.

Theory of operation
-------------------
The semantics are Envoy's outlier detection, with time read from an injected clock.

* Every result is reported with :meth:`OutlierDetector.on_result`. A success resets the
  instance's consecutive-error counters; a 5xx (or any failure without a status) counts as a
  5xx, a 502/503/504 also as a gateway failure, and a local-origin failure (connect refused,
  reset, timeout) as a gateway failure too, unless ``split_external_local_origin_errors`` is set,
  in which case it counts only towards ``consecutive_local_origin_failure``. Reaching a
  consecutive threshold ejects at once.
* Every ``interval`` (driven by :meth:`OutlierDetector.tick`), instances with at least
  ``success_rate_request_volume`` results in the interval are compared: when there are at least
  ``success_rate_minimum_hosts`` of them, those whose success rate is below
  ``mean - success_rate_stdev_factor x stdev`` are ejected. The failure-percentage check
  (off by default, as in Envoy) ejects those whose failure percentage is at least
  ``failure_percentage_threshold``. Then the interval's counters start again.
* Each detection is enforced with probability ``enforcing_*`` percent (Envoy's knobs, drawn from
  the injected rng). An instance is ejected only if, counting it, at most
  ``max_ejection_percent`` of the pool would be ejected -- **or if none is ejected yet**: like
  Envoy, the first ejection is always allowed whatever the percentage and pool size.
* An ejection lasts ``base_ejection_time x k`` (at most ``max_ejection_time``), ``k`` growing by
  one per ejection and shrinking by one per interval the instance spends back in the pool after
  at least one interval; so a flapping instance stays out longer and longer. It returns to the
  pool as soon as its time is up (on the next :meth:`~OutlierDetector.tick` or
  :meth:`~OutlierDetector.available`; Envoy waits for the next interval).
* :meth:`~OutlierDetector.available` filters the pool for the load balancer. Like Envoy's panic
  threshold, when fewer than ``panic_threshold`` percent of the instances remain it returns all
  of them: an overloaded pool that routes around "bad" instances would melt the last good one,
  and a pool of one with its only instance ejected would have nowhere to send anything.

The success path of :meth:`~OutlierDetector.on_result` is a dict lookup and two additions; the
clock is read only when something is ejected.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Generic, TypeVar

import msgspec

from garrison.core import Clock, ConfigError, SystemClock

from ._base import Listener, PolicyEvent, emit

__all__ = ["OutlierDetector", "OutlierConfig"]

K = TypeVar("K", bound=Hashable)

_GATEWAY = frozenset({502, 503, 504})


class OutlierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Configuration of an :class:`OutlierDetector`; names and defaults are Envoy's."""

    consecutive_5xx: int = 5
    """Consecutive 5xx (or failures without a status) that eject an instance; 0 disables."""
    consecutive_gateway_failure: int = 5
    """Consecutive 502/503/504 (and local-origin failures, unless split) that eject; 0 disables."""
    consecutive_local_origin_failure: int = 5
    """Consecutive local-origin failures that eject when errors are split; 0 disables."""
    split_external_local_origin_errors: bool = False
    """Count local-origin failures (connect, reset, timeout) apart from the peer's answers."""
    enforcing_consecutive_5xx: float = 100.0
    """Percent chance that a consecutive-5xx detection ejects."""
    enforcing_consecutive_gateway_failure: float = 0.0
    """Percent chance that a consecutive-gateway-failure detection ejects (Envoy: off)."""
    enforcing_consecutive_local_origin_failure: float = 100.0
    """Percent chance that a consecutive-local-origin detection ejects."""
    interval: float = 10.0
    """Seconds between success-rate / failure-percentage evaluations."""
    base_ejection_time: float = 30.0
    """Seconds of the first ejection; the k-th ejection in a row lasts k times this."""
    max_ejection_time: float = 300.0
    """Cap of an ejection's length, in seconds."""
    max_ejection_percent: float = 10.0
    """Most of the pool that may be ejected at once, in percent (one instance always may)."""
    success_rate_minimum_hosts: int = 5
    """Instances with enough volume needed before success rates are compared."""
    success_rate_request_volume: int = 100
    """Results an instance needs in an interval to take part in the success-rate check."""
    success_rate_stdev_factor: float = 1.9
    """Ejected when the success rate is below mean - factor x stdev (Envoy's 1900 / 1000)."""
    enforcing_success_rate: float = 100.0
    """Percent chance that a success-rate detection ejects."""
    failure_percentage_threshold: float = 85.0
    """Ejected when the failure percentage in an interval is at least this."""
    failure_percentage_minimum_hosts: int = 5
    """Instances with enough volume needed before the failure-percentage check runs."""
    failure_percentage_request_volume: int = 50
    """Results an instance needs in an interval to take part in the failure-percentage check."""
    enforcing_failure_percentage: float = 0.0
    """Percent chance that a failure-percentage detection ejects (Envoy: off)."""
    panic_threshold: float = 50.0
    """Below this percent of instances available, route to all of them; 0 never does."""

    def __post_init__(self) -> None:
        for name in (
            "consecutive_5xx",
            "consecutive_gateway_failure",
            "consecutive_local_origin_failure",
            "success_rate_minimum_hosts",
            "success_rate_request_volume",
            "failure_percentage_minimum_hosts",
            "failure_percentage_request_volume",
        ):
            v = getattr(self, name)
            _require(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                name,
                "an integer >= 0",
                v,
            )
        for name in (
            "enforcing_consecutive_5xx",
            "enforcing_consecutive_gateway_failure",
            "enforcing_consecutive_local_origin_failure",
            "enforcing_success_rate",
            "enforcing_failure_percentage",
            "max_ejection_percent",
            "failure_percentage_threshold",
            "panic_threshold",
        ):
            v = getattr(self, name)
            _require(_finite(v) and 0 <= v <= 100, name, "a percentage from 0 to 100", v)
        for name in ("interval", "base_ejection_time"):
            v = getattr(self, name)
            _require(_finite(v) and v > 0, name, "seconds > 0", v)
        _require(
            _finite(self.max_ejection_time) and self.max_ejection_time >= self.base_ejection_time,
            "max_ejection_time",
            f"seconds >= base_ejection_time ({self.base_ejection_time})",
            self.max_ejection_time,
        )
        _require(
            _finite(self.success_rate_stdev_factor) and self.success_rate_stdev_factor >= 0,
            "success_rate_stdev_factor",
            "a number >= 0",
            self.success_rate_stdev_factor,
        )


class _Host:
    __slots__ = (
        "backoff",
        "c5xx",
        "cgw",
        "clocal",
        "ejected",
        "ejections",
        "failures",
        "requests",
        "unejected_at",
    )

    def __init__(self) -> None:
        self.requests = 0  # results in the current interval
        self.failures = 0
        self.c5xx = 0
        self.cgw = 0
        self.clocal = 0
        self.ejected = False
        self.ejections = 0  # in all, a metric
        self.backoff = 0  # Envoy's eject-time multiplier
        self.unejected_at: float | None = None


class OutlierDetector(Generic[K]):
    """Ejects failing instances of a pool (see the module docstring).

    Instances are any hashable values (URLs, ids). They join the pool on their first result or
    through :meth:`update_pool`; the pool size is what ``max_ejection_percent`` is a share of,
    so a load balancer that knows its instances should call :meth:`update_pool`.
    Listeners receive ``ejected`` and ``unejected`` events (:class:`PolicyEvent`).
    """

    __slots__ = (
        "_ejected",
        "_hosts",
        "_next_interval",
        "_next_uneject",
        "_now",
        "_rng",
        "config",
        "listeners",
        "name",
    )

    def __init__(
        self,
        config: OutlierConfig | None = None,
        *,
        name: str = "",
        clock: Clock | None = None,
        rng: random.Random | None = None,
        listeners: Iterable[Listener] = (),
    ) -> None:
        self.config = config = config or OutlierConfig()
        self.name = name
        """The edge or pool this detector watches, used in events."""
        self.listeners: list[Listener] = list(listeners)
        """Receivers of ``ejected`` / ``unejected`` events."""
        clock = clock or SystemClock()
        self._now = time.monotonic if type(clock) is SystemClock else clock.monotonic
        self._rng = rng or random.Random()
        self._hosts: dict[K, _Host] = {}
        self._ejected: dict[K, float] = {}  # instance -> when it returns
        self._next_uneject = math.inf
        self._next_interval = self._now() + config.interval

    # -- the load balancer's side -------------------------------------------------------------

    def available(self, instances: Sequence[K]) -> list[K]:
        """The instances of ``instances`` not ejected, or all of them in panic (see above).

        When nothing is ejected the argument itself is returned if it is a list: do not mutate it.
        """
        if self._ejected:
            now = self._now()
            if now >= self._next_uneject:
                self._uneject_due(now)
        if not self._ejected:
            return instances if isinstance(instances, list) else list(instances)
        ejected = self._ejected
        ok = [i for i in instances if i not in ejected]
        if len(ok) * 100 < self.config.panic_threshold * len(instances):
            return list(instances)
        return ok

    def update_pool(self, instances: Iterable[K]) -> None:
        """Make the pool exactly ``instances``: new ones are tracked, missing ones forgotten."""
        keep = set(instances)
        for gone in [h for h in self._hosts if h not in keep]:
            del self._hosts[gone]
            if self._ejected.pop(gone, None) is not None:
                self._next_uneject = min(self._ejected.values(), default=math.inf)
        for inst in keep:
            if inst not in self._hosts:
                self._hosts[inst] = _Host()

    # -- results ---------------------------------------------------------------------------

    def on_result(
        self, instance: K, ok: bool, *, status: int | None = None, local_origin: bool = False
    ) -> None:
        """Report the result of one call to ``instance``.

        ``ok`` is whether the instance served it well: report a 4xx the caller caused as ok.
        ``status`` is the HTTP status if there was an answer; ``local_origin`` marks failures
        that happened on this side before an answer (connect refused, reset, timeout).
        """
        h = self._hosts.get(instance)
        if h is None:
            h = self._hosts[instance] = _Host()
        h.requests += 1
        if ok:
            if h.c5xx or h.cgw or h.clocal:
                h.c5xx = h.cgw = h.clocal = 0
            return
        h.failures += 1
        if h.ejected:
            return  # late results of calls sent before the ejection
        p = self.config
        if local_origin and p.split_external_local_origin_errors:
            h.clocal += 1
            if (
                p.consecutive_local_origin_failure
                and h.clocal >= p.consecutive_local_origin_failure
            ):
                h.clocal = 0
                self._detected(
                    instance,
                    h,
                    "consecutive_local_origin_failure",
                    p.enforcing_consecutive_local_origin_failure,
                )
            return
        if local_origin or (status is not None and status in _GATEWAY):
            h.cgw += 1
        else:
            h.cgw = 0
        h.c5xx += 1
        if p.consecutive_gateway_failure and h.cgw >= p.consecutive_gateway_failure:
            h.cgw = 0
            if self._detected(
                instance, h, "consecutive_gateway_failure", p.enforcing_consecutive_gateway_failure
            ):
                h.c5xx = 0
                return
        if p.consecutive_5xx and h.c5xx >= p.consecutive_5xx:
            h.c5xx = 0
            self._detected(instance, h, "consecutive_5xx", p.enforcing_consecutive_5xx)

    # -- time ------------------------------------------------------------------------------

    def tick(self) -> None:
        """Return instances whose time is up and run the interval evaluation when it is due.

        Cheap when nothing is due; call it whenever convenient, or sleep :meth:`next_wakeup`
        between calls. A late call evaluates once, over everything since the last evaluation.
        """
        now = self._now()
        if now >= self._next_uneject:
            self._uneject_due(now)
        if now >= self._next_interval:
            self._next_interval = now + self.config.interval
            self._evaluate(now)

    def next_wakeup(self) -> float:
        """Seconds until :meth:`tick` has something to do (0 if it has now)."""
        return max(0.0, min(self._next_interval, self._next_uneject) - self._now())

    # -- introspection ---------------------------------------------------------------------

    @property
    def ejected(self) -> Mapping[K, float]:
        """Ejected instances and the monotonic time each returns (a read-only view)."""
        return MappingProxyType(self._ejected)

    def is_ejected(self, instance: K) -> bool:
        """Whether ``instance`` is ejected now."""
        return instance in self._ejected

    def ejections(self, instance: K) -> int:
        """How many times ``instance`` has been ejected in all."""
        h = self._hosts.get(instance)
        return 0 if h is None else h.ejections

    @property
    def pool_size(self) -> int:
        """How many instances are tracked."""
        return len(self._hosts)

    # -- internals -------------------------------------------------------------------------

    def _detected(self, instance: K, h: _Host, reason: str, enforcing: float) -> bool:
        if h.ejected or enforcing <= 0:
            return False
        if enforcing < 100 and self._rng.random() * 100 >= enforcing:
            return False
        n = len(self._ejected)
        if n and (n + 1) * 100 > self.config.max_ejection_percent * len(self._hosts):
            return False  # Envoy's "ejections_overflow"
        p = self.config
        if p.base_ejection_time * h.backoff < p.max_ejection_time:
            h.backoff += 1
        duration = min(p.base_ejection_time * h.backoff, p.max_ejection_time)
        now = self._now()
        h.ejected = True
        h.ejections += 1
        h.c5xx = h.cgw = h.clocal = 0
        until = now + duration
        self._ejected[instance] = until
        if until < self._next_uneject:
            self._next_uneject = until
        emit(
            self.listeners,
            PolicyEvent(
                "outlier",
                self.name,
                "ejected",
                now,
                {
                    "instance": instance,
                    "reason": reason,
                    "duration": duration,
                    "ejections": h.ejections,
                },
            ),
        )
        return True

    def _uneject_due(self, now: float) -> None:
        due = [i for i, until in self._ejected.items() if until <= now]
        for inst in due:
            del self._ejected[inst]
            h = self._hosts[inst]
            h.ejected = False
            h.unejected_at = now
            h.requests = h.failures = 0
            emit(
                self.listeners,
                PolicyEvent("outlier", self.name, "unejected", now, {"instance": inst}),
            )
        self._next_uneject = min(self._ejected.values(), default=math.inf)

    def _evaluate(self, now: float) -> None:
        p = self.config
        for h in self._hosts.values():
            if (
                not h.ejected
                and h.backoff
                and h.unejected_at is not None
                and now - h.unejected_at >= p.interval
            ):
                h.backoff -= 1
        hosts = list(self._hosts.items())
        if p.enforcing_success_rate > 0:
            volume = max(1, p.success_rate_request_volume)
            rated = [
                (i, h, 1.0 - h.failures / h.requests) for i, h in hosts if h.requests >= volume
            ]
            if rated and len(rated) >= p.success_rate_minimum_hosts:
                mean = math.fsum(r for _, _, r in rated) / len(rated)
                var = math.fsum((r - mean) ** 2 for _, _, r in rated) / len(rated)
                threshold = mean - p.success_rate_stdev_factor * math.sqrt(var)
                for i, h, r in rated:
                    if r < threshold:
                        self._detected(i, h, "success_rate", p.enforcing_success_rate)
        if p.enforcing_failure_percentage > 0:
            volume = max(1, p.failure_percentage_request_volume)
            counted = [(i, h) for i, h in hosts if h.requests >= volume]
            if counted and len(counted) >= p.failure_percentage_minimum_hosts:
                for i, h in counted:
                    if h.failures * 100 >= p.failure_percentage_threshold * h.requests:
                        self._detected(i, h, "failure_percentage", p.enforcing_failure_percentage)
        for h in self._hosts.values():
            h.requests = h.failures = 0


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _require(ok: bool, field: str, expected: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"expected {expected}, got {value!r}", key=field)
