"""Durable actors on SQLite: one hot key with 10,000 state-changing messages, and 10,000 keys x
10 messages; garrison vs DBOS and vs a naive sqlite3 loop, with the raw durable commit rate.

garrison runs in this process (an :class:`ActorSystem` on a SQLite store: WAL,
``synchronous=FULL``; every message is durable before ``signal``/``call`` returns, and its
state change is committed with fsync before a reply). Peers, on the same disk in the same run:

* **DBOS 3.4** (subprocess, ``bench/_dbos_actor_peer.py``): one DBOS workflow per message whose
  step applies the change (an UPSERT committed with fsync in an application SQLite file). DBOS 3
  removed application-database transactions, so this is the closest DBOS shape; it is a
  workflow + step per message, not an actor (no per-key ordering or single-threadedness).
* **naive sqlite3**: the hand-written baseline, one durable transaction per message (``BEGIN
  IMMEDIATE``; UPSERT the counter; ``COMMIT``), sequentially, as an actor store without group
  commit would do. It keeps no inbox and no replies, so it does less work than either.

Neither Dapr nor Orleans runs in Python; they are not measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import msgspec

from garrison.durable import ActorConfig, ActorSystem, actor
from garrison.durable._stores.sqlite import SqliteStore

from ._harness import Row, median, note, percentile, progress
from .durable_workflows import raw_commits  # the same limit, measured the same way

PILLAR = "durable"


class Count(msgspec.Struct):
    n: int = 0


@actor(name="BenchCounter")
class BenchCounter:
    state: Count

    async def inc(self, by: int) -> int:
        self.state.n += by
        return self.state.n


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    rounds: int
    hot: int
    hot_c1: int
    keys: int
    per_key: int
    naive: int
    dbos_hot: int
    dbos_keys: int
    commits: int


FULL = Plan(
    rounds=3,
    hot=10_000,
    hot_c1=1_000,
    keys=10_000,
    per_key=10,
    naive=2_000,
    dbos_hot=300,
    dbos_keys=1_500,
    commits=2_000,
)
QUICK = Plan(
    rounds=1,
    hot=1_000,
    hot_c1=200,
    keys=1_000,
    per_key=10,
    naive=300,
    dbos_hot=50,
    dbos_keys=200,
    commits=300,
)


@dataclass
class Sample:
    msgs_per_s: float
    p50_ms: float
    commits_per_msg: float


async def garrison_run(directory: Path, n: int, keys: int, senders: int, mode: str) -> Sample:
    """``n`` messages (``signal`` or ``call``) spread over ``keys`` keys by ``senders`` concurrent
    senders, until every one is handled and committed."""
    store = SqliteStore(directory / "actors.db")
    await store.open()
    system = ActorSystem(store, actors=[BenchCounter], config=ActorConfig(idle_timeout=600))
    await system.open()
    try:
        await system.ref(BenchCounter, "warm").call("inc", 1)
        base = system.stats.messages
        latencies: list[float] = []
        clock = time.perf_counter

        async def sender(s: int) -> None:
            for i in range(s, n, senders):
                ref = system.ref(BenchCounter, f"k{i % keys}")
                t0 = clock()
                if mode == "call":
                    await ref.call("inc", 1)
                else:
                    await ref.signal("inc", 1)
                latencies.append(clock() - t0)

        commits0 = store.stats.commits
        t0 = clock()
        await asyncio.gather(*(sender(s) for s in range(senders)))
        while system.stats.messages - base < n:  # noqa: ASYNC110 (signals: until handled)
            await asyncio.sleep(0.001)
        wall = clock() - t0
        commits = store.stats.commits - commits0
        if keys == 1:
            state = await system.state(BenchCounter, "k0")
            assert state.n == n, (state.n, n)
        return Sample(n / wall, percentile(latencies, 0.5) * 1e3, commits / n)
    finally:
        await system.close()
        await store.close()


def naive_run(directory: Path, n: int, keys: int) -> float:
    """One durable transaction per message: messages/s."""
    conn = sqlite3.connect(directory / "naive.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE counters (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    t0 = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO counters (key, n) VALUES (?, 1) ON CONFLICT (key) DO UPDATE SET n = n + 1",
            (f"k{i % keys}",),
        )
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def dbos_run(directory: Path, n: int, keys: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench._dbos_actor_peer",
            str(directory),
            str(n),
            str(keys),
            str(concurrency),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if out.returncode != 0:
        raise RuntimeError(f"DBOS peer failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _tmp() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP"))


async def run(quick: bool) -> list[Row]:
    """Raw commit rate; per scenario garrison, the naive loop and DBOS, alternating, in rounds."""
    plan = QUICK if quick else FULL
    try:
        dbos_version: str | None = version("dbos")
    except PackageNotFoundError:
        dbos_version = None
    many = plan.keys * plan.per_key
    # (label, messages, keys, senders, mode)
    scenarios = [
        (f"hot key: {plan.hot:,} signals, 100 senders", plan.hot, 1, 100, "signal"),
        (f"hot key: {plan.hot:,} calls, 100 callers", plan.hot, 1, 100, "call"),
        (f"hot key: {plan.hot_c1:,} calls, 1 caller", plan.hot_c1, 1, 1, "call"),
        (
            f"{plan.keys:,} keys x {plan.per_key} signals, 200 senders",
            many,
            plan.keys,
            200,
            "signal",
        ),
    ]
    g: dict[str, list[Sample]] = {s[0]: [] for s in scenarios}
    naive: dict[int, list[float]] = {1: [], plan.keys: []}
    dbos: dict[str, list[dict[str, float]]] = {"hot": [], "keys": []}
    commits: list[float] = []
    steps = plan.rounds * (1 + len(scenarios) + 2 + (2 if dbos_version else 0))
    with progress("durable_actors", steps) as advance:
        for r in range(plan.rounds):
            with _tmp() as tmp:
                commits.append(await asyncio.to_thread(raw_commits, Path(tmp), plan.commits))
            advance(f"raw commits: {commits[-1]:,.0f}/s")
            for label, n, keys, senders, mode in scenarios:
                with _tmp() as tmp:
                    s = await garrison_run(Path(tmp), n, keys, senders, mode)
                g[label].append(s)
                advance(f"round {r + 1} {label}: {s.msgs_per_s:,.0f} msgs/s")
            for keys in naive:
                with _tmp() as tmp:
                    naive[keys].append(
                        await asyncio.to_thread(naive_run, Path(tmp), plan.naive, keys)
                    )
                advance(f"round {r + 1} naive sqlite3 keys={keys}: {naive[keys][-1]:,.0f} msgs/s")
            if dbos_version:
                with _tmp() as tmp:
                    dbos["hot"].append(
                        await asyncio.to_thread(dbos_run, Path(tmp), plan.dbos_hot, 1, 1)
                    )
                advance(f"round {r + 1} DBOS hot: {dbos['hot'][-1]['msgs_per_s']:,.0f} msgs/s")
                with _tmp() as tmp:
                    dbos["keys"].append(
                        await asyncio.to_thread(dbos_run, Path(tmp), plan.dbos_keys, plan.keys, 100)
                    )
                advance(f"round {r + 1} DBOS keys: {dbos['keys'][-1]['msgs_per_s']:,.0f} msgs/s")
    raw = median(commits)
    rows = [
        Row(
            "raw durable SQLite commits (WAL, synchronous=FULL)",
            "commits/s",
            None,
            better=None,
            limit=raw,
            notes="one tiny INSERT per transaction on this disk: the physical limit",
        )
    ]
    for label, _, keys, senders, mode in scenarios:
        peers = {"naive sqlite3": median(naive[1 if keys == 1 else plan.keys])}
        d = dbos["hot" if keys == 1 else "keys"]
        if d:
            peers["DBOS"] = median([x["msgs_per_s"] for x in d])
        cpm = median([s.commits_per_msg for s in g[label]])
        rows.append(
            Row(
                f"{label} (msgs/s)",
                "msgs/s",
                median([s.msgs_per_s for s in g[label]]),
                peers=peers,
                vs="naive sqlite3",
                limit=raw if senders == 1 else None,
                notes=f"garrison {cpm:.3f} commits per message"
                + (
                    " (a call to a live actor: one commit; limit = raw commits/s)"
                    if senders == 1
                    else " (group commit)"
                ),
            )
        )
        if mode == "call":
            rows.append(
                Row(
                    f"{label} (p50 latency)",
                    "ms",
                    median([s.p50_ms for s in g[label]]),
                    better="lower",
                    notes="call: handled and its turn committed before it returns",
                )
            )
    note(
        "peers",
        "naive sqlite3: one durable transaction (UPSERT) per message, sequential; "
        f"DBOS {dbos_version or 'not installed'}: a workflow + one step (UPSERT, fsync) per "
        "message, sequential for the hot key, 100 threads for many keys",
    )
    note("store", "SQLite WAL, synchronous=FULL on both sides; ratio vs the naive loop")
    return rows
