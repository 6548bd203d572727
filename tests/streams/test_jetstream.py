"""What is particular to the JetStream backend, against the real local NATS server.

The contract itself runs on JetStream through the ``log`` fixture (test_*_contract.py); here:
the URL and its options, dedupe of repeated publishes, fencing by KV revision across
connections, lease expiry across connections, retention mapped to stream limits, reconnects,
effectively-once delivery when a transaction is interrupted after its commit point.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from garrison.core import ConfigError, FakeClock, TransportError
from garrison.streams._backends import open_log
from garrison.streams._backends._jetstream_config import parse_url
from garrison.streams._backends._jetstream_tx import Delivery
from garrison.streams._backends.base import (
    OutputRecord,
    Record,
    StateChange,
    TopicPartition,
    TopicSpec,
    Transaction,
)
from garrison.streams._backends.jetstream import JetStreamLog
from garrison.streams._errors import Fenced, LogClosed, NotAMember, TopicNotFound

from .test_jetstream_support import drop_jetstream, jetstream_url

Names = Callable[[str], str]
LEASE = 10.0


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """A fresh log on the local server (skipped when unreachable, unless CI=true)."""
    u = await jetstream_url()
    yield u
    await drop_jetstream(u)


async def _open(url: str, clock: FakeClock | None = None) -> JetStreamLog:
    log = open_log(url, clock=clock)
    assert isinstance(log, JetStreamLog)
    await log.open()
    return log


# -- the URL ---------------------------------------------------------------------------------


def test_url_servers_and_options() -> None:
    servers, opts = parse_url("nats://a:4222,b:5222?prefix=app-1&dedupe_window=30&storage=memory")
    assert servers == ["nats://a:4222", "nats://b:5222"]
    assert (opts.prefix, opts.dedupe_window, opts.storage) == ("app-1", 30.0, "memory")
    assert parse_url("nats://localhost")[0] == ["nats://localhost:4222"]
    assert parse_url("tls://u:p@[::1]:4443")[0] == ["tls://u:p@[::1]:4443"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://h:4222?colour=red", "unknown option 'colour'"),
        ("nats://h:4222?replicas=many", "option replicas: expected int, got 'many'"),
        ("nats://h:4222?replicas=9", "replicas must be in 1..5"),
        ("nats://h:4222?storage=tape", "storage must be 'file' or 'memory'"),
        ("nats://h:4222?prefix=a_b", "prefix"),
        ("nats://h:4222?dedupe_window=0", "dedupe_window must be positive"),
        ("nats://h:4222?max_pending=0", "max_pending must be >= 1"),
        ("nats://h:4222?create=perhaps", "option create: expected bool, got 'perhaps'"),
        ("nats://h:99999", "port must be a number in 1..65535"),
        ("nats://:4222", "expected host:port"),
        ("nats://h:4222/stream", "unexpected path"),
    ],
)
def test_bad_urls_name_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        open_log(url)
    assert info.value.key == "streams.url"
    assert url in str(info.value)


async def test_unreachable_server_is_a_transport_error() -> None:
    log = open_log("nats://127.0.0.1:1?connect_timeout=1&max_reconnect=0")
    with pytest.raises(TransportError, match=r"cannot connect to NATS at nats://127.0.0.1:1"):
        await log.open()


async def test_closed_log_refuses_calls(url: str) -> None:
    log = await _open(url)
    await log.close()
    with pytest.raises(LogClosed):
        await log.list_topics()
    not_opened = open_log(url)
    with pytest.raises(LogClosed, match="not open"):
        await not_opened.list_topics()


# -- records -----------------------------------------------------------------------------------


async def test_offsets_are_dense_stream_sequences(url: str, names: Names) -> None:
    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t, partitions=3))
        assert await log.append(t, 2, [Record(value=b"%d" % i) for i in range(5)]) == [
            0,
            1,
            2,
            3,
            4,
        ]
        assert await log.append(t, 0, [Record(value=b"x")]) == [0]
        info = await log._js.stream_info(log.stream_name(t, 2))
        assert info.state.last_seq == 5
        assert info.config.subjects == [log.subject(t, 2)]
    finally:
        await log.close()


async def test_repeated_publishes_with_one_id_are_stored_once(url: str, names: Names) -> None:
    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t))
        first = await log.append(t, 0, [Record(value=b"a", id="x-1"), Record(value=b"b", id="x-2")])
        again = await log.append(t, 0, [Record(value=b"a", id="x-1"), Record(value=b"c", id="x-3")])
        assert again[0] == first[0]  # the duplicate's offset is the stored one's
        assert [r.value for r in await log.read(t, 0, 0)] == [b"a", b"b", b"c"]
        assert log.capabilities.deduplicates
        assert log.capabilities.dedupe_window_s == 120.0
    finally:
        await log.close()


async def test_binary_keys_headers_and_server_timestamps(url: str, names: Names) -> None:
    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t))
        await log.append(
            t, 0, [Record(value=b"\x00\xff", key=b"\n\r\x00", headers={"a": "line\nbreak"})]
        )
        (rec,) = await log.read(t, 0, 0)
        assert (rec.key, rec.value, rec.headers) == (b"\n\r\x00", b"\x00\xff", {"a": "line\nbreak"})
        assert rec.timestamp > 1_600_000_000_000  # stamped by the server: its append time
    finally:
        await log.close()


async def test_a_waiting_read_wakes_on_append(url: str, names: Names) -> None:
    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t))
        waiting = asyncio.create_task(log.read(t, 0, 0, timeout=60))
        await asyncio.sleep(0.05)
        await log.append(t, 0, [Record(value=b"late")])
        got = await asyncio.wait_for(waiting, 60)
        assert [r.value for r in got] == [b"late"]
        # Nothing more: a read that may not wait returns empty at once.
        assert await log.read(t, 0, 1) == []
    finally:
        await log.close()


async def test_consecutive_and_scattered_reads(url: str, names: Names) -> None:
    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t))
        await log.append(t, 0, [Record(value=b"%d" % i) for i in range(50)])
        seen = []
        offset = 0
        while offset < 50:
            batch = await log.read(t, 0, offset, max_records=7)
            seen += [int(r.value) for r in batch]
            offset = batch[-1].offset + 1
        assert seen == list(range(50))
        assert [r.offset for r in await log.read(t, 0, 42, max_records=3)] == [42, 43, 44]
        assert [r.offset for r in await log.read(t, 0, 3, max_records=2)] == [3, 4]
    finally:
        await log.close()


async def test_an_idle_cursor_is_replaced_not_trusted(url: str, names: Names) -> None:
    """The server removes a consumer idle past its inactive threshold and then ignores pulls on
    it silently: a cursor idle that long is replaced before use."""
    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t))
        await log.append(t, 0, [Record(value=b"a"), Record(value=b"b")])
        assert [r.value for r in await log.read(t, 0, 0, max_records=1)] == [b"a"]
        (cursor,) = log._pool.all()
        log._pool._cursors[cursor.stream] = [cursor]
        await log._js.delete_consumer(cursor.stream, cursor._consumer)  # as the server would
        cursor.last_used -= cursor.inactive  # ... after this long without a pull
        assert [r.value for r in await log.read(t, 0, 1)] == [b"b"]
        assert cursor.broken
    finally:
        await log.close()


async def test_a_delete_interrupted_half_way_is_finished(url: str, names: Names) -> None:
    """delete_topic marks the topic first (gone for everyone), then removes its streams: a crash
    in between leaves no topic, and the next create starts empty, not with the old records."""
    from garrison.streams._backends.jetstream import _enc

    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t, partitions=2))
        await log.append(t, 1, [Record(value=b"old")])
        meta, rev = await log._topic_entry(t)
        assert meta is not None
        meta.deleting = True  # what delete_topic writes before it removes anything
        await log._meta.update(f"topic.{t}", _enc.encode(meta), rev)
        log._specs.clear()
        assert t not in await log.list_topics()
        with pytest.raises(TopicNotFound):
            await log.describe_topic(t)
        await log.create_topic(TopicSpec(name=t, partitions=2))
        assert [(o.begin, o.end) for o in await log.offsets(t)] == [(0, 0), (0, 0)]
        assert await log.read(t, 1, 0) == []
        assert await log.delete_topic(t) is True
        assert await log.delete_topic(t) is False
    finally:
        await log.close()


# -- retention ---------------------------------------------------------------------------------


async def test_retention_maps_to_stream_limits(url: str, names: Names) -> None:
    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t, retention_ms=3_600_000, retention_bytes=4096))
        config = (await log._js.stream_info(log.stream_name(t, 0))).config
        assert config.max_age == 3600
        assert config.max_bytes == 4096
        await log.append(t, 0, [Record(value=bytes(200)) for _ in range(100)])
        (off,) = await log.offsets(t)
        assert off.end == 100
        assert off.begin > 0  # the oldest records went to keep the partition under 4 KiB
        got = await log.read(t, 0, 0, max_records=1)
        assert got[0].offset == off.begin  # a read below begin starts at begin
    finally:
        await log.close()


async def test_age_retention_is_applied_by_the_server(url: str, names: Names) -> None:
    log = await _open(url)
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t, retention_ms=1000))
        await log.append(t, 0, [Record(value=b"old")])
        for _ in range(600):  # the server expires on its own timer: poll, generously
            (off,) = await log.offsets(t)
            if off.begin == off.end == 1:
                break
            await asyncio.sleep(0.05)
        assert (off.begin, off.end) == (1, 1)
    finally:
        await log.close()


# -- groups across connections ----------------------------------------------------------------


async def test_stale_member_on_another_connection_is_fenced(url: str, names: Names) -> None:
    clock = FakeClock()
    one, two = await _open(url, clock), await _open(url, clock)
    try:
        t, g = names("t"), names("g")
        await one.create_topic(TopicSpec(name=t, partitions=2))
        a = await one.join(g, "a", [t], lease=LEASE)
        b = await two.join(g, "b", [t], lease=LEASE)
        (moved,) = b.partitions
        with pytest.raises(Fenced):
            await one.commit(g, "a", a.generation, {moved: 1})
        await two.commit(g, "b", b.generation, {moved: 2})
        assert (await one.committed(g))[moved] == 2
    finally:
        await one.close()
        await two.close()


async def test_concurrent_commits_lose_no_update(url: str, names: Names) -> None:
    """Compare-and-set on the group's KV revision: racing writers retry, none is lost."""
    clock = FakeClock()
    logs = [await _open(url, clock) for _ in range(3)]
    try:
        t, g = names("t"), names("g")
        await logs[0].create_topic(TopicSpec(name=t, partitions=3))
        for i, log in enumerate(logs):
            await log.join(g, f"m{i}", [t], lease=LEASE)
        assignments = [await log.heartbeat(g, f"m{i}", lease=LEASE) for i, log in enumerate(logs)]

        async def commits(i: int) -> None:
            a = assignments[i]
            for n in range(1, 21):
                await logs[i].commit(g, f"m{i}", a.generation, dict.fromkeys(a.partitions, n))

        await asyncio.gather(*(commits(i) for i in range(3)))
        assert await logs[0].committed(g) == {TopicPartition(t, p): 20 for p in range(3)}
    finally:
        for log in logs:
            await log.close()


async def test_a_dead_member_on_another_connection_loses_its_partitions(
    url: str, names: Names
) -> None:
    clock = FakeClock()
    dead, alive = await _open(url, clock), await _open(url, clock)
    try:
        t, g = names("t"), names("g")
        await alive.create_topic(TopicSpec(name=t, partitions=4))
        await dead.join(g, "dead", [t], lease=LEASE)
        first = await alive.join(g, "alive", [t], lease=LEASE)
        assert len(first.partitions) == 2
        await dead.close()  # the process is gone; its lease runs out
        clock.advance(LEASE / 2)
        await alive.heartbeat(g, "alive", lease=LEASE)
        clock.advance(LEASE / 2 + 1)
        after = await alive.heartbeat(g, "alive", lease=LEASE)
        assert len(after.partitions) == 4
        assert after.generation > first.generation
        info = await alive.describe_group(g)
        assert [m.member for m in info.members] == ["alive"]
        with pytest.raises(NotAMember):
            await alive.commit(g, "dead", first.generation, {})
    finally:
        await alive.close()


# -- effectively once --------------------------------------------------------------------------


async def _topics(log: JetStreamLog, names: Names) -> tuple[str, str, str]:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src))
    await log.create_topic(TopicSpec(name=out))
    return src, out, g


def _tx(g: str, gen: int, src: str, out: str, n: int) -> Transaction:
    return Transaction(
        group=g,
        member="m",
        generation=gen,
        offsets={TopicPartition(src, 0): n},
        state=[StateChange("count", 0, b"k", b"%d" % n)],
        outputs=[OutputRecord(out, 0, Record(value=b"o%d" % n, id=f"{g}-{src}-0-{n}-0"))],
    )


async def test_interrupted_transaction_is_finished_once(
    url: str, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash after the commit point: the next reader of the partition applies it, and the
    outputs published before the crash are not duplicated."""
    clock = FakeClock()
    log = await _open(url, clock)
    try:
        src, out, g = await _topics(log, names)
        a = await log.join(g, "m", [src], lease=LEASE)
        await log.transact(_tx(g, a.generation, src, out, 1))

        real = Delivery._put_versioned

        async def crash(self: Delivery, key: str, version: int, value: bytes | None) -> None:
            raise TransportError("simulated crash after the outputs, before the state")

        monkeypatch.setattr(Delivery, "_put_versioned", crash)
        with pytest.raises(TransportError, match="simulated"):
            await log.transact(_tx(g, a.generation, src, out, 2))
        monkeypatch.setattr(Delivery, "_put_versioned", real)
    finally:
        await log.close()

    restarted = await _open(url, clock)  # a new process: nothing in memory
    try:
        assert await restarted.get_state(g, "count", 0, b"k") == b"2"
        assert (await restarted.committed(g))[TopicPartition(src, 0)] == 2
        assert [r.value for r in await restarted.read(out, 0, 0)] == [b"o1", b"o2"]
        # Finishing again changes nothing.
        assert await restarted.load_state(g, "count", 0) == [(b"k", b"2")]
        assert len(await restarted.read(out, 0, 0)) == 2
    finally:
        await restarted.close()


async def test_a_late_apply_never_overwrites_newer_state(url: str, names: Names) -> None:
    """A stalled former owner applying its old transaction late changes nothing."""
    log = await _open(url, FakeClock())
    try:
        src, out, g = await _topics(log, names)
        a = await log.join(g, "m", [src], lease=LEASE)
        await log.transact(_tx(g, a.generation, src, out, 1))
        state, _ = await log._load_group(g)
        old_seq = state.pending[f"{src}/0"]
        await log.transact(_tx(g, a.generation, src, out, 2))
        msg = await log._js.get_msg(log._txlog, old_seq)
        from garrison.streams._backends._jetstream_tx import dec_tx

        await log._delivery.apply(old_seq, dec_tx.decode(msg.data))  # late and stale
        assert await log.get_state(g, "count", 0, b"k") == b"2"
        assert [r.value for r in await log.read(out, 0, 0)] == [b"o1", b"o2"]
    finally:
        await log.close()


async def test_the_transaction_log_stays_small(url: str, names: Names) -> None:
    log = await _open(url, FakeClock())
    try:
        src, out, g = await _topics(log, names)
        a = await log.join(g, "m", [src], lease=LEASE)
        for n in range(1, 41):
            await log.transact(_tx(g, a.generation, src, out, n))
        info = await log._js.stream_info(log._txlog)
        assert info.state.messages <= 16
        assert await log.get_state(g, "count", 0, b"k") == b"40"
        assert len(await log.read(out, 0, 0)) == 40
    finally:
        await log.close()


# -- reconnects --------------------------------------------------------------------------------


class _Proxy:
    """A TCP proxy to the NATS server whose connections a test can cut."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(*self.upstream)
        self.writers += [w, uw]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (asyncio.create_task(pipe(r, uw)), asyncio.create_task(pipe(ur, w))):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def cut(self) -> None:
        for w in self.writers:
            w.close()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_the_log_reconnects_after_the_connection_drops(url: str, names: Names) -> None:
    proxy = _Proxy(("127.0.0.1", 4222))
    port = await proxy.start()
    query = url.split("?", 1)[1]
    log = await _open(f"nats://127.0.0.1:{port}?{query}&ack_timeout=2")
    try:
        t = names("t")
        await log.create_topic(TopicSpec(name=t))
        await log.append(t, 0, [Record(value=b"before", id="r-1")])
        proxy.cut()
        # Appends during the outage fail or succeed; retried with their ids, each is stored once.
        for _ in range(100):
            try:
                await log.append(t, 0, [Record(value=b"after", id="r-2")])
                break
            except TransportError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the log did not reconnect")
        await log.append(t, 0, [Record(value=b"after", id="r-2")])
        assert [r.value for r in await log.read(t, 0, 0)] == [b"before", b"after"]
    finally:
        await log.close()
        await proxy.close()
