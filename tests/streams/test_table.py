"""Tables: a topic materialized by key, lookups of committed state, a stream-table join."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from garrison.core import InvalidInput
from garrison.streams import (
    LogBackend,
    ProcessorContext,
    Producer,
    StoredRecord,
    StreamApp,
    Table,
    TopicSpec,
    table_processor,
)

Names = Callable[[str], str]


async def _eventually(cond: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + 60
    while not await cond():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_table_keeps_latest_value_and_tombstones(log: LogBackend, names: Names) -> None:
    t, g = names("prices"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=3))
    async with Producer(log, linger=0) as prod:
        for key, value in [(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"4"), (b"c", b"")]:
            await prod.send(t, value, key=key)
        await prod.send(t, b"no key")  # dead-lettered
    table = Table(log, t, group=g)
    async with table_processor(log, t, group=g):

        async def settled() -> bool:
            return await table.get("b") == b"2" and await table.get("a") == b"3"

        await _eventually(settled, "the table")
        await _eventually(lambda: _has(log, f"{t}-dlq"), "the keyless record dead-lettered")
    assert await table.get(b"a") == b"3"
    assert await table.get("c") is None  # deleted by the tombstone
    assert await table.get("zzz", b"dflt") == b"dflt"
    assert sorted(await table.items()) == [(b"a", b"3"), (b"b", b"2")]
    with pytest.raises(InvalidInput):
        await table.get(None)  # type: ignore[arg-type]


async def _has(log: LogBackend, topic: str) -> bool:
    try:
        return (await log.offsets(topic))[0].end > 0
    except Exception:
        return False


async def test_stream_table_join(names: Names, tmp_path: Path) -> None:
    prices_t, orders_t, out_t = names("prices"), names("orders"), names("priced")
    app = StreamApp(f"sqlite:///{tmp_path}/j.db", topics={prices_t: 2, orders_t: 2, out_t: 1})
    prices = app.table(prices_t, group="price-table")

    @app.processor(orders_t, group="enrich", outputs=[out_t])
    async def enrich(ctx: ProcessorContext, rec: StoredRecord) -> None:
        price = await prices.get(rec.key)
        ctx.emit(out_t, {"order": rec.value.decode(), "price": price and price.decode()})

    async with app:
        await app.producer.send(prices_t, b"9.5", key=b"apple")
        await app.producer.flush()
        await _eventually(lambda: _eq(prices.get("apple"), b"9.5"), "the price")
        await app.producer.send(orders_t, b"o1", key=b"apple")
        await app.producer.send(orders_t, b"o2", key=b"pear")
        await app.producer.flush()

        async def two() -> bool:
            return (await app.log.offsets(out_t))[0].end == 2

        await _eventually(two, "two enriched orders")
        got = [json.loads(r.value) for r in await app.log.read(out_t, 0, 0)]
    assert sorted(got, key=lambda o: o["order"]) == [
        {"order": "o1", "price": "9.5"},
        {"order": "o2", "price": None},
    ]


async def _eq(got: Awaitable[object], want: object) -> bool:
    return await got == want
