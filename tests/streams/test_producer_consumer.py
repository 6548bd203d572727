"""Producer (batching, per-key order, backpressure) and group consumer (at-least-once)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from garrison.core import InvalidInput, UsageError
from garrison.streams import (
    Consumer,
    LogBackend,
    Producer,
    Record,
    StoredRecord,
    TopicPartition,
    TopicSpec,
    partition_for,
)

Names = Callable[[str], str]


async def _drain_all(log: LogBackend, topic: str) -> list[StoredRecord]:
    out: list[StoredRecord] = []
    for po in await log.offsets(topic):
        off = po.begin
        while True:
            got = await log.read(topic, po.partition, off, max_records=1000)
            if not got:
                break
            out.extend(got)
            off = got[-1].offset + 1
    return out


async def test_producer_keeps_per_key_order_and_partitions_by_key(
    log: LogBackend, names: Names
) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=4))
    async with Producer(log, batch_size=7, linger=0) as prod:
        for i in range(300):
            await prod.send(t, f"{i}".encode(), key=f"k{i % 10}".encode())
        await prod.flush()
        assert prod.sent == 300
        assert prod.pending == 0
    recs = await _drain_all(log, t)
    assert len(recs) == 300
    for r in recs:
        assert r.key is not None
        assert r.partition == partition_for(r.key, 4)
    by_key: dict[bytes, list[int]] = {}
    for r in sorted(recs, key=lambda r: (r.partition, r.offset)):
        assert r.key is not None
        by_key.setdefault(r.key, []).append(int(r.value))
    for seq in by_key.values():
        assert seq == sorted(seq)


async def test_send_and_wait_returns_the_offset(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=2))
    async with Producer(log) as prod:
        off = await prod.send_and_wait(t, b"x", partition=1)
    (r,) = await log.read(t, 1, off)
    assert r.value == b"x"


class _SlowLog:
    """Wraps a backend; its appends wait until the test lets them go."""

    def __init__(self, inner: LogBackend) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.appends = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def append(self, topic: str, partition: int, records: Sequence[Record]) -> list[int]:
        self.appends += 1
        await self.gate.wait()
        return await self.inner.append(topic, partition, records)


async def _until(cond: Callable[[], bool]) -> None:
    """Wait (bounded) for ``cond``: the first send awaits a real read of the topic."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while not cond():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.001)


async def test_backpressure_bounds_pending_records(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=1))
    slow = _SlowLog(log)
    prod = Producer(slow, max_pending=20, batch_size=5, linger=0)  # type: ignore[arg-type]
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for i in range(100):
            await prod.send(t, f"{i}".encode())
            sent += 1

    task = asyncio.create_task(sender())
    await _until(lambda: sent >= 20)
    for _ in range(100):  # let the sender run on: it must stay blocked
        await asyncio.sleep(0)
    assert sent == 20  # the window is full: send waits instead of buffering more
    assert prod.pending == 20
    assert not task.done()
    slow.gate.set()
    await asyncio.wait_for(task, 60)
    await prod.close()
    assert prod.pending == 0
    recs = await log.read(t, 0, 0, max_records=1000)
    assert [int(r.value) for r in recs] == list(range(100))


async def test_append_errors_surface_and_close_the_producer(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=1))
    prod = Producer(log, linger=0)
    await prod.send(t, b"x", headers={"garrison-x": "reserved"})
    with pytest.raises(InvalidInput, match="reserved"):
        await prod.flush()
    with pytest.raises(InvalidInput):
        await prod.send(t, b"y")


async def test_producer_bad_input(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=2))
    with pytest.raises(InvalidInput, match="max_pending"):
        Producer(log, max_pending=0)
    with pytest.raises(InvalidInput, match="linger"):
        Producer(log, linger=-1)
    prod = Producer(log)
    with pytest.raises(InvalidInput, match="value must be bytes"):
        await prod.send(t, "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="key must be bytes"):
        await prod.send(t, b"x", key="k")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="partition 5 out of range"):
        await prod.send(t, b"x", partition=5)
    await prod.close()
    with pytest.raises(UsageError, match="closed"):
        await prod.send(t, b"x")


# -- consumer -----------------------------------------------------------------------------------


async def _consume(c: Consumer, want: int, seen: list[StoredRecord]) -> None:
    while len(seen) < want:
        for recs in (await c.poll(timeout=0.5)).values():
            seen.extend(recs)
        await c.commit()


async def test_consumer_reads_everything_and_resumes_after_commit(
    log: LogBackend, names: Names
) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=3))
    async with Producer(log, linger=0) as prod:
        for i in range(60):
            await prod.send(t, f"{i}".encode(), key=f"k{i}".encode())
    seen: list[StoredRecord] = []
    async with Consumer(log, g, [t], member="c1") as c:
        assert len(c.assignment) == 3
        await asyncio.wait_for(_consume(c, 60, seen), 60)
    assert sorted(int(r.value) for r in seen) == list(range(60))
    async with Producer(log, linger=0) as prod:
        await prod.send(t, b"60", key=b"k60")
    seen2: list[StoredRecord] = []
    async with Consumer(log, g, [t], member="c2") as c:
        await asyncio.wait_for(_consume(c, 1, seen2), 60)
    assert [r.value for r in seen2] == [b"60"]


async def test_two_consumers_share_partitions_and_take_over(log: LogBackend, names: Names) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=4))
    c1 = Consumer(log, g, [t], member="c1")
    c2 = Consumer(log, g, [t], member="c2")
    await c1.start()
    await c2.start()
    await c1.heartbeat()
    assert len(c1.assignment) == len(c2.assignment) == 2
    assert not set(c1.assignment) & set(c2.assignment)
    await c2.stop()
    await c1.heartbeat()
    assert set(c1.assignment) == {TopicPartition(t, p) for p in range(4)}
    assert c1.rebalances >= 2
    await c1.stop()


async def test_consumer_bad_input(log: LogBackend) -> None:
    with pytest.raises(InvalidInput, match="group name"):
        Consumer(log, "bad group", ["t"])
    with pytest.raises(InvalidInput, match="topics"):
        Consumer(log, "g", [])
    with pytest.raises(InvalidInput, match="lease"):
        Consumer(log, "g", ["t"], lease=-1)
    with pytest.raises(InvalidInput, match="start_from"):
        Consumer(log, "g", ["t"], start_from="middle")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="member id"):
        Consumer(log, "g", ["t"], member="no spaces")


async def test_unkeyed_records_fill_one_partition_per_batch(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=3))
    async with Producer(log, batch_size=10, linger=0) as prod:
        for i in range(60):
            await prod.send(t, f"{i}".encode())
    per = [po.end - po.begin for po in await log.offsets(t)]
    assert sum(per) == 60
    assert all(n % 10 == 0 for n in per)  # whole batches, not one record per partition in turn
    assert sum(1 for n in per if n) >= 2  # and spread over the partitions


async def test_send_many_partitions_orders_and_applies_backpressure(
    log: LogBackend, names: Names
) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=3))
    slow = _SlowLog(log)
    prod = Producer(slow, max_pending=25, batch_size=10, linger=0)  # type: ignore[arg-type]
    items = [(f"k{i % 4}".encode(), f"{i}".encode()) for i in range(100)]
    task = asyncio.create_task(prod.send_many(t, items))
    await _until(lambda: prod.pending >= 25)
    for _ in range(100):
        await asyncio.sleep(0)
    assert not task.done()
    assert prod.pending == 25  # the window holds: send_many waits like send
    slow.gate.set()
    await asyncio.wait_for(task, 60)
    await prod.close()
    recs = await _drain_all(log, t)
    assert len(recs) == 100
    for r in recs:
        assert r.key is not None
        assert r.partition == partition_for(r.key, 3)
    for k in range(4):
        seq = [
            int(r.value) for r in sorted(recs, key=lambda r: r.offset) if r.key == f"k{k}".encode()
        ]
        assert seq == sorted(seq)
    with pytest.raises(InvalidInput, match="send_many"):
        await Producer(log).send_many(t, [(b"k", "text")])  # type: ignore[list-item]
