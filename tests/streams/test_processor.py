"""Processors: keyed state, outputs and offsets committed together; dead letters; restore after
restart; rebalance between two instances without double processing; window processors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from garrison.core import FakeClock, InvalidInput, TransportError
from garrison.streams import (
    Aggregation,
    BadInput,
    LogBackend,
    Processor,
    ProcessorContext,
    Producer,
    Sample,
    StoredRecord,
    StreamApp,
    TopicSpec,
    Transaction,
    Tumbling,
    WindowOutput,
    WindowResult,
    window_processor,
)

Names = Callable[[str], str]


async def _eventually(cond: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not await cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _all(log: LogBackend, topic: str) -> list[StoredRecord]:
    out: list[StoredRecord] = []
    for po in await log.offsets(topic):
        out.extend(await log.read(topic, po.partition, po.begin, max_records=100_000))
    return out


def _counter(out: str) -> Callable[[ProcessorContext, StoredRecord], None]:
    def count(ctx: ProcessorContext, rec: StoredRecord) -> None:
        store = ctx.state("n")
        assert rec.key is not None
        n = store.get(rec.key, 0) + 1
        store.set(rec.key, n)
        ctx.emit(out, {"key": rec.key.decode(), "n": n, "offset": rec.offset})

    return count


async def _produce(log: LogBackend, topic: str, n: int, keys: int = 5, start: int = 0) -> None:
    async with Producer(log, linger=0) as prod:
        for i in range(start, start + n):
            await prod.send(topic, f"{i}".encode(), key=f"k{i % keys}".encode())


async def test_counts_state_and_outputs(log: LogBackend, names: Names) -> None:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src, partitions=3))
    await log.create_topic(TopicSpec(name=out, partitions=2))
    await _produce(log, src, 50)
    proc = Processor(log, src, _counter(out), group=g, stores={"n": int}, outputs=[out])
    async with proc:
        await _eventually(lambda: _count_is(log, out, 50), "50 outputs")
    outs = [json.loads(r.value) for r in await _all(log, out)]
    finals = {}
    for o in outs:
        finals[o["key"]] = max(finals.get(o["key"], 0), o["n"])
    assert finals == {f"k{i}": 10 for i in range(5)}
    # The state survives a restart and continues from the committed offsets.
    await _produce(log, src, 5, start=50)
    async with Processor(log, src, _counter(out), group=g, stores={"n": int}, outputs=[out]):
        await _eventually(lambda: _count_is(log, out, 55), "55 outputs")
    outs = [json.loads(r.value) for r in await _all(log, out)]
    assert sorted(o["n"] for o in outs if o["n"] == 11) == [11] * 5
    assert len({(o["key"], o["n"]) for o in outs}) == 55  # nothing twice


async def _count_is(log: LogBackend, topic: str, n: int) -> bool:
    got = len(await _all(log, topic))
    assert got <= n, f"{got} records in {topic}, expected at most {n}"
    return got == n


async def test_bad_records_go_to_the_dead_letter_topic(log: LogBackend, names: Names) -> None:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src, partitions=1))
    await log.create_topic(TopicSpec(name=out, partitions=1))
    calls: dict[int, int] = {}

    def handle(ctx: ProcessorContext, value: dict[str, int]) -> None:
        assert ctx.record is not None
        calls[ctx.record.offset] = calls.get(ctx.record.offset, 0) + 1
        ctx.state("s").set("last", value["v"])  # dropped when the handler fails
        ctx.emit(out, b"partial")  # dropped too
        if value["v"] == 2:
            raise BadInput("v must not be 2")
        if value["v"] == 3:
            raise RuntimeError("boom")
        ctx.emit(out, b"ok")

    async with Producer(log, linger=0) as prod:
        for body in [b'{"v":1}', b"not json", b'{"v":2}', b'{"v":3}', b'{"v":4}']:
            await prod.send(src, body)
    proc = Processor(
        log,
        src,
        handle,
        group=g,
        decode=msgspec.json.Decoder(dict[str, int]).decode,
        stores={"s": int},
        outputs=[out],
        max_attempts=2,
        retry_backoff=0.001,
    )
    async with proc:
        await _eventually(lambda: _count_is(log, f"{src}-dlq", 3), "3 dead letters")
        await _eventually(lambda: _count_is(log, out, 4), "4 outputs")
    dead = await _all(log, f"{src}-dlq")
    assert [r.value for r in dead] == [b"not json", b'{"v":2}', b'{"v":3}']
    assert dead[0].headers["dlq-reason"].startswith("decode error")
    assert dead[1].headers["dlq-reason"] == "bad input: v must not be 2"
    assert "handler failed 2 time(s): RuntimeError: boom" in dead[2].headers["dlq-reason"]
    assert dead[2].headers["dlq-offset"] == "3"
    assert dead[2].headers["dlq-topic"] == src
    assert dead[2].headers["dlq-group"] == g
    assert calls[3] == 2  # retried, then dead-lettered; the partition went on
    outs = [r.value for r in await _all(log, out)]
    assert outs == [b"partial", b"ok", b"partial", b"ok"]
    assert await log.get_state(g, "s", 0, b"last") == msgspec.msgpack.encode(4)
    assert proc.dead_letters == 3


async def test_two_instances_rebalance_without_double_processing(
    log: LogBackend, names: Names
) -> None:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src, partitions=4))
    await log.create_topic(TopicSpec(name=out, partitions=1))
    await _produce(log, src, 200, keys=20)
    kw = {"group": g, "stores": {"n": int}, "outputs": [out], "max_records": 7, "lease": 2.0}
    p1 = Processor(log, src, _counter(out), member="p1", **kw)  # type: ignore[arg-type]
    p2 = Processor(log, src, _counter(out), member="p2", **kw)  # type: ignore[arg-type]
    await p1.start()
    await _eventually(lambda: _at_least(log, out, 20), "some outputs")
    await p2.start()  # takes half the partitions mid-stream
    await _eventually(lambda: _at_least(log, out, 120), "more outputs")
    await p1.stop()  # leaves: p2 takes everything
    await _produce(log, src, 100, keys=20, start=200)
    await _eventually(lambda: _count_is(log, out, 300), "300 outputs")
    await p2.stop()
    outs = [json.loads(r.value) for r in await _all(log, out)]
    pairs = [(o["key"], o["n"]) for o in outs]
    assert len(set(pairs)) == 300  # each count value once per key: no event applied twice
    for k in range(20):
        assert sorted(n for key, n in pairs if key == f"k{k}") == list(range(1, 16))


async def _at_least(log: LogBackend, topic: str, n: int) -> bool:
    return len(await _all(log, topic)) >= n


async def test_window_processor_emits_results_once(log: LogBackend, names: Names) -> None:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src, partitions=2))
    await log.create_topic(TopicSpec(name=out, partitions=1))
    enc = msgspec.json.Encoder()
    async with Producer(log, linger=0) as prod:
        for i in range(40):  # two keys, a sample per second, 10 s windows
            s = Sample(ts=1_700_000_000_000 + i * 1000, value=float(i))
            await prod.send(src, enc.encode(s), key=f"dev{i % 2}".encode())
        await prod.send(src, b"garbage", key=b"dev0")
    proc = window_processor(
        log,
        src,
        group=g,
        windows=Tumbling(10_000),
        aggregation=Aggregation(("count", "mean")),
        output=out,
        max_records=9,
    )
    ids: list[str | None] = []
    transact = log.transact

    async def spy(tx: Transaction) -> None:
        ids.extend(o.record.id for o in tx.outputs)
        await transact(tx)

    log.transact = spy  # type: ignore[method-assign]
    async with proc:
        await _eventually(lambda: _at_least(log, out, 6), "window results")
        await _eventually(lambda: _at_least(log, f"{src}-dlq", 1), "the garbage dead-lettered")
    dec = msgspec.json.Decoder(WindowOutput)
    results = [dec.decode(r.value) for r in await _all(log, out)]
    done = [r for r in results if isinstance(r, WindowResult)]
    assert len({(r.key, r.window, r.revision) for r in done}) == len(done)  # each result once
    # Windows [0,10) [10,20) [20,30) of both keys closed (the watermark passed them).
    starts = {(r.key, r.window.start - 1_700_000_000_000) for r in done}
    assert {(f"dev{k}", w * 10_000) for k in range(2) for w in range(3)} <= starts
    assert all(r.values["count"].value == 5 for r in done)
    assert None not in ids
    assert len(set(ids)) == len(ids)  # distinct dedupe ids across batches


async def test_stream_app_runs_processors(names: Names, tmp_path: object) -> None:
    src, out = names("src"), names("out")
    app = StreamApp(f"sqlite:///{tmp_path}/app.db", topics={src: 2, out: 1})

    @app.processor(src, group="g", outputs=[out])
    async def echo(ctx: ProcessorContext, rec: StoredRecord) -> None:
        ctx.emit(out, rec.value.upper())

    async with app:
        await app.producer.send(src, b"hello", key=b"k")
        await app.producer.flush()
        await _eventually(lambda: _at_least(app.log, out, 1), "the echo")
        (r,) = await _all(app.log, out)
        assert r.value == b"HELLO"
        assert r.key == b"k"


async def test_processor_bad_input(log: LogBackend, names: Names) -> None:
    src = names("src")
    await log.create_topic(TopicSpec(name=src))

    def h(ctx: ProcessorContext, rec: StoredRecord) -> None: ...

    with pytest.raises(InvalidInput, match="group name"):
        Processor(log, src, h, group="bad group")
    with pytest.raises(InvalidInput, match="store name"):
        Processor(log, src, h, group="g", stores={"bad store": int})
    with pytest.raises(InvalidInput, match="handler must be callable"):
        Processor(log, src, 42, group="g")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="max_attempts"):
        Processor(log, src, h, group="g", max_attempts=0)
    with pytest.raises(InvalidInput, match="topic name"):
        Processor(log, src, h, group="g", dlq="bad dlq")
    missing = Processor(log, names("missing"), h, group="g")
    from garrison.streams import TopicNotFound

    with pytest.raises(TopicNotFound):
        await missing.start()
    with pytest.raises(InvalidInput, match="expected a partition count"):
        StreamApp("memory://", topics={"t": "three"})  # type: ignore[dict-item]


async def test_a_dead_instance_is_expired_and_its_partitions_move(
    log: LogBackend, names: Names, clock: FakeClock
) -> None:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src, partitions=4))
    await log.create_topic(TopicSpec(name=out, partitions=1))
    kw = {"group": g, "stores": {"n": int}, "outputs": [out], "lease": 0.3}
    p1 = Processor(log, src, _counter(out), member="p1", **kw)  # type: ignore[arg-type]
    p2 = Processor(log, src, _counter(out), member="p2", **kw)  # type: ignore[arg-type]
    await p1.start()
    await p2.start()
    await p1.consumer.heartbeat()
    assert len(p1.consumer.assignment) == len(p2.consumer.assignment) == 2
    # p2 "dies": it stops processing and heartbeating, and never leaves the group.
    assert p2._task is not None
    assert p2.consumer._hb_task is not None
    p2._task.cancel()
    p2.consumer._hb_task.cancel()
    await _produce(log, src, 100, keys=20)
    clock.advance(1.0)  # p2's lease runs out; p1's next heartbeat removes it

    async def p1_owns_all() -> bool:
        return len(p1.consumer.assignment) == 4

    await _eventually(p1_owns_all, "p1 to take p2's partitions")
    await _eventually(lambda: _count_is(log, out, 100), "100 outputs")
    await p1.stop()
    outs = [json.loads(r.value) for r in await _all(log, out)]
    assert len({(o["key"], o["n"]) for o in outs}) == 100


async def test_failed_transactions_are_retried_without_loss(log: LogBackend, names: Names) -> None:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src, partitions=2))
    await log.create_topic(TopicSpec(name=out, partitions=1))
    await _produce(log, src, 60, keys=6)
    transact = log.transact
    failures = {"left": 3}

    async def flaky(tx: Transaction) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise TransportError("the disk is on fire")
        await transact(tx)

    log.transact = flaky  # type: ignore[method-assign]
    proc = Processor(log, src, _counter(out), group=g, stores={"n": int}, outputs=[out],
                     max_records=5)  # fmt: skip
    async with proc:
        await _eventually(lambda: _count_is(log, out, 60), "60 outputs")
    outs = [json.loads(r.value) for r in await _all(log, out)]
    assert len({(o["key"], o["n"]) for o in outs}) == 60
    assert failures["left"] == 0


async def test_window_processor_bad_config_fails_at_construction(log: LogBackend) -> None:
    with pytest.raises(InvalidInput, match="windows must be"):
        window_processor(log, "src", group="g", windows="60s", output="out")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="allowed_lateness"):
        window_processor(log, "src", group="g", windows=Tumbling(1000), output="out",
                         allowed_lateness=-1)  # fmt: skip


async def test_producer_to_a_missing_topic(log: LogBackend, names: Names) -> None:
    from garrison.streams import TopicNotFound

    async with Producer(log) as prod:
        with pytest.raises(TopicNotFound):
            await prod.send(names("missing"), b"x")
        with pytest.raises(InvalidInput, match="topic name"):
            await prod.send("bad name", b"x")
