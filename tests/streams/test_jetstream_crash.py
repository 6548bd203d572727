"""Crash test on JetStream: processor processes SIGKILLed at random points and restarted.

Afterwards: no event lost, no state change applied twice, and NO duplicate output — effectively
once (outputs carry deterministic ids that JetStream dedupes; the commit records the
transaction, which a restarted member finishes before going on). The same worker as the SQLite
crash test (``_crash_worker.count``), on a file-backed JetStream log of its own.

``GARRISON_STREAMS_JS_CRASH_KILLS`` scales the number of kills (default 30: about a minute on a
loaded 2-core box). Run as a module (``python -m tests.streams.test_jetstream_crash URL
MEMBER``) it is the worker process.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import msgspec
import pytest

from garrison.streams import LogBackend, Processor, Producer, TopicSpec, open_log, partition_for

from ._crash_worker import GROUP, IN, OUT, count
from .test_jetstream_support import drop_jetstream, jetstream_url

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("GARRISON_STREAMS_JS_CRASH_KILLS", "30"))
KEYS = 23
PER_ROUND = 40
ROOT = Path(__file__).resolve().parents[2]


async def _spawn(url: str, member: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.streams.test_jetstream_crash", url, member,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def _started(p: asyncio.subprocess.Process) -> None:
    assert p.stdout is not None
    line = await asyncio.wait_for(p.stdout.readline(), 60)
    assert line == b"started\n", f"worker failed to start: {line!r}"


async def _outputs(log: LogBackend) -> int:
    return (await log.offsets(OUT))[0].end


async def _outputs_reach(log: LogBackend, n: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        if await _outputs(log) >= n or loop.time() > end:
            return
        await asyncio.sleep(0.01)


async def test_processor_on_jetstream_survives_random_sigkills() -> None:
    url = await jetstream_url(storage="file")
    rng = random.Random(int(os.environ.get("GARRISON_STREAMS_CRASH_SEED", "7")))
    log = open_log(url)
    await log.open()
    workers: dict[str, asyncio.subprocess.Process] = {}
    try:
        await log.create_topic(TopicSpec(name=IN, partitions=4))
        await log.create_topic(TopicSpec(name=OUT, partitions=1))
        prod = Producer(log, linger=0)
        sent = kills = 0
        for m in ("w0", "w1"):
            workers[m] = await _spawn(url, m)
            await _started(workers[m])
        while kills < KILLS:
            for _ in range(PER_ROUND):
                await prod.send(IN, f"{sent}".encode(), key=f"k{sent % KEYS}".encode())
                sent += 1
            await prod.flush()
            await _outputs_reach(log, await _outputs(log) + 1, 60)
            await asyncio.sleep(rng.random() * 0.05)  # somewhere within a batch
            victim = rng.choice(sorted(workers))
            workers[victim].send_signal(signal.SIGKILL)
            await workers[victim].wait()
            kills += 1
            workers[victim] = await _spawn(url, victim)
            await _started(workers[victim])
        await _outputs_reach(log, sent, 90)
        await prod.close()

        outs = await log.read(OUT, 0, 0, max_records=1_000_000)
        assert len(outs) == sent, f"{len(outs)} outputs for {sent} events"  # none lost or twice
        seen = set()
        counts: dict[str, list[int]] = {}
        for r in outs:
            key, n, p, off = r.value.decode().split(":")
            seen.add((int(p), int(off)))
            counts.setdefault(key, []).append(int(n))
        assert len(seen) == sent  # every input position produced exactly one output
        for key, ns in counts.items():
            assert ns == list(range(1, len(ns) + 1)), f"{key}: counts {ns[:20]}..."
            stored = await log.get_state(GROUP, "n", partition_for(key.encode(), 4), key.encode())
            assert stored is not None
            assert msgspec.msgpack.decode(stored) == len(ns)  # no state change applied twice
        committed = await log.committed(GROUP, IN)
        ends = {po.partition: po.end for po in await log.offsets(IN)}
        assert {tp.partition: o for tp, o in committed.items()} == ends
    finally:
        for p in workers.values():
            if p.returncode is None:
                p.send_signal(signal.SIGKILL)
                await p.wait()
        await log.close()
        await drop_jetstream(url)


async def _worker(url: str, member: str) -> None:
    log = open_log(url)
    await log.open()
    proc = Processor(
        log, IN, count, group=GROUP, stores={"n": int}, outputs=[OUT], max_records=7,
        lease=5.0, member=member, dlq=None,
    )  # fmt: skip
    await proc.start()
    print("started", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_worker(sys.argv[1], sys.argv[2]))
