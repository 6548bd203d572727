"""Durable workflows at scale: what 100,000 sleeping workflows cost, and what a replay costs.

*Sleepers.* A workflow waiting on a long durable timer is unloaded in the same write that
records the timer: its coroutine is dropped and only its rows remain. So N sleeping workflows
should cost the store (bytes on disk), not RAM. Measured in a fresh child process per side: the
resident memory added by starting N workflows that each ``await ctx.sleep(days=1)``, against
the same N as plain asyncio tasks each awaiting ``asyncio.sleep(86400)`` (the non-durable way,
which keeps every coroutine in memory), and the SQLite file size per sleeping workflow.

*Replay.* After a crash (or an unload) a workflow is rebuilt by replaying its journal: each
recorded step is fed back to a fresh coroutine. The cost must grow linearly with the history
(never quadratically): replay of histories of 100 to 10,000 activity steps, in µs per step, and
the ratio of the longest's per-step cost to the shortest's (1.0 = perfectly linear).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from garrison.durable import Engine, MemoryStore, WorkflowContext, replay_check
from garrison.durable._stores.sqlite import SqliteStore

from ._harness import Row, median, note, progress

PILLAR = "durable"


@dataclass(frozen=True)
class Plan:
    """How much to run."""

    sleepers: int
    replay_lengths: tuple[int, ...]
    replay_reps: int
    rounds: int


FULL = Plan(sleepers=100_000, replay_lengths=(100, 1_000, 5_000, 10_000), replay_reps=5, rounds=2)
QUICK = Plan(sleepers=5_000, replay_lengths=(100, 1_000, 2_000), replay_reps=3, rounds=1)


# -- workflows ---------------------------------------------------------------------------------


async def sleeper(ctx: WorkflowContext, i: int) -> int:
    await ctx.sleep(timedelta(days=1))
    return i


async def step(x: int) -> int:
    return x + 1


async def long_history(ctx: WorkflowContext, k: int) -> int:
    x = 0
    for _ in range(k):
        x = await ctx.activity(step, x)
    return x


# -- sleepers (in a child process each, for a clean resident-memory baseline) -------------------


def _rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _garrison_sleepers(n: int, directory: Path) -> dict[str, float]:
    store = SqliteStore(directory / "sleepers.db")
    await store.open()
    engine = Engine(store, workflows=[sleeper])
    await engine.open()
    try:
        for i in range(50):  # warm up: imports, caches and the writer are there before measuring
            await engine.start(sleeper, -i, id=f"warm-{i}")
        base = _rss()
        t0 = time.perf_counter()
        window = 256  # starts in flight (each is acknowledged after its commit)
        pending: set[asyncio.Task[Any]] = set()
        for i in range(n):
            pending.add(asyncio.create_task(engine.start(sleeper, i, id=f"s-{i}")))
            if len(pending) >= window:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*pending)
        wall = time.perf_counter() - t0
        hot = len(engine.runner.live)  # workflows still held in memory
        added = _rss() - base
        running = await engine.list(status="running", limit=n + 100)
    finally:
        await engine.close()
        await store.close()
    files = [p for p in directory.iterdir() if p.name.startswith("sleepers.db")]  # noqa: ASYNC240
    size = sum(p.stat().st_size for p in files)  # after close: nothing else runs on the loop
    return {
        "rss_added": added,
        "starts_per_s": n / wall,
        "db_bytes": size,
        "running": len(running),
        "hot": hot,
    }


async def _asyncio_sleepers(n: int) -> dict[str, float]:
    async def plain(i: int) -> int:
        await asyncio.sleep(86_400)
        return i

    warm = [asyncio.create_task(plain(-i)) for i in range(50)]
    await asyncio.sleep(0)
    base = _rss()
    tasks = [asyncio.create_task(plain(i)) for i in range(n)]
    await asyncio.sleep(0)  # every task has started and is suspended in its sleep
    added = _rss() - base
    for t in tasks + warm:
        t.cancel()
    await asyncio.gather(*tasks, *warm, return_exceptions=True)
    return {"rss_added": added}


def _child(side: str, n: int) -> dict[str, float]:
    """Run one side in a fresh interpreter and return what it measured."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.durable_scale", side, str(n)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"{side} child failed:\n{out.stderr[-3000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- replay ------------------------------------------------------------------------------------


async def _history_of(k: int) -> Any:
    store = MemoryStore()
    await store.open()
    async with Engine(store, workflows=[long_history]) as engine:
        h = await engine.start(long_history, k, id=f"h-{k}")
        assert await h.result() == k
        return await engine.history(h.id)


def _replay_us_per_step(history: Any, k: int, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        report = replay_check(long_history, history)
        times.append(time.perf_counter() - t0)
        assert report.ok
        assert report.steps == k, report
    return median(times) / k * 1e6


# -- the benchmark -----------------------------------------------------------------------------


async def run(quick: bool) -> list[Row]:
    plan = QUICK if quick else FULL
    g: list[dict[str, float]] = []
    a: list[dict[str, float]] = []
    replay: dict[int, list[float]] = {k: [] for k in plan.replay_lengths}
    histories = {k: await _history_of(k) for k in plan.replay_lengths}
    steps = plan.rounds * (2 + len(plan.replay_lengths))
    with progress("durable scale", steps) as advance:
        for r in range(plan.rounds):
            g.append(await asyncio.to_thread(_child, "garrison", plan.sleepers))
            advance(f"round {r + 1}: {plan.sleepers:,} garrison sleepers")
            a.append(await asyncio.to_thread(_child, "asyncio", plan.sleepers))
            advance(f"round {r + 1}: {plan.sleepers:,} asyncio tasks")
            for k, history in histories.items():
                replay[k].append(_replay_us_per_step(history, k, plan.replay_reps))
                advance(f"round {r + 1}: replay of {k:,} steps")
    n = plan.sleepers
    assert all(x["running"] == n + 50 for x in g), g  # every sleeper is there, none finished
    assert all(x["hot"] == 0 for x in g), g  # and none of them is held in memory
    g_bytes = median([x["rss_added"] for x in g]) / n
    a_bytes = median([x["rss_added"] for x in a]) / n
    rows = [
        Row(
            f"resident memory per sleeping workflow ({n:,} asleep)",
            "bytes",
            g_bytes,
            peers={"asyncio task": a_bytes},
            better="lower",
            notes="garrison: unloaded, only rows remain; the peer keeps each coroutine in RAM "
            f"(garrison adds {median([x['rss_added'] for x in g]) / 2**20:,.1f} MiB in all)",
        ),
        Row(
            "SQLite bytes per sleeping workflow",
            "bytes",
            median([x["db_bytes"] for x in g]) / (n + 50),
            better=None,
            notes="instance row, its history batch and the timer, WAL included",
        ),
        Row(
            "durable starts/s of sleeping workflows (256 in flight)",
            "wf/s",
            median([x["starts_per_s"] for x in g]),
            better=None,
            notes="each start commits the instance with its first transition (the timer)",
        ),
    ]
    per_step = {k: median(v) for k, v in replay.items()}
    shortest, longest = min(per_step), max(per_step)
    for k, us in per_step.items():
        rows.append(
            Row(
                f"replay cost per step, history of {k:,} steps",
                "µs/step",
                us,
                better="lower",
                notes="replay_check of a recorded run: no I/O, journal fed to a fresh coroutine",
            )
        )
    rows.append(
        Row(
            f"replay linearity: per-step cost at {longest:,} / at {shortest:,} steps",
            "ratio",
            per_step[longest] / per_step[shortest],
            better=None,
            limit=1.0,
            notes="1.0 = linear in the history length; quadratic would grow with the length",
        )
    )
    note("sleepers", f"{n:,} workflows sleeping 1 day each, SQLite WAL synchronous=FULL")
    return rows


def _main(argv: list[str]) -> None:
    side, n = argv[0], int(argv[1])
    if side == "garrison":
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            result = asyncio.run(_garrison_sleepers(n, Path(tmp)))
    elif side == "asyncio":
        result = asyncio.run(_asyncio_sleepers(n))
    else:
        raise SystemExit(f"unknown side {side!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
