"""Bulkhead: cap the calls in flight to a callee, with a bounded, criticality-ordered wait queue.

Theory of operation
-------------------
:class:`Bulkhead` is the sans-I/O core. It counts active calls against ``max_concurrent_calls``
and decides, for a call that finds every slot taken, whether it may wait:

* ``try_acquire()`` takes a free slot or says no, O(1), without allocating.
* ``enqueue(waiter, criticality, timeout)`` queues a :class:`Ticket` holding an opaque waiter
  (the async layer's future) with a deadline on the clock, or raises
  ``Rejected("bulkhead", "full")``. When the queue is full, a newcomer of higher criticality
  displaces the most recent waiter of the lowest criticality queued; an equal or lower newcomer
  is rejected.
* ``release()`` hands the slot straight to the best waiter (highest criticality, then first
  come) without ever freeing it, so no newcomer can overtake the queue; waiters whose deadline
  has passed are timed out on the way.
* ``cancel(ticket)`` withdraws a waiter; ``expire()`` times out every waiter past its deadline.

Methods that change other tickets return them; the caller wakes their waiters and each waiter
reads its fate from ``ticket.state``. Waiters are removed lazily (marked, skipped when popped)
and the queues are compacted when dead entries outnumber live ones, so every operation is O(1)
amortized. Invariant: a ticket is waiting only while every slot is taken.

:class:`AsyncBulkhead` is the thin asyncio layer: futures as waiters, the running loop's timers
(``asyncio.timeout``) for the real queue timeout, and the guarantee that a cancelled waiter
never leaks a slot.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, TypeVar

import msgspec

from garrison.core import Clock, ConfigError, SystemClock, UsageError
from garrison.resilience._base import Criticality, Rejected

__all__ = [
    "AsyncBulkhead",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadMetrics",
    "Ticket",
    "TicketState",
]

W = TypeVar("W")

_LEVELS = len(Criticality)
_NOTHING: tuple[()] = ()


class BulkheadConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Settings of a bulkhead; defaults follow resilience4j (no queue unless asked for).

    Construction validates every field and raises :class:`~garrison.core.ConfigError` naming
    the first bad one.
    """

    max_concurrent_calls: int = 25
    """Calls allowed in flight at once."""
    max_queue: int = 0
    """Calls allowed to wait for a slot when all are taken; 0 rejects at once."""
    queue_timeout: float = 1.0
    """Longest wait in the queue, in seconds, unless a call asks for less."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~garrison.core.ConfigError` naming the first invalid field."""
        for key, low in (("max_concurrent_calls", 1), ("max_queue", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"expected an integer, got {value!r}", key=key)
            if value < low:
                raise ConfigError(f"expected an integer >= {low}, got {value!r}", key=key)
        t = self.queue_timeout
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"expected a finite number >= 0, got {t!r}", key="queue_timeout")


class TicketState(enum.Enum):
    """The fate of a queued call."""

    WAITING = "waiting"
    """In the queue."""
    GRANTED = "granted"
    """Given a slot: the holder must release it."""
    TIMED_OUT = "timed_out"
    """Its queue timeout passed before a slot came free."""
    DISPLACED = "displaced"
    """Pushed out of a full queue by a call of higher criticality."""
    CANCELLED = "cancelled"
    """Withdrawn by its caller."""


_WAITING = TicketState.WAITING


class Ticket(Generic[W]):
    """A place in a bulkhead's queue; ``state`` tells the waiter what became of it."""

    __slots__ = ("criticality", "deadline", "seq", "state", "waiter")

    def __init__(self, waiter: W, criticality: Criticality, deadline: float, seq: int) -> None:
        self.waiter = waiter
        """The opaque object the I/O layer wakes (e.g. a future)."""
        self.criticality = criticality
        """Higher criticality is served first."""
        self.deadline = deadline
        """When the wait ends, on the bulkhead's clock (monotonic seconds)."""
        self.seq = seq
        """Arrival order."""
        self.state = _WAITING
        """What became of the call."""

    def __repr__(self) -> str:
        return f"<Ticket #{self.seq} {self.criticality.name} {self.state.value}>"


@dataclass(frozen=True, slots=True)
class BulkheadMetrics:
    """A snapshot of a bulkhead."""

    active: int
    """Calls holding a slot."""
    waiting: int
    """Calls in the queue."""
    max_concurrent_calls: int
    """The slot limit."""
    max_queue: int
    """The queue limit."""
    rejected_full: int
    """Calls refused because every slot and the queue were taken (displaced ones included)."""
    rejected_timeout: int
    """Queued calls whose queue timeout passed."""


class Bulkhead(Generic[W]):
    """The sans-I/O bulkhead core; ``W`` is the type of the waiters the I/O layer wakes."""

    __slots__ = (
        "_active",
        "_clock",
        "_config",
        "_counts",
        "_dead",
        "_heap",
        "_limit",
        "_max_queue",
        "_queues",
        "_rejected_full",
        "_rejected_timeout",
        "_seq",
        "_waiting",
        "name",
    )

    def __init__(
        self,
        config: BulkheadConfig | None = None,
        *,
        name: str = "bulkhead",
        clock: Clock | None = None,
    ) -> None:
        cfg = config if config is not None else BulkheadConfig()
        self._config = cfg
        self.name = name
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._limit = cfg.max_concurrent_calls
        self._max_queue = cfg.max_queue
        self._active = 0
        self._waiting = 0
        self._counts = [0] * _LEVELS  # waiting tickets per criticality
        self._queues: list[deque[Ticket[W]]] = [deque() for _ in range(_LEVELS)]
        self._heap: list[tuple[float, int, Ticket[W]]] = []  # by deadline, for expire()
        self._dead = 0  # tickets in the queues that no longer wait
        self._seq = 0
        self._rejected_full = 0
        self._rejected_timeout = 0

    # -- deciding ----------------------------------------------------------------------------

    def try_acquire(self) -> bool:
        """Take a free slot if there is one; a ``True`` must be followed by :meth:`release`."""
        if self._active < self._limit:
            self._active += 1
            return True
        return False

    def enqueue(
        self,
        waiter: W,
        criticality: Criticality = Criticality.DEFAULT,
        timeout: float | None = None,
    ) -> tuple[Ticket[W], Sequence[Ticket[W]]]:
        """Queue a call that found no free slot, or raise ``Rejected("bulkhead", "full")``.

        Returns the call's ticket (already ``GRANTED`` if a slot was free after all) and the
        other tickets this decision changed (timed out, or displaced by a more critical call),
        whose waiters must be woken. ``timeout`` defaults to the configured queue timeout; a
        timeout of 0 never waits.
        """
        now = self._clock.monotonic()
        self._seq += 1
        if self._active < self._limit:
            self._active += 1
            ticket = Ticket(waiter, criticality, now, self._seq)
            ticket.state = TicketState.GRANTED
            return ticket, _NOTHING
        wait = self._config.queue_timeout if timeout is None else timeout
        if not wait > 0:  # also catches NaN
            self._rejected_full += 1
            raise Rejected("bulkhead", "full")
        changed: list[Ticket[W]] = []
        if self._waiting >= self._max_queue:
            changed.extend(self.expire(now))
        if self._waiting >= self._max_queue:
            victim = self._lowest_below(criticality)
            if victim is None:
                self._rejected_full += 1
                raise Rejected("bulkhead", "full")
            self._drop(victim, TicketState.DISPLACED, queued=False)
            self._rejected_full += 1
            changed.append(victim)
        ticket = Ticket(waiter, criticality, now + wait, self._seq)
        self._queues[criticality].append(ticket)
        if ticket.deadline != math.inf:
            heapq.heappush(self._heap, (ticket.deadline, ticket.seq, ticket))
        self._counts[criticality] += 1
        self._waiting += 1
        self._maybe_compact()
        return ticket, changed

    def release(self) -> Sequence[Ticket[W]]:
        """Give back a slot; returns the tickets this changed (the one granted the slot, and
        any that timed out on the way), whose waiters must be woken."""
        if not self._waiting:
            if self._active <= 0:
                raise UsageError(f"bulkhead {self.name!r}: release() without a held slot")
            self._active -= 1
            return _NOTHING
        now = self._clock.monotonic()
        changed: list[Ticket[W]] = []
        while (ticket := self._pop_best()) is not None:
            changed.append(ticket)
            if ticket.deadline <= now:
                self._drop(ticket, TicketState.TIMED_OUT, queued=False)
                continue
            self._drop(ticket, TicketState.GRANTED, queued=False)
            break  # the slot passes to the waiter: _active is unchanged
        else:
            self._active -= 1
        self._maybe_compact()
        return changed

    def cancel(self, ticket: Ticket[W], *, timed_out: bool = False) -> bool:
        """Withdraw a waiting ticket (as ``TIMED_OUT`` if ``timed_out``); ``True`` if it was
        still waiting. ``False`` means its fate was already decided: if it was ``GRANTED``, the
        caller holds a slot and must release it."""
        if ticket.state is not _WAITING:
            return False
        self._drop(ticket, TicketState.TIMED_OUT if timed_out else TicketState.CANCELLED)
        self._maybe_compact()
        return True

    def expire(self, now: float | None = None) -> Sequence[Ticket[W]]:
        """Time out every waiting ticket whose deadline has passed; returns them."""
        if now is None:
            now = self._clock.monotonic()
        heap = self._heap
        if not heap or heap[0][0] > now:
            return _NOTHING
        changed: list[Ticket[W]] = []
        while heap and heap[0][0] <= now:
            ticket = heapq.heappop(heap)[2]
            if ticket.state is _WAITING:
                self._drop(ticket, TicketState.TIMED_OUT)
                changed.append(ticket)
        self._maybe_compact()
        return changed

    # -- observing ---------------------------------------------------------------------------

    @property
    def config(self) -> BulkheadConfig:
        """The configuration in force."""
        return self._config

    @property
    def active(self) -> int:
        """Calls holding a slot."""
        return self._active

    @property
    def waiting(self) -> int:
        """Calls in the queue."""
        return self._waiting

    def metrics(self) -> BulkheadMetrics:
        """A snapshot of the counts."""
        return BulkheadMetrics(
            active=self._active,
            waiting=self._waiting,
            max_concurrent_calls=self._limit,
            max_queue=self._max_queue,
            rejected_full=self._rejected_full,
            rejected_timeout=self._rejected_timeout,
        )

    def __repr__(self) -> str:
        return f"<Bulkhead {self.name!r} {self._active}/{self._limit} waiting={self._waiting}>"

    # -- the queue ---------------------------------------------------------------------------

    def _pop_best(self) -> Ticket[W] | None:
        for level in range(_LEVELS - 1, -1, -1):
            if self._counts[level]:
                q = self._queues[level]
                while q:
                    ticket = q.popleft()
                    if ticket.state is _WAITING:
                        return ticket
                    self._dead -= 1
        return None

    def _lowest_below(self, criticality: Criticality) -> Ticket[W] | None:
        """The most recent waiter of the lowest criticality under ``criticality``."""
        for level in range(criticality):
            if self._counts[level]:
                q = self._queues[level]
                while q:
                    ticket = q.pop()
                    if ticket.state is _WAITING:
                        return ticket
                    self._dead -= 1
        return None

    def _drop(self, ticket: Ticket[W], state: TicketState, *, queued: bool = True) -> None:
        """Take a waiting ticket out of the count; ``queued`` if it is still in its deque."""
        if state is TicketState.TIMED_OUT:
            self._rejected_timeout += 1
        ticket.state = state
        self._waiting -= 1
        self._counts[ticket.criticality] -= 1
        if queued:
            self._dead += 1

    def _maybe_compact(self) -> None:
        # Dead entries are dropped lazily; rebuild once they outnumber the live ones, which
        # keeps memory proportional to the queue and the cost O(1) amortized.
        if self._dead > self._waiting + 64 or len(self._heap) > 2 * self._waiting + 64:
            self._compact()

    def _compact(self) -> None:
        for level, q in enumerate(self._queues):
            self._queues[level] = deque(t for t in q if t.state is _WAITING)
        self._heap = [e for e in self._heap if e[2].state is _WAITING]
        heapq.heapify(self._heap)
        self._dead = 0


class AsyncBulkhead:
    """A bulkhead for asyncio tasks: ``await acquire()`` / ``release()``, or ``async with``.

    Rejections raise :class:`Rejected` with ``policy="bulkhead"`` and reason ``"full"`` or
    ``"queue timeout"``. A waiter cancelled at any point never leaks a slot: if the slot had
    already been handed to it, it is passed on.
    """

    __slots__ = ("_clock", "_core")

    def __init__(
        self,
        config: BulkheadConfig | None = None,
        *,
        name: str = "bulkhead",
        clock: Clock | None = None,
    ) -> None:
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._core: Bulkhead[asyncio.Future[None]] = Bulkhead(config, name=name, clock=self._clock)

    @property
    def core(self) -> Bulkhead[asyncio.Future[None]]:
        """The sans-I/O core (for metrics and tests)."""
        return self._core

    def metrics(self) -> BulkheadMetrics:
        """A snapshot of the counts."""
        return self._core.metrics()

    async def acquire(
        self, criticality: Criticality = Criticality.DEFAULT, timeout: float | None = None
    ) -> None:
        """Wait for a slot (at most ``timeout`` seconds, default the queue timeout)."""
        if not self._core.try_acquire():
            await self._wait(criticality, timeout)

    def release(self) -> None:
        """Give back a slot taken with :meth:`acquire`."""
        changed = self._core.release()
        if changed:
            _wake(changed)

    def expire(self) -> int:
        """Reject every waiter whose queue timeout has passed on the clock; how many were.

        The real loop's timers do this on their own; with a fake clock, call it after
        advancing time.
        """
        changed = self._core.expire()
        _wake(changed)
        return len(changed)

    def slot(
        self, criticality: Criticality = Criticality.DEFAULT, timeout: float | None = None
    ) -> _Slot:
        """An async context manager holding a slot for its body."""
        return _Slot(self, criticality, timeout)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def _wait(self, criticality: Criticality, timeout: float | None) -> None:
        core = self._core
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ticket, changed = core.enqueue(fut, criticality, timeout)
        if changed:
            _wake(changed)
        if ticket.state is not _WAITING:
            return  # a slot came free before queueing
        left = ticket.deadline - self._clock.monotonic()
        try:
            # asyncio.timeout rather than wait_for: on 3.11 wait_for swallows a cancellation
            # that races with the hand-over; here a cancel always propagates.
            async with asyncio.timeout(None if left == math.inf else max(left, 0.0)):
                await fut
        except TimeoutError:
            core.cancel(ticket, timed_out=True)  # unless a decision came first
        except BaseException:
            # Cancelled (or worse) while waiting: withdraw, or pass on a slot already handed.
            if not core.cancel(ticket) and ticket.state is TicketState.GRANTED:
                self.release()
            raise
        state = ticket.state
        if state is TicketState.GRANTED:
            return
        if state is TicketState.TIMED_OUT:
            raise Rejected("bulkhead", "queue timeout")
        raise Rejected("bulkhead", "full")


def _wake(tickets: Sequence[Ticket[asyncio.Future[None]]]) -> None:
    for ticket in tickets:
        if not ticket.waiter.done():
            ticket.waiter.set_result(None)


class _Slot:
    """``async with bulkhead.slot(...)``: holds a slot for the body."""

    __slots__ = ("_bulkhead", "_criticality", "_timeout")

    def __init__(
        self, bulkhead: AsyncBulkhead, criticality: Criticality, timeout: float | None
    ) -> None:
        self._bulkhead = bulkhead
        self._criticality = criticality
        self._timeout = timeout

    async def __aenter__(self) -> None:
        await self._bulkhead.acquire(self._criticality, self._timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bulkhead.release()
