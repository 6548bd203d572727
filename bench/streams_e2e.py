"""Streams end to end: publish -> window result latency, and recovery time after a kill.

Latency — a window processor on the SQLite log (``synchronous=FULL``) aggregates one device's
samples over 100 ms tumbling windows of event time; each sample's event time starts the next
window, so each publish closes one window and makes the processor emit its result. Latency is
from the ``send`` of that sample to the moment a consumer in the same process reads the result
from the output topic: producer append (one durable commit), processor wake-up and transaction
(a second durable commit, carrying the input offset, the operator's snapshot and the result),
consumer wake-up. For scale, the latency of one raw durable SQLite commit on this disk is
measured in the same run (fsync times vary a lot on a shared disk). Samples are sent one at
a time, each after the previous result arrived.

Recovery — a processor process keeps a counter per key (K keys, the state size) and is killed
with SIGKILL once it has processed one event per key; a new processor then starts in this
process (same member id). Recovery time is from its start to the first output for a new event
in every partition: open the log, join the group, load each partition's state, process,
commit. Reported per state size; median of the rounds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from garrison.streams import (
    Aggregation,
    BoundedOutOfOrderness,
    Processor,
    ProcessorContext,
    Producer,
    Sample,
    StoredRecord,
    TopicSpec,
    Tumbling,
    open_log,
    window_processor,
)

from ._harness import Row, median, note, percentile, progress

PILLAR = "streams"
_ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
WINDOW_MS = 100
_enc = msgspec.json.Encoder()


def raw_commit_ms(directory: Path, n: int) -> float:
    """Median ms of one durable SQLite commit (WAL, synchronous=FULL, one small INSERT)."""
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (b"x" * 100,))
        conn.execute("COMMIT")
        times.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return median(times)


async def latency(directory: Path, n: int) -> list[float]:
    """Per window result, ms from the publish that closed the window to reading its result."""
    log = open_log(f"sqlite:///{directory}/e2e.db")
    await log.open()
    await log.create_topic(TopicSpec(name="samples", partitions=1))
    await log.create_topic(TopicSpec(name="windows", partitions=1))
    proc = window_processor(
        log,
        "samples",
        group="e2e",
        windows=Tumbling(WINDOW_MS),
        aggregation=Aggregation(("count", "mean")),
        watermark=BoundedOutOfOrderness(0),
        output="windows",
    )
    out: list[float] = []
    async with proc, Producer(log, linger=0) as prod:
        pos = 0
        base = 1_700_000_000_000
        for i in range(n + 1):
            t0 = time.perf_counter()
            await prod.send("samples", _enc.encode(Sample(base + i * WINDOW_MS, float(i))),
                            key=b"device-1")  # fmt: skip
            if i == 0:
                continue  # the first sample closes no window
            while True:
                got = await log.read("windows", 0, pos, timeout=30)
                if got:
                    pos = got[-1].offset + 1
                    break
            out.append((time.perf_counter() - t0) * 1000)
    await log.close()
    return out


def _count(ctx: ProcessorContext, rec: StoredRecord) -> None:
    store = ctx.state("n")
    assert rec.key is not None
    n = store.get(rec.key, 0) + 1
    store.set(rec.key, n)
    ctx.emit("counted", str(n).encode())


async def _worker(db: str, keys: int) -> None:
    """The process that builds the state and gets killed."""
    log = open_log(f"sqlite:///{db}")
    await log.open()
    proc = Processor(log, "events", _count, group="rec", stores={"n": int},
                     outputs=["counted"], member="m", max_records=2000, dlq=None)  # fmt: skip
    await proc.start()
    while True:
        done = await log.committed("rec", "events")
        if sum(done.values()) >= keys:
            print("ready", flush=True)
            await asyncio.Event().wait()
        await asyncio.sleep(0.05)


async def recovery(directory: Path, keys: int) -> float:
    """Seconds from a new processor's start (after a SIGKILL) to output in every partition."""
    db = directory / "rec.db"
    log = open_log(f"sqlite:///{db}")
    await log.open()
    await log.create_topic(TopicSpec(name="events", partitions=PARTITIONS))
    await log.create_topic(TopicSpec(name="counted", partitions=1))
    async with Producer(log, batch_size=2000) as prod:
        for k in range(keys):
            await prod.send("events", b"", key=f"key-{k}".encode())
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.streams_e2e", "worker", str(db), str(keys),
        cwd=_ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert worker.stdout is not None
    line = await asyncio.wait_for(worker.stdout.readline(), 600)
    assert line == b"ready\n", line
    worker.send_signal(signal.SIGKILL)
    await worker.wait()
    end = (await log.offsets("counted"))[0].end
    # One new event per partition (keys chosen to land in each one).
    probe: dict[int, bytes] = {}
    k = 0
    from garrison.streams import partition_for

    while len(probe) < PARTITIONS:
        key = f"key-{k}".encode()
        probe.setdefault(partition_for(key, PARTITIONS), key)
        k += 1
    async with Producer(log) as prod:
        for key in probe.values():
            await prod.send("events", b"", key=key)
    t0 = time.perf_counter()
    log2 = open_log(f"sqlite:///{db}")
    await log2.open()
    proc = Processor(log2, "events", _count, group="rec", stores={"n": int},
                     outputs=["counted"], member="m", max_records=2000, dlq=None)  # fmt: skip
    await proc.start()
    while True:
        if (await log2.offsets("counted"))[0].end >= end + PARTITIONS:
            break
        await asyncio.sleep(0.001)
    took = time.perf_counter() - t0
    await proc.stop()
    await log2.close()
    await log.close()
    return took


async def run(quick: bool) -> list[Row]:
    """Latency rounds, then recovery per state size."""
    n = 100 if quick else 500
    rounds = 1 if quick else 3
    sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    lat: list[float] = []
    raw: list[float] = []
    rec: dict[int, list[float]] = {s: [] for s in sizes}
    with progress("streams_e2e", rounds * (1 + len(sizes))) as advance:
        for _ in range(rounds):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                raw.append(await asyncio.to_thread(raw_commit_ms, Path(tmp), 200))
                lat.extend(await latency(Path(tmp), n))
            advance(f"latency p50 {median(lat):.2f} ms")
            for s in sizes:
                with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                    rec[s].append(await recovery(Path(tmp), s))
                advance(f"recovery {s:,} keys: {rec[s][-1] * 1000:.0f} ms")
    commit = median(raw)
    rows = [
        Row("raw durable SQLite commit (WAL, FULL), for scale", "ms", None, better=None,
            limit=commit, notes="one small INSERT per transaction; the chain has two commits"),
        Row("publish -> window result p50 (SQLite, FULL)", "ms", median(lat), better="lower",
            notes=f"= {median(lat) / commit:.1f} raw commits"),
        Row("publish -> window result p99 (SQLite, FULL)", "ms", percentile(lat, 0.99),
            better="lower", notes=f"{len(lat)} windows"),
    ]  # fmt: skip
    for s in sizes:
        rows.append(
            Row(f"recovery after SIGKILL, {s:,} keys of state", "ms", median(rec[s]) * 1000,
                better="lower", notes="start -> output in all 4 partitions (state reloaded)")
        )  # fmt: skip
    note("setup", f"SQLite WAL synchronous=FULL; {PARTITIONS} partitions for recovery; "
         f"{WINDOW_MS} ms tumbling windows, watermark delay 0 for latency")  # fmt: skip
    return rows


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "worker":
    asyncio.run(_worker(sys.argv[2], int(sys.argv[3])))
