"""Durable workflows on SQLite: a 3-step workflow (three trivial activities), garrison vs DBOS.

Both sides use one SQLite file in WAL mode with ``synchronous=FULL`` (fsync before a commit
returns, so before a result is acknowledged). garrison runs in this process; DBOS 3.4 runs in
a subprocess (``bench/_dbos_peer.py``), sequentially at c=1 and from a thread pool at
c=64/128/256 (20,000 workflows per point for garrison), on the same disk, in the same run;
``bench/results/durable_workflows.png`` draws the latency/throughput curve of both. The
physical limit is measured here too: the rate of raw durable SQLite commits (one tiny INSERT
per transaction) on this disk.

At c=1 a garrison workflow takes 4 commits (start with its first transition, then one per
activity result, the last one carrying the completion), so the c=1 limit shown is the raw
commit rate ÷ 4. Under concurrency, group commit shares each fsync among many workflows.
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

from garrison.durable import Engine, WorkflowContext
from garrison.durable._stores.sqlite import SqliteStore

from ._harness import Row, median, note, percentile, progress

PILLAR = "durable"
COMMITS_PER_WORKFLOW = 4


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    rounds: int
    n: dict[int, int]
    dbos_n: dict[int, int]
    commits: int


FULL = Plan(
    rounds=3,
    n={1: 600, 64: 20_000, 128: 20_000, 256: 20_000},
    dbos_n={1: 300, 64: 1500, 128: 1500, 256: 1500},
    commits=2000,
)
QUICK = Plan(
    rounds=1, n={1: 100, 64: 1000, 256: 1000}, dbos_n={1: 50, 64: 200, 256: 200}, commits=300
)


async def one(x: int) -> int:
    return x + 1


async def two(x: int) -> int:
    return x + 1


async def three(x: int) -> int:
    return x + 1


async def three_steps(ctx: WorkflowContext, x: int) -> int:
    return await ctx.activity(three, await ctx.activity(two, await ctx.activity(one, x)))


@dataclass
class Sample:
    wf_per_s: float
    p50_ms: float
    p99_ms: float
    commits_per_wf: float


async def garrison_batch(directory: Path, n: int, concurrency: int) -> Sample:
    """``n`` workflows, ``concurrency`` in flight, each started and awaited to its result."""
    store = SqliteStore(directory / "garrison.db")
    await store.open()
    engine = Engine(store, workflows=[three_steps])
    await engine.open()
    try:
        for i in range(20):  # warm up
            await (await engine.start(three_steps, -i)).result()
        latencies: list[float] = []
        clock = time.perf_counter
        per_worker = n // concurrency

        async def worker() -> None:
            for i in range(per_worker):
                t0 = clock()
                h = await engine.start(three_steps, i)
                assert await h.result() == i + 3
                latencies.append(clock() - t0)

        commits0 = store.stats.commits
        t0 = clock()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = clock() - t0
        done = per_worker * concurrency
        return Sample(
            done / wall,
            percentile(latencies, 0.5) * 1e3,
            percentile(latencies, 0.99) * 1e3,
            (store.stats.commits - commits0) / done,
        )
    finally:
        await engine.close()
        await store.close()


def dbos_batch(directory: Path, n: int, concurrency: int) -> dict[str, float]:
    """DBOS in a subprocess (see ``bench/_dbos_peer.py``)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench._dbos_peer", str(directory), str(n), str(concurrency)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if out.returncode != 0:
        raise RuntimeError(f"DBOS peer failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def raw_commits(directory: Path, n: int) -> float:
    """Durable SQLite transactions per second on this disk: WAL, synchronous=FULL, 1 INSERT."""
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")

    def commits(count: int) -> None:
        for _ in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (b"x" * 64,))
            conn.execute("COMMIT")

    commits(n // 4)  # warm up: grow the WAL file first, as a running store has
    t0 = time.perf_counter()
    commits(n)
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


async def run(quick: bool) -> list[Row]:
    """Raw commit rate, then per concurrency garrison and DBOS, alternating, in rounds."""
    plan = QUICK if quick else FULL
    try:
        dbos_version = version("dbos")
    except PackageNotFoundError:
        dbos_version = None
    g: dict[int, list[Sample]] = {c: [] for c in plan.n}
    d: dict[int, list[dict[str, float]]] = {c: [] for c in plan.n}
    commits: list[float] = []
    steps = plan.rounds * (1 + len(plan.n) * (2 if dbos_version else 1))
    with progress("durable", steps) as advance:
        for r in range(plan.rounds):
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                commits.append(await asyncio.to_thread(raw_commits, Path(tmp), plan.commits))
            advance(f"raw commits: {commits[-1]:,.0f}/s")
            for c in plan.n:
                with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                    s = await garrison_batch(Path(tmp), plan.n[c], c)
                g[c].append(s)
                advance(f"round {r + 1} c={c} garrison: {s.wf_per_s:,.0f} wf/s")
                if dbos_version:
                    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                        ds = await asyncio.to_thread(dbos_batch, Path(tmp), plan.dbos_n[c], c)
                    d[c].append(ds)
                    advance(f"round {r + 1} c={c} DBOS: {ds['wf_per_s']:,.0f} wf/s")
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
    for c in plan.n:
        peers = {"DBOS": median([x["wf_per_s"] for x in d[c]])} if d[c] else {}
        lat = {"DBOS": median([x["p50_ms"] for x in d[c]])} if d[c] else {}
        cpw = median([s.commits_per_wf for s in g[c]])
        rows.append(
            Row(
                f"3-step workflows/s c={c}",
                "wf/s",
                median([s.wf_per_s for s in g[c]]),
                peers=peers,
                limit=raw / COMMITS_PER_WORKFLOW if c == 1 else None,
                notes=f"garrison {cpw:.2f} commits per workflow"
                + (" (limit = raw commits/s ÷ 4)" if c == 1 else " (group commit)"),
            )
        )
        rows.append(
            Row(
                f"p50 latency c={c}",
                "ms",
                median([s.p50_ms for s in g[c]]),
                peers=lat,
                better="lower",
                notes=f"garrison p99 {median([s.p99_ms for s in g[c]]):.1f} ms",
            )
        )
    if d[1]:
        sample = d[1][0]
        note(
            "dbos",
            f"DBOS {dbos_version}, SQLite journal_mode={sample['journal_mode']}, "
            f"synchronous={sample['synchronous']} (2 = FULL), sync workflows, threads at c>1",
        )
    else:
        note("dbos", "not installed (pip install dbos): peer column empty")
    note("garrison", "SQLite WAL, synchronous=FULL, one writer thread with group commit")
    _picture(g, d)
    return rows


def _picture(g: dict[int, list[Sample]], d: dict[int, list[dict[str, float]]]) -> None:
    """The latency/throughput curve: one point per concurrency, p50 and p99, both sides."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._harness import RESULTS_DIR

    fig, ax = plt.subplots(figsize=(8, 5))
    sides: list[tuple[str, list[tuple[int, float, float, float]]]] = [
        (
            "garrison",
            [
                (
                    c,
                    median([s.wf_per_s for s in v]),
                    median([s.p50_ms for s in v]),
                    median([s.p99_ms for s in v]),
                )
                for c, v in g.items()
                if v
            ],
        ),
        (
            "DBOS",
            [
                (
                    c,
                    median([x["wf_per_s"] for x in v]),
                    median([x["p50_ms"] for x in v]),
                    median([x["p99_ms"] for x in v]),
                )
                for c, v in d.items()
                if v
            ],
        ),
    ]
    for (name, points), color in zip(sides, ("tab:blue", "tab:orange"), strict=True):
        if not points:
            continue
        xs = [p[1] for p in points]
        ax.plot(xs, [p[2] for p in points], "o-", color=color, label=f"{name} p50")
        ax.plot(xs, [p[3] for p in points], "s--", color=color, alpha=0.6, label=f"{name} p99")
        for c, x, p50, _ in points:
            ax.annotate(f"c={c}", (x, p50), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("3-step workflows per second (log)")
    ax.set_ylabel("latency start -> result, ms (log)")
    ax.set_title("Durable 3-step workflows on SQLite (WAL, synchronous=FULL)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    RESULTS_DIR.mkdir(exist_ok=True)
    fig.savefig(RESULTS_DIR / "durable_workflows.png", dpi=90)
    plt.close(fig)
