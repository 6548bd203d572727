"""A processor process for the crash tests: counts events per key, emits each new count; or
(``window`` mode) aggregates samples over 10 s tumbling windows.

Run as ``python -m tests.streams._crash_worker DB MEMBER [count|window]``; it runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

from garrison.streams import (
    Aggregation,
    Processor,
    ProcessorContext,
    StoredRecord,
    Tumbling,
    open_log,
    window_processor,
)

IN, OUT, GROUP = "events", "counts", "crash"
WINDOW_MS = 10_000


def count(ctx: ProcessorContext, rec: StoredRecord) -> None:
    assert rec.key is not None
    store = ctx.state("n")
    n = store.get(rec.key, 0) + 1
    store.set(rec.key, n)
    ctx.emit(OUT, f"{rec.key.decode()}:{n}:{rec.partition}:{rec.offset}".encode())


async def main(db: str, member: str, mode: str) -> None:
    log = open_log(f"sqlite:///{db}")
    await log.open()
    if mode == "window":
        proc = window_processor(
            log, IN, group=GROUP, windows=Tumbling(WINDOW_MS), output=OUT,
            aggregation=Aggregation(("count", "sum")), max_records=7, lease=5.0, member=member,
            dlq=None,
        )  # fmt: skip
    else:
        proc = Processor(
            log, IN, count, group=GROUP, stores={"n": int}, outputs=[OUT], max_records=7,
            lease=5.0, member=member, dlq=None,
        )  # fmt: skip
    await proc.start()
    print("started", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "count"))
