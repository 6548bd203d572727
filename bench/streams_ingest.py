"""Ingest into the streams log: events/s with durable batched commits, against the raw rate.

The job: ``EVENTS`` records of ``VALUE_SIZE`` bytes with 1 000 distinct keys into a topic of
``PARTITIONS`` partitions, each acknowledged only once durable.

* garrison (SQLite) — ``Producer(open_log("sqlite:///..."))``: keys hashed to partitions, batches
  of up to ``BATCH`` per append, at most ``WINDOW`` records in flight (backpressure), appends of
  all partitions group-committed by the log's writer thread; WAL, ``synchronous=FULL``. Two
  rows: ``send`` per event (an application producing one event at a time) and ``send_many``
  of ``BATCH`` events (a caller handing over batches, e.g. a gateway); same log, same commits.
* raw SQLite (the limit) — the same rows (partition, offset, timestamps, key, value, size)
  inserted with ``executemany`` in transactions of ``BATCH`` rows into the same table shape, on
  the same disk, WAL, ``synchronous=FULL``: what SQLite itself does on this machine, with no
  producer, no partitioning, no asyncio.

Other backends add their rows through a function of a private module, called from :func:`run`
(``bench/_streams_jetstream.py``: NATS JetStream against raw nats-py). Rounds alternate the
contenders; the table shows medians.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from garrison.streams import Producer, TopicSpec, open_log, partition_for

from ._harness import Row, median, note, progress

PILLAR = "streams"
PARTITIONS = 4
VALUE_SIZE = 100
KEYS = 1_000
WINDOW = 20_000
BATCH = 1_000
EVENTS = 300_000
QUICK_EVENTS = 30_000

RowSource = Callable[[bool], Awaitable[list[Row]]]


def _events(n: int) -> list[tuple[bytes, bytes]]:
    value = bytes(VALUE_SIZE)
    keys = [f"device-{i:05d}".encode() for i in range(KEYS)]
    return [(keys[i % KEYS], value) for i in range(n)]


def raw_sqlite(directory: Path, events: list[tuple[bytes, bytes]]) -> float:
    """Rows/s of executemany in BATCH-row durable transactions into the log's table shape."""
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE log (p INTEGER NOT NULL, o INTEGER NOT NULL, ts INTEGER NOT NULL, "
        "at INTEGER NOT NULL, k BLOB, v BLOB NOT NULL, h BLOB, n INTEGER NOT NULL, "
        "PRIMARY KEY (p, o)) WITHOUT ROWID"
    )
    now = int(time.time() * 1000)
    ends = [0] * PARTITIONS
    t0 = time.perf_counter()
    for i in range(0, len(events), BATCH):
        rows = []
        for k, v in events[i : i + BATCH]:
            p = partition_for(k, PARTITIONS)
            rows.append((p, ends[p], now, now, k, v, None, len(k) + len(v)))
            ends[p] += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    rate = len(events) / (time.perf_counter() - t0)
    conn.close()
    return rate


async def garrison_sqlite(
    directory: Path, events: list[tuple[bytes, bytes]], bulk: bool = False
) -> tuple[float, str]:
    """Events/s through garrison's producer into the SQLite log (``send`` per event, or
    ``send_many`` per ``BATCH`` events); and the commits it took."""
    log = open_log(f"sqlite:///{directory}/log.db")
    await log.open()
    await log.create_topic(TopicSpec(name="ingest", partitions=PARTITIONS))
    prod = Producer(log, max_pending=WINDOW, batch_size=BATCH, linger=0.001)
    t0 = time.perf_counter()
    if bulk:
        for i in range(0, len(events), BATCH):
            await prod.send_many("ingest", events[i : i + BATCH])
    else:
        send = prod.send
        for k, v in events:
            await send("ingest", v, key=k)
    await prod.flush()
    rate = len(events) / (time.perf_counter() - t0)
    stats = getattr(log, "writer_stats", (0, 0))
    await prod.close()
    await log.close()
    return rate, f"{stats[0]} commits for {len(events)} events"


def _extra_sources() -> list[RowSource]:
    """Other backends' row functions (each optional: missing modules are skipped)."""
    sources: list[RowSource] = []
    try:
        from ._streams_jetstream import jetstream_rows
    except ImportError:
        return sources
    sources.append(jetstream_rows)
    return sources


async def run(quick: bool) -> list[Row]:
    """Raw SQLite and garrison on SQLite, alternating, then the other backends' rows."""
    n = QUICK_EVENTS if quick else EVENTS
    rounds = 1 if quick else 3
    events = _events(n)
    ours: list[float] = []
    bulk: list[float] = []
    raw: list[float] = []
    detail = ""
    with progress("streams_ingest", rounds * 3) as advance:
        for _ in range(rounds):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                raw.append(await asyncio.to_thread(raw_sqlite, Path(tmp), events))
            advance(f"raw SQLite: {raw[-1]:,.0f} rows/s")
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                rate, detail = await garrison_sqlite(Path(tmp), events)
                ours.append(rate)
            advance(f"garrison SQLite, send: {ours[-1]:,.0f} events/s")
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                bulk.append((await garrison_sqlite(Path(tmp), events, bulk=True))[0])
            advance(f"garrison SQLite, send_many: {bulk[-1]:,.0f} events/s")
    peers = {"raw SQLite executemany": median(raw)}
    rows = [
        Row(
            f"ingest into the SQLite log, send per event ({PARTITIONS} partitions, "
            f"{VALUE_SIZE} B values)",
            "events/s",
            median(ours),
            peers=peers,
            limit=median(raw),
            # Paired per round (the two ran back to back): robust to the load changing between
            # rounds on a shared machine, unlike a ratio of medians taken from different rounds.
            ratio=median([g / r for g, r in zip(ours, raw, strict=True)]),
            notes=f"ratio = median of per-round ratios; goal >= 70% of raw; durable "
            f"(synchronous=FULL) before ack; {detail}",
        ),
        Row(
            f"ingest into the SQLite log, send_many of {BATCH} events",
            "events/s",
            median(bulk),
            peers=peers,
            limit=median(raw),
            ratio=median([g / r for g, r in zip(bulk, raw, strict=True)]),
            notes="the same, the caller handing over batches (e.g. a gateway)",
        ),
    ]
    note(
        "sqlite",
        f"{n:,} events, {KEYS} keys, batches of {BATCH}, window {WINDOW}; WAL, synchronous=FULL; "
        "raw = executemany of the same rows in BATCH-row transactions (no producer, no asyncio)",
    )
    for source in _extra_sources():
        rows.extend(await source(quick))
    return rows
