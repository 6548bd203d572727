"""The due-time index: deadline -> the items due then, so advancing time pops only what is due.

Theory of operation
-------------------
Items are bucketed by their exact deadline in a dict; a min-heap holds each distinct deadline
once. Scheduling is a dict lookup and a list append (plus one heap push when the deadline is new),
and :meth:`pop_due` pops deadlines from the heap while they are ``<= now``. Its cost is the
number of due items plus ``log(distinct deadlines)`` per due deadline, independent of everything
that is not due: 100 000 idle keys cost nothing.

Windows aligned to the epoch share deadlines (every key's 12:05 window ends at 12:05), so the
heap stays tiny and a bucket holds every window due at that instant. Items whose deadline moved
(a session that grew) are not searched for and removed: the caller re-schedules them and skips
the stale entry when it pops, which keeps every operation O(1) amortised.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["DueIndex"]

T = TypeVar("T")


class DueIndex(Generic[T]):
    """Items keyed by an integer deadline; pop the ones whose deadline has come, in order."""

    __slots__ = ("_buckets", "_heap", "_size")

    def __init__(self) -> None:
        self._buckets: dict[int, list[T]] = {}
        self._heap: list[int] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, deadline: int, item: T) -> None:
        """Schedule ``item`` at ``deadline``."""
        bucket = self._buckets.get(deadline)
        if bucket is None:
            self._buckets[deadline] = [item]
            heapq.heappush(self._heap, deadline)
        else:
            bucket.append(item)
        self._size += 1

    def next_deadline(self) -> int | None:
        """The earliest deadline scheduled, if any."""
        return self._heap[0] if self._heap else None

    def pop_due(self, now: int) -> Iterator[tuple[int, list[T]]]:
        """Yield ``(deadline, items)`` for each deadline ``<= now``, earliest first, removing
        them. Items scheduled while iterating at a deadline ``<= now`` are yielded too."""
        heap = self._heap
        while heap and heap[0] <= now:
            deadline = heapq.heappop(heap)
            items = self._buckets.pop(deadline)
            self._size -= len(items)
            yield deadline, items

    def clear(self) -> None:
        """Drop everything."""
        self._buckets.clear()
        self._heap.clear()
        self._size = 0
