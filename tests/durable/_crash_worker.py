"""A worker process for the crash tests: runs N workflows on a SQLite file until all are done.

Started, SIGKILLed at random points and restarted by ``test_crash.py``; every activity records
its execution (idempotency key, pid, start time) in a separate SQLite file first, as a real side
effect would, so the test can count executions.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time

from garrison.durable import Engine, EngineConfig, WorkflowContext, activity_info

EFFECTS = os.environ.get("GARRISON_CRASH_EFFECTS", "effects.db")


def _effect(value: int) -> int:
    info = activity_info()
    time.sleep(0.005)  # some work, so that kills land while activities run
    conn = sqlite3.connect(EFFECTS, timeout=30, isolation_level=None)
    try:
        conn.execute(
            "INSERT INTO effects (key, workflow_id, step, pid, started_at) VALUES (?, ?, ?, ?, ?)",
            (info.idempotency_key, info.workflow_id, info.step, os.getpid(), time.time()),
        )
    finally:
        conn.close()
    return value


def first(i: int) -> int:
    return _effect(i + 1)


def second(v: int) -> int:
    return _effect(2 * v)


def third(v: int) -> int:
    return _effect(3 * v)


def last(a: int, b: int, c: int) -> int:
    return _effect(a + b + c)


async def crash_wf(ctx: WorkflowContext, i: int) -> int:
    a = await ctx.activity(first, i)
    await ctx.sleep(0.05)
    b, c = await ctx.gather(ctx.activity(second, a), ctx.activity(third, a))
    return await ctx.activity(last, a, b, c)


async def main(db: str, n: int) -> None:
    cfg = EngineConfig(worker_id="crash-worker", poll_interval=0.2)
    async with Engine(f"sqlite:///{db}", workflows=[crash_wf], config=cfg) as engine:
        handles = await asyncio.gather(*(engine.start(crash_wf, i, id=f"wf-{i}") for i in range(n)))
        print("STARTED", flush=True)
        for h in handles:
            await h.result()
    print("ALL DONE", flush=True)


if __name__ == "__main__":
    conn = sqlite3.connect(EFFECTS, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS effects "
        "(key TEXT, workflow_id TEXT, step INTEGER, pid INTEGER, started_at REAL)"
    )
    conn.close()
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
