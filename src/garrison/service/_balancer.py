"""Choosing an instance of a callee: power of two choices, least outstanding, round robin.

Each :class:`Instance` counts the requests outstanding on it (the client raises the count around
each send), so the choice reflects this process's view of load, as Envoy's ``LEAST_REQUEST``
does. Power of two choices (P2C) samples two instances at random and takes the less loaded:
nearly as good as least-outstanding over all instances, without herding every caller onto the
same one.

An ``exclude`` predicate lets outlier detection (quarantine) hide ejected instances; when it
would hide all of them the balancer falls back to the full set (panic mode, as Envoy does),
because sending to a suspect instance beats failing every call.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Literal

from garrison.core import ServiceUnavailable

__all__ = ["Balancer", "Instance"]


class Instance:
    """One reachable instance of a service (a base URL) and its outstanding count."""

    __slots__ = ("outstanding", "url")

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.outstanding = 0

    def __repr__(self) -> str:
        return f"Instance({self.url!r}, outstanding={self.outstanding})"


class Balancer:
    """Picks an instance per call according to ``strategy``."""

    __slots__ = ("_rand", "_rr", "exclude", "filter", "instances", "service", "strategy")

    def __init__(
        self,
        service: str,
        urls: Sequence[str],
        strategy: Literal["p2c", "least_outstanding", "round_robin"] = "p2c",
        *,
        rand: random.Random | None = None,
    ) -> None:
        self.service = service
        self.instances = [Instance(u) for u in urls]
        self.strategy = strategy
        self.exclude: Callable[[Instance], bool] | None = None
        """Hide instances for which this returns True (panic: all hidden -> use all)."""
        self.filter: Callable[[list[Instance]], list[Instance]] | None = None
        """Narrow the pool before the choice (outlier detection plugs in here with its own
        panic threshold); an empty result falls back to the whole pool."""
        self._rand = rand or random.Random()
        self._rr = 0

    def update(self, urls: Sequence[str]) -> None:
        """Replace the instance set, keeping outstanding counts of instances that stay."""
        old = {i.url: i for i in self.instances}
        self.instances = [old.get(u.rstrip("/")) or Instance(u) for u in urls]

    def pick(self) -> Instance:
        """The instance for the next call; :class:`ServiceUnavailable` if there is none."""
        pool = self.instances
        if self.filter is not None and pool:
            pool = self.filter(pool) or pool
        if self.exclude is not None and pool:
            healthy = [i for i in pool if not self.exclude(i)]
            pool = healthy or pool  # panic mode: all excluded -> use everyone
        n = len(pool)
        if n == 0:
            raise ServiceUnavailable(f"no instance of service {self.service!r} is known")
        if n == 1:
            return pool[0]
        if self.strategy == "p2c":
            a, b = self._rand.sample(pool, 2)
            return a if a.outstanding <= b.outstanding else b
        if self.strategy == "least_outstanding":
            # Ties broken by rotation so equal instances share the load.
            start = self._rr = (self._rr + 1) % n
            best = pool[start]
            for k in range(1, n):
                cand = pool[(start + k) % n]
                if cand.outstanding < best.outstanding:
                    best = cand
            return best
        self._rr = (self._rr + 1) % n
        return pool[self._rr]
