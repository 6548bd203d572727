"""Durable workflows on PostgreSQL: 1 and 2 worker processes, garrison vs DBOS; takeover time.

Throughput: the 3-step workflow of ``durable_workflows`` (three trivial activities), run by 1
and by 2 worker processes on one PostgreSQL schema (garrison: ``postgresql://...?schema=``,
each process an Engine starting and awaiting its own workflows, ``CONCURRENCY`` in flight;
DBOS 3.4: ``bench/_dbos_pg_peer.py``, its system tables in one schema, ``CONCURRENCY``
threads per process, each process its own executor id). The processes warm up, then start
measuring together; the aggregate rate is all workflows / (last end - first start). Both
sides commit with PostgreSQL's default ``synchronous_commit = on``.

The limit is measured in the same run: raw durable commits of this PostgreSQL (one tiny INSERT
per transaction) from as many connections as workflows in flight; a garrison workflow takes 4
commits (start with its first transition, then one per activity result), so the limit shown
is that rate ÷ 4.

Takeover: two garrison workers (lease ``LEASE`` s) run long workflows; one is SIGKILLed, and
the time from the kill until the survivor has claimed every workflow the victim held is
measured (by polling the store's ``owner`` column every 10 ms). It cannot be shorter than what
was left of the victim's lease (up to ``LEASE``) and adds at most the survivor's poll interval.
DBOS has no automatic takeover between live executors without Conductor (a crashed executor's
workflows are recovered when an executor with its id restarts), so that row has no peer.

``python -m bench.durable_postgres worker|takeover ...`` is the worker process used here (on
uvloop, like the harness, unless ``BENCH_LOOP=asyncio``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from garrison.durable import Engine, EngineConfig, WorkflowContext

from ._harness import Row, median, note, progress

PILLAR = "durable"
PG = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
COMMITS_PER_WORKFLOW = 4
CONCURRENCY = 32
"""Workflows in flight per worker process."""
LEASE = 2.0
POLL = 0.2
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    rounds: int
    n: int
    """Workflows per worker process and point (garrison)."""
    dbos_n: int
    commits: int
    takeovers: int


FULL = Plan(rounds=3, n=3000, dbos_n=1000, commits=2000, takeovers=3)
QUICK = Plan(rounds=1, n=400, dbos_n=200, commits=300, takeovers=1)


# -- the workflows ---------------------------------------------------------------------------


async def one(x: int) -> int:
    return x + 1


async def two(x: int) -> int:
    return x + 1


async def three(x: int) -> int:
    return x + 1


async def three_steps(ctx: WorkflowContext, x: int) -> int:
    return await ctx.activity(three, await ctx.activity(two, await ctx.activity(one, x)))


async def nap() -> None:
    await asyncio.sleep(0.05)


async def long_wf(ctx: WorkflowContext) -> int:
    for _ in range(200):  # ~10 s of activities: still running when its worker is killed
        await ctx.activity(nap)
    return 0


# -- worker processes ----------------------------------------------------------------------------


async def _worker(url: str, n: int, concurrency: int, name: str) -> None:
    """Start and await ``n`` 3-step workflows; print READY, wait for GO, print the timing."""
    cfg = EngineConfig(worker_id=name, poll_interval=POLL)
    async with Engine(url, workflows=[three_steps], config=cfg) as engine:
        for i in range(20):  # warm up (connections, statement caches)
            await (await engine.start(three_steps, -i)).result()
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        latencies: list[float] = []
        per_task = n // concurrency

        async def task() -> None:
            for i in range(per_task):
                t = time.perf_counter()
                h = await engine.start(three_steps, i)
                assert await h.result() == i + 3
                latencies.append(time.perf_counter() - t)

        t0, cpu0 = time.time(), time.process_time()
        await asyncio.gather(*(task() for _ in range(concurrency)))
        t1, cpu = time.time(), time.process_time() - cpu0
        latencies.sort()
        print(
            json.dumps(
                {
                    "n": per_task * concurrency,
                    "t0": t0,
                    "t1": t1,
                    "cpu_s": cpu,
                    "p50_ms": latencies[len(latencies) // 2] * 1e3,
                    "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
                }
            ),
            flush=True,
        )


async def _takeover_worker(url: str, name: str, max_active: int) -> None:
    """Run ``long_wf`` workflows from the store until killed."""
    cfg = EngineConfig(
        worker_id=name, lease_seconds=LEASE, poll_interval=POLL, max_active=max_active
    )
    async with Engine(url, workflows=[long_wf], config=cfg):
        print("READY", flush=True)
        await asyncio.Event().wait()


# -- the measuring side --------------------------------------------------------------------------


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def _ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        raise RuntimeError(f"worker failed: {line}{proc.communicate(timeout=60)[1][-3000:]}")


def _together(argvs: list[list[str]]) -> dict[str, float]:
    """Run worker processes, start their measurements together, aggregate their results."""
    procs = [_spawn(a) for a in argvs]
    try:
        for p in procs:
            _ready(p)
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"worker failed:\n{err[-3000:]}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    wall = max(r["t1"] for r in results) - min(r["t0"] for r in results)
    return {
        "wf_per_s": sum(r["n"] for r in results) / wall,
        "p50_ms": median([r["p50_ms"] for r in results]),
        "cpu_ms_per_wf": sum(r["cpu_s"] for r in results) * 1e3 / sum(r["n"] for r in results),
    }


async def _sql(query: str, *args: Any) -> Any:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(PG)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _drop(schema: str) -> None:
    await _sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def raw_commits(n: int, connections: int) -> float:
    """Durable PostgreSQL transactions per second: one tiny INSERT each, from ``connections``
    connections at once."""
    import asyncpg

    schema = f"bench_raw_{uuid.uuid4().hex[:8]}"
    await _sql(f"CREATE SCHEMA {schema}")
    await _sql(f"CREATE TABLE {schema}.t (id bigserial PRIMARY KEY, v bytea)")
    pool = await asyncpg.create_pool(
        PG, min_size=connections, max_size=connections,
        server_settings={"search_path": schema, "synchronous_commit": "on"},
    )  # fmt: skip
    try:

        async def commits(count: int) -> None:
            async with pool.acquire() as conn:
                for _ in range(count):
                    await conn.execute("INSERT INTO t (v) VALUES ($1)", b"x" * 64)

        await asyncio.gather(*(commits(n // connections // 4 + 1) for _ in range(connections)))
        t0 = time.perf_counter()
        await asyncio.gather(*(commits(n // connections) for _ in range(connections)))
        return (n // connections * connections) / (time.perf_counter() - t0)
    finally:
        await pool.close()
        await _drop(schema)


async def garrison_point(processes: int, n: int) -> dict[str, float]:
    schema = f"bench_g_{uuid.uuid4().hex[:8]}"
    url = f"{PG}?schema={schema}"
    try:
        async with Engine(url, workflows=[three_steps], worker=False):
            pass  # create and migrate the schema once, before the workers race to
        argv = ["-m", "bench.durable_postgres", "worker", url, str(n), str(CONCURRENCY)]
        return await asyncio.to_thread(_together, [[*argv, f"w{k}"] for k in range(processes)])
    finally:
        await _drop(schema)


async def dbos_point(processes: int, n: int) -> dict[str, float]:
    schema = f"bench_d_{uuid.uuid4().hex[:8]}"
    argv = ["-m", "bench._dbos_pg_peer", PG, schema]
    try:
        # the first DBOS process creates its tables alone; the others then find them ready
        await asyncio.to_thread(_together, [[*argv, "warm", "20", "1"]])
        return await asyncio.to_thread(
            _together, [[*argv, f"e{k}", str(n), str(CONCURRENCY)] for k in range(processes)]
        )
    finally:
        await _drop(schema)


async def takeover() -> float:
    """Seconds from SIGKILL of one of two workers until the other holds all its workflows."""
    schema = f"bench_t_{uuid.uuid4().hex[:8]}"
    url = f"{PG}?schema={schema}"
    procs: list[subprocess.Popen[str]] = []
    try:
        async with Engine(url, workflows=[long_wf], worker=False) as client:
            for i in range(30):
                await client.start(long_wf, id=f"long-{i}")
        # the victim takes half the work at its start, the survivor the rest and has room for
        # all of the victim's: the measurement is the takeover, not a full worker
        for name, room in (("victim", "15"), ("survivor", "100")):
            procs.append(_spawn(["-m", "bench.durable_postgres", "takeover", url, name, room]))
            await asyncio.to_thread(_ready, procs[-1])
        q = f'SELECT id FROM "{schema}".wf_instances WHERE owner = $1 AND status = $2'
        deadline = time.monotonic() + 60
        while not await _sql(q, "survivor", "running"):
            if time.monotonic() > deadline:
                raise RuntimeError("the survivor never claimed work")
            await asyncio.sleep(0.01)
        held = {r[0] for r in await _sql(q, "victim", "running")}
        if not held:
            raise RuntimeError("the victim held no workflow")
        procs[0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await asyncio.to_thread(procs[0].wait)
        while True:
            rows = await _sql(
                f'SELECT count(*) FROM "{schema}".wf_instances WHERE id = ANY($1::text[]) '
                "AND (owner = 'survivor' OR status <> 'running')",
                sorted(held),
            )
            if rows[0][0] == len(held):
                return time.monotonic() - killed
            if time.monotonic() - killed > 60:
                raise RuntimeError("the victim's workflows were not taken over")
            await asyncio.sleep(0.01)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate(timeout=60)
        await _drop(schema)


async def run(quick: bool) -> list[Row]:
    """Raw commit rates, then per process count garrison and DBOS, alternating; takeovers."""
    plan = QUICK if quick else FULL
    try:
        dbos_version: str | None = version("dbos")
    except PackageNotFoundError:
        dbos_version = None
    g: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    d: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    raw1: list[float] = []
    raw_c: list[float] = []
    takeovers: list[float] = []
    steps = plan.rounds * (2 + 2 * (2 if dbos_version else 1)) + plan.takeovers
    with progress("durable_postgres", steps) as advance:
        for r in range(plan.rounds):
            raw1.append(await raw_commits(plan.commits // 4, 1))
            advance(f"raw commits c=1: {raw1[-1]:,.0f}/s")
            raw_c.append(await raw_commits(plan.commits * 4, 2 * CONCURRENCY))
            advance(f"raw commits c={2 * CONCURRENCY}: {raw_c[-1]:,.0f}/s")
            for procs in (1, 2):
                s = await garrison_point(procs, plan.n)
                g[procs].append(s)
                advance(f"round {r + 1} {procs} proc garrison: {s['wf_per_s']:,.0f} wf/s")
                if dbos_version:
                    ds = await dbos_point(procs, plan.dbos_n)
                    d[procs].append(ds)
                    advance(f"round {r + 1} {procs} proc DBOS: {ds['wf_per_s']:,.0f} wf/s")
        for _ in range(plan.takeovers):
            takeovers.append(await takeover())
            advance(f"takeover: {takeovers[-1]:.2f} s")
    limit = median(raw_c)
    rows = [
        Row(
            "raw durable PostgreSQL commits c=1",
            "commits/s",
            None,
            better=None,
            limit=median(raw1),
            notes="one tiny INSERT per transaction, one connection",
        ),
        Row(
            f"raw durable PostgreSQL commits c={2 * CONCURRENCY}",
            "commits/s",
            None,
            better=None,
            limit=limit,
            notes=f"{2 * CONCURRENCY} connections at once (WAL flushes shared): the limit",
        ),
    ]
    for procs in (1, 2):
        peers = {"DBOS": median([x["wf_per_s"] for x in d[procs]])} if d[procs] else {}
        lat = {"DBOS": median([x["p50_ms"] for x in d[procs]])} if d[procs] else {}
        rows.append(
            Row(
                f"3-step workflows/s, {procs} worker process{'es' if procs > 1 else ''}",
                "wf/s",
                median([s["wf_per_s"] for s in g[procs]]),
                peers=peers,
                limit=limit / COMMITS_PER_WORKFLOW,
                notes=f"c={CONCURRENCY} per process; limit = raw commits/s ÷ 4; CPU per "
                f"workflow: garrison {median([s['cpu_ms_per_wf'] for s in g[procs]]):.2f} ms"
                + (
                    f", DBOS {median([x['cpu_ms_per_wf'] for x in d[procs]]):.2f} ms"
                    if d[procs]
                    else ""
                ),
            )
        )
        rows.append(
            Row(
                f"p50 latency, {procs} worker process{'es' if procs > 1 else ''}",
                "ms",
                median([s["p50_ms"] for s in g[procs]]),
                peers=lat,
                better="lower",
            )
        )
    rows.append(
        Row(
            "takeover after SIGKILL of 1 of 2 workers",
            "s",
            median(takeovers),
            better="lower",
            limit=LEASE,
            notes=f"lease {LEASE:g} s, poll {POLL:g} s: kill -> survivor holds all of the "
            f"victim's workflows (max {max(takeovers):.2f} s)",
        )
    )
    note(
        "setup",
        f"PostgreSQL at {PG}, synchronous_commit=on; garrison asyncpg pool of 10 per process; "
        + (
            f"DBOS {dbos_version} (psycopg, pool {CONCURRENCY + 4}) per process"
            if dbos_version
            else "DBOS not installed: peer column empty"
        ),
    )
    return rows


def _run_worker(argv: list[str]) -> None:
    """A worker process, on the loop the harness would use (uvloop unless BENCH_LOOP=asyncio)."""
    from ._harness import event_loop_name

    if argv[0] == "worker":
        main = _worker(argv[1], int(argv[2]), int(argv[3]), argv[4])
    elif argv[0] == "takeover":
        main = _takeover_worker(argv[1], argv[2], int(argv[3]))
    else:
        raise SystemExit(f"unknown mode {argv[0]!r} (worker or takeover)")
    if event_loop_name() == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


if __name__ == "__main__":
    _run_worker(sys.argv[1:])
