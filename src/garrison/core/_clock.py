"""An injectable clock.

Every time-dependent decision in garrison (breakers, limiters, timers, windows) reads time from a
:class:`Clock` rather than from :mod:`time`, so that tests drive it with a :class:`FakeClock`
deterministically and at full speed.

``monotonic()`` is for measuring durations; ``time()`` is wall time (seconds since the epoch) for
anything stored or shown.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time as _time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """The time source of garrison's decision logic."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for durations)."""
        ...

    def time(self) -> float:
        """Wall time, seconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: :func:`time.monotonic`, :func:`time.time` and :func:`asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        """Seconds from :func:`time.monotonic`."""
        return _time.monotonic()

    def time(self) -> float:
        """Seconds since the epoch from :func:`time.time`."""
        return _time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep on the running event loop."""
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock that moves only when a test says so.

    ``advance(dt)`` moves both monotonic and wall time and wakes every ``sleep`` that is due, in
    deadline order. Sleepers are plain futures, so a test can interleave ``advance`` with
    ``await asyncio.sleep(0)`` to let woken tasks run.
    """

    def __init__(self, start: float = 1_000.0, wall_start: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._wall_offset = wall_start - start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        """The fake monotonic time."""
        return self._mono

    def time(self) -> float:
        """The fake wall time (moves with the monotonic time)."""
        return self._mono + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        """Wait until the clock has been advanced by at least ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many ``sleep`` calls are waiting."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake the sleepers that are now due."""
        if not seconds >= 0:  # also rejects NaN, which would freeze every sleeper forever
            raise ValueError(f"FakeClock.advance: seconds must be >= 0, got {seconds}")
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
