"""A worker process for the PostgreSQL kill test: runs workflows from one PG schema until none is
left running.

Usage: ``_pg_crash_worker.py URL WORKER_ID LEASE_SECONDS MAX_ACTIVE``. ``test_postgres_crash.py``
starts the workflows, runs two of these, SIGKILLs one at random points and starts a fresh one
(a new worker id, so its predecessor's work is taken over only after the lease expires).

Every activity execution is recorded in the ``executions`` table of the same schema: a row
committed when it starts (worker, workflow, step, a unique id, start time) and its end time
committed when it returns; the activity returns its execution id with its value, so the
workflow's result names exactly the executions whose results were committed.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from garrison.durable import Engine, EngineConfig, Status, WorkflowContext, activity_info

WORKER = "?"
_pool: Any = None


async def _effect(value: int) -> list[Any]:
    info = activity_info()
    exec_id = uuid.uuid4().hex
    await _pool.execute(
        "INSERT INTO executions (exec_id, worker, workflow_id, step, started_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        exec_id,
        WORKER,
        info.workflow_id,
        info.step,
        time.time(),
    )
    await asyncio.sleep(0.01)  # some work, so that kills land while activities run
    await _pool.execute(
        "UPDATE executions SET ended_at = $1 WHERE exec_id = $2", time.time(), exec_id
    )
    return [value, exec_id]


async def first(i: int) -> list[Any]:
    return await _effect(i + 1)


async def second(v: int) -> list[Any]:
    return await _effect(2 * v)


async def third(v: int) -> list[Any]:
    return await _effect(3 * v)


async def last(a: int, b: int, c: int) -> list[Any]:
    return await _effect(a + b + c)


async def pg_crash_wf(ctx: WorkflowContext, i: int) -> list[Any]:
    a, e1 = await ctx.activity(first, i)
    await ctx.sleep(0.05)
    (b, e2), (c, e3) = await ctx.gather(ctx.activity(second, a), ctx.activity(third, a))
    d, e4 = await ctx.activity(last, a, b, c)
    return [d, [e1, e2, e3, e4]]


async def main(url: str, lease: float, max_active: int) -> None:
    global _pool
    schema = url.rsplit("schema=", 1)[1]
    _pool = await asyncpg.create_pool(
        url.split("?")[0], min_size=1, max_size=4, server_settings={"search_path": schema}
    )
    cfg = EngineConfig(
        worker_id=WORKER, lease_seconds=lease, poll_interval=0.1, max_active=max_active
    )
    async with Engine(url, workflows=[pg_crash_wf], config=cfg) as engine:
        print("READY", flush=True)
        while True:  # until no workflow is left running anywhere
            if not await engine.list(status=Status.RUNNING, limit=1):
                break
            await asyncio.sleep(0.2)
    await _pool.close()
    print("ALL DONE", flush=True)


if __name__ == "__main__":
    WORKER = sys.argv[2]
    asyncio.run(main(sys.argv[1], float(sys.argv[3]), int(sys.argv[4])))
