"""Ingest into NATS JetStream: garrison's producer on the JetStream log against raw nats-py.

Not a benchmark module of its own: ``bench/streams_ingest.py`` calls :func:`jetstream_rows`
to add its JetStream rows (the harness skips private modules).

The job, the same for both: ``EVENTS`` records of ``VALUE_SIZE`` bytes with 1 000 distinct keys,
into ``PARTITIONS`` file-backed streams on the local server (one stream per partition, as the
backend maps them), each publish acknowledged by the server before it counts.

* garrison — ``Producer(JetStreamLog)``: keyed records hashed to partitions, batches of
  ``BATCH`` per append, at most ``WINDOW`` records in flight, each record wrapped in the
  backend's msgpack envelope (key, value, headers, timestamp).
* raw nats-py — ``js.publish_async`` of the bare value to the same partition's subject, the same
  ``WINDOW`` of unacknowledged publishes, acks awaited as they come.

Rounds alternate the two so that both see the same machine; the table shows medians.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import zlib
from importlib.metadata import version

from ._harness import Row, median, note

NATS_URL = "nats://127.0.0.1:4222"
PARTITIONS = 4
VALUE_SIZE = 100
KEYS = 1_000
WINDOW = 4_000
BATCH = 1_000
EVENTS = 200_000
QUICK_EVENTS = 20_000


async def _reachable() -> bool:
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", 4222), 3)
    except (OSError, TimeoutError):
        return False
    w.close()
    await w.wait_closed()
    return True


def _events(n: int) -> list[tuple[bytes, bytes]]:
    value = bytes(VALUE_SIZE)
    return [(b"key-%04d" % (i % KEYS), value) for i in range(n)]


async def _garrison(events: list[tuple[bytes, bytes]]) -> float:
    from garrison.streams._backends import open_log
    from garrison.streams._backends.base import TopicSpec
    from garrison.streams._producer import Producer

    prefix = f"gb{uuid.uuid4().hex[:10]}"
    log = open_log(f"{NATS_URL}?prefix={prefix}&max_pending={WINDOW}")
    await log.open()
    try:
        await log.create_topic(TopicSpec(name="ingest", partitions=PARTITIONS))
        producer = Producer(log, max_pending=WINDOW, batch_size=BATCH)
        t0 = time.perf_counter()
        for key, value in events:
            await producer.send("ingest", value, key=key)
        await producer.flush()
        elapsed = time.perf_counter() - t0
        await producer.close()
        return len(events) / elapsed
    finally:
        await log.destroy()  # type: ignore[attr-defined]
        await log.close()


async def _raw(events: list[tuple[bytes, bytes]]) -> float:
    import nats
    from nats.js.api import StorageType, StreamConfig

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream(publish_async_max_pending=WINDOW)
    prefix = f"rb{uuid.uuid4().hex[:10]}"
    names = [f"{prefix}_ingest_{p}" for p in range(PARTITIONS)]
    subjects = [f"{prefix}.t.ingest.{p}" for p in range(PARTITIONS)]
    try:
        for name, subject in zip(names, subjects, strict=True):
            await js.add_stream(
                StreamConfig(
                    name=name,
                    subjects=[subject],
                    storage=StorageType.FILE,
                    duplicate_window=120,
                )
            )
        t0 = time.perf_counter()
        futures = []
        for key, value in events:
            subject = subjects[zlib.crc32(key) % PARTITIONS]
            futures.append(await js.publish_async(subject, value))
            if len(futures) >= BATCH:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
        return len(events) / (time.perf_counter() - t0)
    finally:
        for name in names:
            await js.delete_stream(name)
        await nc.close()


async def jetstream_rows(quick: bool) -> list[Row]:
    """The JetStream rows of the ingest benchmark (none, with a note, if NATS is down)."""
    if not await _reachable():
        note("jetstream", f"skipped: no NATS server at {NATS_URL}")
        return []
    n = QUICK_EVENTS if quick else EVENTS
    rounds = 1 if quick else 3
    events = _events(n)
    ours: list[float] = []
    raw: list[float] = []
    for _ in range(rounds):
        raw.append(await _raw(events))
        ours.append(await _garrison(events))
    note(
        "jetstream",
        f"nats-py {version('nats-py')}, local server, {PARTITIONS} file streams, "
        f"{n} records of {VALUE_SIZE} B, window {WINDOW}, batch {BATCH}, {rounds} round(s); "
        "raw = js.publish_async of the bare value",
    )
    return [
        Row(
            metric=f"ingest events/s · JetStream, {PARTITIONS} partitions, acked",
            unit="events/s",
            garrison=median(ours),
            peers={"raw nats-py publish_async": median(raw)},
            vs="raw nats-py publish_async",
            notes="goal: >= 70% of raw nats-py",
        )
    ]


if __name__ == "__main__":  # a quick look without the harness
    for row in asyncio.run(jetstream_rows(quick=True)):
        print(row.metric, round(row.garrison or 0), row.peers, round(row.ratio or 0, 3))
