"""The log contract (topics, append, read, offsets, retention, bad input) on every backend."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from garrison.core import ConfigError, FakeClock, InvalidInput
from garrison.streams._backends import open_log
from garrison.streams._backends.base import (
    MAX_RECORD_BYTES,
    LogBackend,
    PartitionOffsets,
    Record,
    TopicSpec,
    partition_for,
)
from garrison.streams._errors import LogClosed, RecordTooLarge, TopicExists, TopicNotFound

Names = Callable[[str], str]


async def test_create_describe_list_delete(log: LogBackend, names: Names) -> None:
    t = names("orders")
    info = await log.create_topic(TopicSpec(name=t, partitions=4, retention_ms=60_000))
    assert info.name == t
    assert info.partitions == 4
    assert info.spec.retention_ms == 60_000
    assert info.offsets == tuple(PartitionOffsets(p, 0, 0) for p in range(4)) or all(
        o.begin == o.end for o in info.offsets
    )
    assert t in await log.list_topics()
    again = await log.create_topic(TopicSpec(name=t, partitions=9))  # exist_ok: unchanged
    assert again.partitions == 4
    with pytest.raises(TopicExists):
        await log.create_topic(TopicSpec(name=t, partitions=4), exist_ok=False)
    assert (await log.describe_topic(t)).spec == info.spec
    assert await log.delete_topic(t) is True
    assert await log.delete_topic(t) is False
    assert t not in await log.list_topics()
    with pytest.raises(TopicNotFound, match=t):
        await log.describe_topic(t)
    with pytest.raises(TopicNotFound):
        await log.append(t, 0, [Record(value=b"x")])


async def test_append_read_in_order_with_offsets(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=2))
    recs = [
        Record(value=f"v{i}".encode(), key=b"k", headers={"n": str(i)}, timestamp=1000 + i)
        for i in range(10)
    ]
    offs = await log.append(t, 1, recs[:4])
    offs += await log.append(t, 1, recs[4:])
    assert offs == sorted(offs)
    assert len(set(offs)) == 10
    got = await log.read(t, 1, offs[0])
    assert [r.value for r in got] == [r.value for r in recs]
    assert [r.offset for r in got] == offs
    assert got[3].headers == {"n": "3"}
    assert got[3].timestamp == 1003
    assert got[3].key == b"k"
    assert all(r.topic == t and r.partition == 1 for r in got)
    # From the middle, with a limit.
    mid = await log.read(t, 1, offs[5], max_records=2)
    assert [r.offset for r in mid] == offs[5:7]
    # Other partition untouched; end offsets moved.
    assert await log.read(t, 0, 0) == []
    po = await log.offsets(t)
    assert po[1].end > offs[-1]
    assert po[1].begin <= offs[0]
    assert po[0].begin == po[0].end


async def test_unset_timestamp_is_stamped_with_append_time(
    log: LogBackend, names: Names, clock: FakeClock
) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t))
    await log.append(t, 0, [Record(value=b"x")])
    (r,) = await log.read(t, 0, 0)
    assert r.timestamp > 0


async def test_pipelined_appends_keep_call_order(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t))
    calls = [log.append(t, 0, [Record(value=f"{i}".encode())]) for i in range(50)]
    results = await asyncio.gather(*calls)
    got = await log.read(t, 0, 0, max_records=100)
    assert [r.value for r in got] == [f"{i}".encode() for i in range(50)]
    assert [o for (o,) in results] == [r.offset for r in got]


async def test_read_waits_for_new_records(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t))
    waiter = asyncio.create_task(log.read(t, 0, 0, timeout=60))
    await asyncio.sleep(0)
    assert not waiter.done()
    await log.append(t, 0, [Record(value=b"late")])
    got = await asyncio.wait_for(waiter, 30)
    assert [r.value for r in got] == [b"late"]


async def test_read_times_out_empty(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t))
    assert await log.read(t, 0, 0, timeout=0.01) == []


async def test_read_sees_appends_of_another_instance(
    log: LogBackend, log_url: str, names: Names
) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t))
    other = open_log(log_url)
    await other.open()
    try:
        waiter = asyncio.create_task(log.read(t, 0, 0, timeout=60))
        await asyncio.sleep(0)
        await other.append(t, 0, [Record(value=b"from-other")])
        got = await asyncio.wait_for(waiter, 30)
        assert [r.value for r in got] == [b"from-other"]
    finally:
        await other.close()


async def test_retention_by_size_removes_oldest_whole_records(
    log: LogBackend, names: Names
) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, retention_bytes=1000))
    for i in range(10):
        await log.append(t, 0, [Record(value=bytes([i]) * 300)])
    await log.apply_retention()

    async def trimmed() -> list[PartitionOffsets]:
        for _ in range(600):
            po = await log.offsets(t)
            if po[0].begin > 0:
                return po
            await asyncio.sleep(0.05)
        raise AssertionError("retention never removed anything")

    await trimmed()
    got = await log.read(t, 0, 0, max_records=100)
    assert got[-1].value == bytes([9]) * 300  # the newest always stays
    assert sum(len(r.value) for r in got) <= 1000
    assert [r.value[0] for r in got] == list(range(10 - len(got), 10))  # a contiguous tail


async def test_retention_by_age(
    log: LogBackend, log_url: str, names: Names, clock: FakeClock
) -> None:
    if not log_url.startswith("sqlite"):
        pytest.skip("age retention runs on the server's own clock on this backend")
    t = names("t")
    await log.create_topic(TopicSpec(name=t, retention_ms=10_000))
    await log.append(t, 0, [Record(value=b"old1"), Record(value=b"old2")])
    clock.advance(8)
    await log.append(t, 0, [Record(value=b"young")])
    assert await log.apply_retention() == 0
    clock.advance(5)
    assert await log.apply_retention() == 2
    got = await log.read(t, 0, 0)
    assert [r.value for r in got] == [b"young"]
    assert got[0].offset == 2  # offsets never reused
    assert (await log.offsets(t))[0] == PartitionOffsets(0, 2, 3)


def test_partition_for_is_stable_and_in_range() -> None:
    assert partition_for(b"battery-7", 12) == partition_for(b"battery-7", 12)
    assert partition_for(b"battery-7", 12) == 7  # pinned: CRC-32, the same on every backend
    assert {partition_for(f"k{i}".encode(), 5) for i in range(100)} == set(range(5))


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        TopicSpec(name="", partitions=1),
        TopicSpec(name="has.dot"),
        TopicSpec(name="has space"),
        TopicSpec(name="x" * 101),
        TopicSpec(name="ok", partitions=0),
        TopicSpec(name="ok", partitions=5000),
        TopicSpec(name="ok", retention_ms=0),
        TopicSpec(name="ok", retention_bytes=-1),
    ],
)
async def test_bad_topic_specs(log: LogBackend, spec: TopicSpec) -> None:
    with pytest.raises(InvalidInput):
        await log.create_topic(spec)


async def test_bad_appends_and_reads(log: LogBackend, names: Names) -> None:
    t = names("t")
    await log.create_topic(TopicSpec(name=t, partitions=2))
    with pytest.raises(InvalidInput, match="partition 2 out of range"):
        await log.append(t, 2, [Record(value=b"x")])
    with pytest.raises(InvalidInput, match="partition"):
        await log.read(t, -1, 0)
    with pytest.raises(InvalidInput, match="offset"):
        await log.read(t, 0, -5)
    with pytest.raises(InvalidInput, match="max_records"):
        await log.read(t, 0, 0, max_records=0)
    with pytest.raises(RecordTooLarge, match="limit"):
        await log.append(t, 0, [Record(value=b"x" * (MAX_RECORD_BYTES + 1))])
    with pytest.raises(InvalidInput, match="reserved"):
        await log.append(t, 0, [Record(value=b"x", headers={"Nats-Msg-Id": "1"})])
    with pytest.raises(InvalidInput, match="topic name"):
        await log.append("bad name", 0, [Record(value=b"x")])
    with pytest.raises(TopicNotFound):
        await log.read(names("missing"), 0, 0)
    # Nothing of a rejected batch was stored.
    assert await log.read(t, 0, 0) == []


async def test_closed_log_refuses(log_url: str, names: Names) -> None:
    log = open_log(log_url)
    await log.open()
    t = names("t")
    await log.create_topic(TopicSpec(name=t))
    await log.close()
    with pytest.raises(LogClosed):
        await log.append(t, 0, [Record(value=b"x")])


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "expected a log URL"),
        ("kafka://x", "unknown log URL scheme 'kafka'"),
        ("sqlite://", "expected sqlite:///"),
        ("sqlite://host/x.db", "expected sqlite:///"),
        ("sqlite:///x.db?fsync=1", "unknown sqlite option"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous must be"),
        ("memory://x", "expected memory://"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        open_log(url)


async def test_sqlite_file_in_missing_directory(tmp_path: object) -> None:
    log = open_log(f"sqlite:///{tmp_path}/nope/log.db")
    with pytest.raises(ConfigError, match="does not exist"):
        await log.open()


async def test_sqlite_not_a_database(tmp_path: object) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "junk.db"
    p.write_bytes(b"this is not sqlite" * 100)
    log = open_log(f"sqlite:///{p}")
    with pytest.raises(ConfigError, match="not a database"):
        await log.open()


async def test_memory_url_works() -> None:
    log = open_log("memory://")
    await log.open()
    try:
        await log.create_topic(TopicSpec(name="m"))
        await log.append("m", 0, [Record(value=b"x")])
        assert [r.value for r in await log.read("m", 0, 0)] == [b"x"]
    finally:
        await log.close()
