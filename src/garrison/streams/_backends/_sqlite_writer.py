"""Group commit for the SQLite log: one writer thread, many callers' operations per transaction.

The same idea as the durable store's writer (``garrison.durable._stores.writer``), kept
separate so the two pillars do not import each other. Callers on the event loop
:meth:`~LogWriter.submit` an operation (a function of the connection) and await a future. The
thread takes every operation queued so far (up to ``max_batch``), runs them in one
``BEGIN IMMEDIATE ... COMMIT``, each inside its own ``SAVEPOINT`` so that one failing operation
(a fenced commit) is rolled back alone, then resolves their futures. While one commit's fsync
runs, the next operations queue up: one transaction per operation when idle, one per thousands
under load. No caller hears "done" before the ``COMMIT`` carrying its operation returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["LogWriter", "WriterStats"]

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]
_Item = tuple[Op, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class WriterStats:
    """Counters: transactions committed and operations they carried."""

    __slots__ = ("commits", "ops")

    def __init__(self) -> None:
        self.commits = 0
        self.ops = 0


class LogWriter:
    """The single writer of one SQLite log database."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], max_batch: int = 4096) -> None:
        self._connect = connect
        self._max_batch = max_batch
        self._q: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="garrison-log-writer", daemon=True)
        self._started = False
        self.stats = WriterStats()

    def start(self) -> None:
        """Start the thread."""
        self._started = True
        self._thread.start()

    def submit(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``op``; the future resolves with its result once its transaction committed."""
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
        try:
            conn.execute("BEGIN IMMEDIATE")
            single = len(items) == 1
            for op, _, _ in items:
                if single:  # no savepoint needed: a failure rolls back the whole transaction
                    try:
                        results.append((True, op(conn)))
                    except Exception as exc:
                        conn.execute("ROLLBACK")
                        results.append((False, exc))
                        break
                    continue
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
        except Exception as exc:  # the transaction failed as a whole: every operation did
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            results = [(False, exc)] * len(items)
        else:
            self.stats.commits += 1
        self.stats.ops += len(items)
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
