"""The PostgreSQL kill test: two real worker processes share one schema; one of them is SIGKILLed
at random points (several rounds) and replaced by a fresh worker, and in the end:

* nothing is lost: every workflow completed, with the right result, and its history holds each
  activity's result exactly once;
* the killed workers' work was taken over (by a worker with another id, after lease expiry) and
  finished by the survivors;
* no step ever ran concurrently under two owners: for each (workflow, step), the executions by
  different workers occupy disjoint time intervals, where an execution cut short by a kill
  counts as running until the kill was observed (and one that neither ended nor was killed,
  until the end of the test);
* the result the workflow committed for a step is that of an execution that ran to its end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from garrison.core import msgpack_decode
from garrison.durable import Engine
from garrison.durable._journal import ActivityCompleted, decode_batch

from ._pg_crash_worker import pg_crash_wf
from .conftest import PG_URL, drop_schema, pg_reachable

WORKER = Path(__file__).with_name("_pg_crash_worker.py")
ROUNDS = int(os.environ.get("GARRISON_PG_CRASH_ROUNDS", "8"))
WORKFLOWS = 400
LEASE = 3.0
"""Lease of the workers: a kill's work waits this long before it is taken over."""
MAX_ACTIVE = 40
"""Per worker, so that both workers have work in flight when one is killed."""


async def _sql(schema: str, query: str, *args: Any) -> list[Any]:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(PG_URL, server_settings={"search_path": schema})
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def sql(schema: str, query: str, *args: Any) -> list[Any]:
    return asyncio.run(_sql(schema, query, *args))


async def _setup(url: str, schema: str) -> None:
    async with Engine(url, workflows=[pg_crash_wf], worker=False) as client:
        await asyncio.gather(
            *(client.start(pg_crash_wf, i, id=f"wf-{i}") for i in range(WORKFLOWS))
        )
    await _sql(
        schema,
        "CREATE TABLE executions (exec_id text PRIMARY KEY, worker text NOT NULL, "
        "workflow_id text NOT NULL, step bigint NOT NULL, started_at float8 NOT NULL, "
        "ended_at float8)",
    )


def spawn(url: str, worker: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, str(WORKER), url, worker, str(LEASE), str(MAX_ACTIVE)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_workers_one_killed_repeatedly_lose_nothing_and_never_overlap(tmp_path: Path) -> None:
    schema = f"t_{uuid.uuid4().hex[:16]}"
    url = f"{PG_URL}?schema={schema}"
    rng = random.Random(int(os.environ.get("GARRISON_CRASH_SEED", "0")) or None)
    asyncio.run(pg_reachable())
    try:
        asyncio.run(_setup(url, schema))
        run(url, schema, rng, tmp_path)
    finally:
        asyncio.run(drop_schema(schema))


def run(url: str, schema: str, rng: random.Random, tmp_path: Path) -> None:
    log = tmp_path / "workers.log"
    procs = {f"w{k}": spawn(url, f"w{k}", log) for k in range(2)}
    killed_at: dict[str, float] = {}
    spawned = 2
    target = 0
    for _ in range(ROUNDS):
        # kill points by progress (executions recorded), not by wall time
        target += rng.randint(40, 160)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and any(p.poll() is None for p in procs.values()):
            if sql(schema, "SELECT count(*) FROM executions")[0][0] >= target:
                break
            time.sleep(rng.uniform(0.0, 0.05))
        victim = rng.choice(sorted(procs))
        proc = procs.pop(victim)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at[victim] = time.time()
        fresh = f"w{spawned}"
        spawned += 1
        procs[fresh] = spawn(url, fresh, log)
    for proc in procs.values():
        proc.wait(timeout=180)
    out = log.read_text(errors="replace")
    assert all(p.returncode == 0 for p in procs.values()), out[-3000:]
    end = time.time()
    assert len(killed_at) >= ROUNDS * 3 // 4, "the workers finished before most kill points"

    # nothing lost: each workflow completed once with the right result
    rows = sql(schema, "SELECT id, status, result FROM wf_instances")
    assert len(rows) == WORKFLOWS
    committed_exec: dict[str, list[str]] = {}
    for wid, status, result in rows:
        i = int(wid.split("-")[1])
        assert status == "completed", wid
        value, execs = msgpack_decode(result)
        assert value == 6 * (i + 1), wid
        committed_exec[wid] = execs
    done: set[tuple[str, int]] = set()
    for wid, data in sql(schema, "SELECT workflow_id, data FROM wf_history"):
        for item in decode_batch(data).inputs:
            if isinstance(item, ActivityCompleted):
                assert (wid, item.step) not in done, "a step's result was committed twice"
                done.add((wid, item.step))
    assert len(done) == WORKFLOWS * 4

    executions = sql(
        schema, "SELECT exec_id, worker, workflow_id, step, started_at, ended_at FROM executions"
    )
    by_id = {r[0]: r for r in executions}
    per_step: dict[tuple[str, int], list[tuple[float, float, str]]] = defaultdict(list)
    for _, worker, wid, step, started, ended in executions:
        stop = ended if ended is not None else killed_at.get(worker, end)
        per_step[wid, step].append((started, stop, worker))
    # the committed results came from executions that ran to their end
    for wid, execs in committed_exec.items():
        for exec_id in execs:
            assert by_id[exec_id][2] == wid
            assert by_id[exec_id][5] is not None, f"{wid}: a result from an unfinished execution"
    # takeover happened: the killed workers' unfinished steps were run again by others
    retaken = [k for k, runs in per_step.items() if len({w for _, _, w in runs}) > 1]
    assert retaken, "no step was ever taken over from a killed worker"
    # never under two owners at once
    for key, runs in per_step.items():
        for (s1, e1, w1), (s2, e2, w2) in itertools.combinations(runs, 2):
            if w1 != w2:
                assert e1 <= s2 or e2 <= s1, f"{key} ran concurrently under {w1} and {w2}"
    print(
        f"{len(killed_at)} kills, {len(executions)} executions of {WORKFLOWS * 4} steps, "
        f"{len(retaken)} steps run again by another worker"
    )
