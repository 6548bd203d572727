"""Crash tests: processor processes SIGKILLed at random points and restarted, while events keep
arriving; afterwards no event is lost, no state change applied twice and no output duplicated
(exactly once on SQLite) — for a keyed counter and for a window aggregation.

``GARRISON_STREAMS_CRASH_KILLS`` (default 50) scales the kills of the counter test (the window
test does half as many); ``GARRISON_STREAMS_CRASH_SEED`` picks the random kill points.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from garrison.streams import (
    LogBackend,
    Producer,
    Sample,
    TopicSpec,
    WindowClosed,
    WindowOutput,
    WindowResult,
    open_log,
    partition_for,
)

from ._crash_worker import GROUP, IN, OUT, WINDOW_MS

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("GARRISON_STREAMS_CRASH_KILLS", "50"))
SEED = int(os.environ.get("GARRISON_STREAMS_CRASH_SEED", "7"))
KEYS = 23
PER_ROUND = 40
ROOT = Path(__file__).resolve().parents[2]
Feed = Callable[[Producer, int], Awaitable[None]]


async def _spawn(db: Path, member: str, mode: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.streams._crash_worker", str(db), member, mode,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _started(p: asyncio.subprocess.Process) -> None:
    """Wait until the worker runs its processor: every kill then hits a working process."""
    assert p.stdout is not None
    line = await asyncio.wait_for(p.stdout.readline(), 60)
    assert line == b"started\n", f"worker failed to start: {line!r}"


async def _outputs(log: LogBackend) -> int:
    return (await log.offsets(OUT))[0].end


async def _committed(log: LogBackend) -> int:
    return sum((await log.committed(GROUP, IN)).values())


async def _until(cond: Callable[[], Awaitable[bool]], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        if await cond() or loop.time() > end:
            return
        await asyncio.sleep(0.005)


async def _chaos(db: Path, mode: str, kills: int, feed: Feed) -> tuple[LogBackend, int]:
    """Two workers; per round: feed events, wait for progress, SIGKILL one worker at a random
    moment, restart it. Then let them finish. Returns the (open) log and the events sent."""
    rng = random.Random(SEED)
    log = open_log(f"sqlite:///{db}")
    await log.open()
    await log.create_topic(TopicSpec(name=IN, partitions=4))
    await log.create_topic(TopicSpec(name=OUT, partitions=1))
    prod = Producer(log, linger=0)
    workers = {m: await _spawn(db, m, mode) for m in ("w0", "w1")}
    for w in workers.values():
        await _started(w)
    try:
        for r in range(kills):
            await feed(prod, r)
            await prod.flush()
            before = await _committed(log)

            async def progressed(before: int = before) -> bool:
                return await _committed(log) > before

            await _until(progressed, 60)
            await asyncio.sleep(rng.random() * 0.03)  # a random point within a batch
            victim = rng.choice(sorted(workers))
            workers[victim].send_signal(signal.SIGKILL)
            await workers[victim].wait()
            workers[victim] = await _spawn(db, victim, mode)
            await _started(workers[victim])
        sent = prod.sent

        async def done() -> bool:
            return await _committed(log) >= sent

        await _until(done, 90)
    finally:
        for p in workers.values():
            if p.returncode is None:
                p.send_signal(signal.SIGKILL)
                await p.wait()
        await prod.close()
    return log, sent


async def test_counter_survives_random_sigkills(tmp_path: Path) -> None:
    sent = 0

    async def feed(prod: Producer, _round: int) -> None:
        nonlocal sent
        for _ in range(PER_ROUND):
            await prod.send(IN, f"{sent}".encode(), key=f"k{sent % KEYS}".encode())
            sent += 1

    log, total = await _chaos(tmp_path / "crash.db", "count", KILLS, feed)
    try:
        outs = await log.read(OUT, 0, 0, max_records=1_000_000)
        assert len(outs) == total, f"{len(outs)} outputs for {total} events"
        positions = set()
        counts: dict[str, list[int]] = {}
        for r in outs:
            key, n, p, off = r.value.decode().split(":")
            positions.add((int(p), int(off)))
            counts.setdefault(key, []).append(int(n))
        assert len(positions) == total  # every input position produced exactly one output
        for key, ns in counts.items():
            assert ns == list(range(1, len(ns) + 1)), f"{key}: {ns[:20]}..."  # none applied twice
            stored = await log.get_state(GROUP, "n", partition_for(key.encode(), 4), key.encode())
            assert stored is not None
            assert msgspec.msgpack.decode(stored) == len(ns)
        committed = await log.committed(GROUP, IN)
        ends = {po.partition: po.end for po in await log.offsets(IN)}
        assert {tp.partition: o for tp, o in committed.items()} == ends
    finally:
        await log.close()


async def test_window_aggregation_survives_random_sigkills(tmp_path: Path) -> None:
    keys = 7
    base = 1_700_000_000_000
    enc = msgspec.json.Encoder()
    per_key = 0

    async def feed(prod: Producer, _round: int) -> None:
        # Per key one sample per second of event time, in order: 10 per window.
        nonlocal per_key
        for _ in range(6):
            for k in range(keys):
                s = Sample(base + per_key * 1000, 1.0)
                await prod.send(IN, enc.encode(s), key=f"dev{k}".encode())
            per_key += 1

    log, _ = await _chaos(tmp_path / "window.db", "window", max(1, KILLS // 2), feed)
    try:
        dec = msgspec.json.Decoder(WindowOutput)
        outs = [dec.decode(r.value) for r in await log.read(OUT, 0, 0, max_records=1_000_000)]
        results = [o for o in outs if isinstance(o, WindowResult)]
        closed = [o for o in outs if isinstance(o, WindowClosed)]
        seen = [(o.key, o.window.start, o.revision) for o in results]
        assert len(seen) == len(set(seen)), "a window result was emitted twice"
        assert len(closed) == len({(o.key, o.window.start) for o in closed})
        complete = per_key * 1000 // WINDOW_MS - 1  # the last window may still be open
        for k in range(keys):
            starts = sorted(o.window.start for o in results if o.key == f"dev{k}")
            want = [base + w * WINDOW_MS for w in range(complete)]
            assert starts[:complete] == want, f"dev{k}: windows lost"
        for o in results:
            assert o.values["count"].value == 10, o  # no sample lost or counted twice
    finally:
        await log.close()
