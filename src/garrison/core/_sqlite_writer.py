"""Group commit for SQLite: one writer thread, one connection, many callers' operations per
transaction. The durable store and the streams log both write through it.

Theory of operation
-------------------
Callers on the event loop :meth:`~GroupCommitWriter.submit` an operation (a function of the
connection) and await a future. The writer thread takes every operation queued so far (up to
``max_batch``), runs them in one ``BEGIN IMMEDIATE ... COMMIT``, each inside its own
``SAVEPOINT`` so that one failing operation (a stale epoch, a fenced commit) is rolled back
alone, then resolves all their futures with one ``call_soon_threadsafe`` per loop. While a
commit's fsync is under way the next operations queue up, so the number of transactions adapts
to the load by itself: one per operation when idle (lowest latency), few per thousands under
load (highest throughput). No caller hears "done" before the ``COMMIT`` that carries its
operation returned, and with ``synchronous=FULL`` that means the WAL was fsynced.

A transaction of a single operation needs no savepoint: its failure rolls back the whole
transaction, which is then that operation alone (two statements saved per idle commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

__all__ = ["CommitStats", "GroupCommitWriter", "WriterStats"]

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
_Item = tuple[Op, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class CommitStats(Protocol):
    """Where a writer counts its work (a store's own stats object may serve)."""

    commits: int
    """Transactions committed."""
    writes: int
    """Operations they carried (failed ones included)."""


class WriterStats:
    """The default :class:`CommitStats`: two counters."""

    __slots__ = ("commits", "writes")

    def __init__(self) -> None:
        self.commits = 0
        self.writes = 0


class GroupCommitWriter:
    """The single writer of one SQLite database."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        stats: CommitStats | None = None,
        *,
        max_batch: int = 2000,
        what: str = "the SQLite database",
    ) -> None:
        """``connect`` opens the writer's own connection (in the writer thread); ``stats``
        receives the counters; ``what`` names the database in errors."""
        self._connect = connect
        self.stats: CommitStats = stats if stats is not None else WriterStats()
        self._max_batch = max_batch
        self._what = what
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run, name="garrison-sqlite-writer", daemon=True
        )
        self._started = False

    def start(self) -> None:
        """Start the thread."""
        self._started = True
        self._thread.start()

    def submit(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``op``; the future resolves with its result once its transaction committed."""
        if not self._started:
            raise RuntimeError(f"{self._what} is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._q.put((op, fut, loop))
        return fut

    def stop(self) -> None:
        """Commit what is queued, then end the thread (blocking: call from a thread)."""
        if self._started:
            self._q.put(None)
            self._thread.join()
            self._started = False

    def _run(self) -> None:
        conn = self._connect()
        try:
            stop = False
            while not stop:
                first = self._q.get()
                if first is None:
                    break
                items = [first]
                while len(items) < self._max_batch:
                    try:
                        nxt = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    items.append(nxt)
                self._commit(conn, items)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, items: list[_Item]) -> None:
        results: list[tuple[bool, Any]] = []
        committed = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(items) == 1:
                try:
                    results.append((True, items[0][0](conn)))
                except Exception as exc:
                    conn.execute("ROLLBACK")
                    results.append((False, exc))
            else:
                for op, _, _ in items:
                    conn.execute("SAVEPOINT op")
                    try:
                        value = op(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        results.append((False, exc))
                    else:
                        conn.execute("RELEASE op")
                        results.append((True, value))
            if conn.in_transaction:
                conn.execute("COMMIT")
                committed = True
        except Exception as exc:  # the transaction failed as a whole: every operation did
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            results = [(False, exc)] * len(items)
        if committed:
            self.stats.commits += 1
        self.stats.writes += len(items)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for (_, fut, loop), (ok, value) in zip(items, results, strict=True):
            by_loop.setdefault(loop, []).append((fut, ok, value))
        for loop, done in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_resolve, done)


def _resolve(done: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in done:
        if fut.cancelled():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
