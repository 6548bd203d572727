"""The producer: batching per partition, linger, and a bounded in-flight window (backpressure).

Theory of operation
-------------------
``send`` puts a record in its partition's buffer and returns at once, unless the window is full:
the records buffered or being appended number ``max_pending`` or more, and then ``send`` waits
until an append completes. So a slow log (fsync-bound disk, a distant server) slows its
producers down instead of letting their buffers grow without bound.

Each partition with buffered records has one drain task: it lingers ``linger`` seconds (so a
burst fills a batch), then appends up to ``batch_size`` records at a time until the buffer is
empty. One append in flight per partition keeps the records of a key in ``send`` order; the
partitions drain concurrently, and the log's group commit puts their appends in the same
transactions. While an append is in flight the next batch fills up, so batches grow with load.

A failed append fails every record of its batch; the error is raised by the next ``send``,
``flush`` or ``close`` (and by ``send_and_wait`` of its records), and the producer refuses new
records from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import zlib
from collections.abc import Iterable, Mapping

from garrison.core import InvalidInput, UsageError

from ._backends.base import LogBackend, Record, partition_for, validate_name

__all__ = ["Producer"]

_crc32 = zlib.crc32  # partition_for, inlined in the hot path


class _Buffer:
    __slots__ = ("partition", "records", "task", "topic", "waiters")

    def __init__(self, topic: str = "", partition: int = 0) -> None:
        self.topic = topic
        self.partition = partition
        self.records: list[Record] = []
        self.waiters: list[tuple[int, asyncio.Future[int]]] = []  # (index in records, future)
        self.task: asyncio.Task[None] | None = None


class Producer:
    """Sends records to a log's topics, batched per partition, with backpressure.

    ``max_pending`` bounds the records buffered or in flight (``send`` waits beyond it);
    ``batch_size`` the records per append; ``linger`` how long a partition waits for more
    records before appending.
    """

    def __init__(
        self,
        log: LogBackend,
        *,
        max_pending: int = 10_000,
        batch_size: int = 1_000,
        linger: float = 0.002,
    ) -> None:
        for name, v in (("max_pending", max_pending), ("batch_size", batch_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise InvalidInput(f"Producer: {name} must be an int >= 1, got {v!r}")
        if not isinstance(linger, int | float) or not 0 <= linger <= 10:
            raise InvalidInput(f"Producer: linger must be seconds in [0, 10], got {linger!r}")
        self._log = log
        self._max_pending = max_pending
        self._batch_size = batch_size
        self._linger = float(linger)
        self._topics: dict[str, list[_Buffer]] = {}  # a buffer per partition, by topic
        self._pending = 0
        self._space = asyncio.Event()
        self._space.set()
        self._rr = itertools.count()
        self._unkeyed: dict[str, int] = {}
        self._error: BaseException | None = None
        self._closed = False
        self.sent = 0
        """Records acknowledged by the log."""

    @property
    def pending(self) -> int:
        """Records buffered or being appended."""
        return self._pending

    async def _partition_buffers(self, topic: str) -> list[_Buffer]:
        bufs = self._topics.get(topic)
        if bufs is None:
            validate_name("topic", topic)
            n = (await self._log.describe_topic(topic)).partitions
            bufs = self._topics.setdefault(topic, [_Buffer(topic, p) for p in range(n)])
        return bufs

    def _buffers(self) -> list[_Buffer]:
        return [b for bufs in self._topics.values() for b in bufs]

    def _sticky(self, topic: str, bufs: list[_Buffer]) -> _Buffer:
        """The buffer of an unkeyed record: the same partition until its buffer holds a batch,
        then the next (Kafka's sticky partitioner): full batches, spread over time."""
        p = self._unkeyed.get(topic)
        if p is None or len(bufs[p].records) >= self._batch_size:
            p = next(self._rr) % len(bufs)
            self._unkeyed[topic] = p
        return bufs[p]

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise UsageError("the producer is closed")

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timestamp: int = 0,
        partition: int | None = None,
        id: str | None = None,
    ) -> None:
        """Queue a record (waiting while the in-flight window is full). The partition is the
        key's (:func:`partition_for`), for unkeyed records one partition per batch in turn, or
        ``partition``."""
        # The hot path of ingest: no extra coroutine, no per-record allocations beyond the
        # Record (the same checks as _enqueue, inlined).
        if self._error is not None or self._closed:
            self._check()
        bufs = self._topics.get(topic)
        if (
            bufs is None
            or partition is not None
            or headers is not None
            or value.__class__ is not bytes
            or (key is not None and key.__class__ is not bytes)
            or self._pending >= self._max_pending
        ):
            await self._enqueue(topic, value, key, headers, timestamp, partition, id, None)
            return
        buf = bufs[_crc32(key) % len(bufs)] if key is not None else self._sticky(topic, bufs)
        buf.records.append(Record(value=value, key=key, timestamp=timestamp, id=id))
        self._pending += 1
        if buf.task is None:
            buf.task = asyncio.get_running_loop().create_task(self._drain(buf))

    async def send_many(self, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> None:
        """Queue ``(key, value)`` pairs, as :meth:`send` would one by one (same partitioning,
        order and backpressure), with less work per record: for callers that receive batches
        (a gateway taking a device's buffered readings)."""
        bufs = await self._partition_buffers(topic)
        loop = asyncio.get_running_loop()
        n = len(bufs)
        for key, value in items:
            if self._error is not None or self._closed:
                self._check()
            if value.__class__ is not bytes or (key is not None and key.__class__ is not bytes):
                raise InvalidInput("send_many: keys must be bytes or None and values bytes")
            while self._pending >= self._max_pending:
                self._space.clear()
                await self._space.wait()
                self._check()
            buf = bufs[_crc32(key) % n] if key is not None else self._sticky(topic, bufs)
            buf.records.append(Record(value=value, key=key))
            self._pending += 1
            if buf.task is None:
                buf.task = loop.create_task(self._drain(buf))

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timestamp: int = 0,
        partition: int | None = None,
        id: str | None = None,
    ) -> int:
        """Send a record and wait until the log stored it; its offset."""
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._enqueue(topic, value, key, headers, timestamp, partition, id, fut)
        return await fut

    async def _enqueue(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Mapping[str, str] | None,
        timestamp: int,
        partition: int | None,
        id: str | None,
        fut: asyncio.Future[int] | None,
    ) -> None:
        self._check()
        if not isinstance(value, bytes):
            raise InvalidInput(f"value must be bytes, got {type(value).__name__}")
        if key is not None and not isinstance(key, bytes):
            raise InvalidInput(f"key must be bytes or None, got {type(key).__name__}")
        bufs = await self._partition_buffers(topic)
        n = len(bufs)
        if partition is None:
            buf = bufs[partition_for(key, n)] if key is not None else self._sticky(topic, bufs)
        elif not isinstance(partition, int) or not 0 <= partition < n:
            raise InvalidInput(f"partition {partition!r} out of range for topic {topic!r} ({n})")
        else:
            buf = bufs[partition]
        while self._pending >= self._max_pending:
            self._space.clear()
            await self._space.wait()
            self._check()
        record = (
            Record(value=value, key=key, timestamp=timestamp, id=id)
            if headers is None
            else Record(value=value, key=key, headers=dict(headers), timestamp=timestamp, id=id)
        )
        if fut is not None:
            buf.waiters.append((len(buf.records), fut))
        buf.records.append(record)
        self._pending += 1
        if buf.task is None:
            buf.task = asyncio.get_running_loop().create_task(self._drain(buf))

    async def _drain(self, buf: _Buffer) -> None:
        topic, partition = buf.topic, buf.partition
        try:
            if self._linger > 0 and len(buf.records) < self._batch_size:
                await asyncio.sleep(self._linger)
            while buf.records:
                batch = buf.records[: self._batch_size]
                del buf.records[: len(batch)]
                waiters = [(i, f) for i, f in buf.waiters if i < len(batch)]
                buf.waiters = [(i - len(batch), f) for i, f in buf.waiters if i >= len(batch)]
                try:
                    offsets = await self._log.append(topic, partition, batch)
                except Exception as exc:
                    self._error = self._error or exc
                    for _, f in waiters:
                        if not f.done():
                            f.set_exception(exc)
                    self._fail_all(exc)
                    return
                finally:
                    self._pending -= len(batch)
                    self._space.set()
                self.sent += len(batch)
                for i, f in waiters:
                    if not f.done():
                        f.set_result(offsets[i])
        finally:
            buf.task = None

    def _fail_all(self, exc: BaseException) -> None:
        for buf in self._buffers():
            self._pending -= len(buf.records)
            buf.records.clear()
            for _, f in buf.waiters:
                if not f.done():
                    f.set_exception(exc)
            buf.waiters.clear()
        self._space.set()

    async def flush(self) -> None:
        """Wait until every record sent so far is stored; raise the first append error."""
        while True:
            tasks = [b.task for b in self._buffers() if b.task is not None]
            if not tasks:
                break
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Flush, then refuse new records."""
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            for b in self._buffers():
                if b.task is not None:
                    b.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await b.task

    async def __aenter__(self) -> Producer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
