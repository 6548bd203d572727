"""Crash tests: a real worker process is SIGKILLed at random points, restarted, and in the end
every workflow has completed exactly once with the right result; side effects ran at least once
and dedupe by idempotency key; no step ran again after its result was committed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from garrison.core import msgpack_decode
from garrison.durable._journal import ActivityCompleted, decode_batch

WORKER = Path(__file__).with_name("_crash_worker.py")
ROUNDS = int(os.environ.get("GARRISON_CRASH_ROUNDS", "60"))  # kill points
WORKFLOWS = int(os.environ.get("GARRISON_CRASH_WORKFLOWS", "1000"))


def spawn(db: Path, effects: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GARRISON_CRASH_EFFECTS": str(effects)}
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(db), str(WORKFLOWS)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def executions_so_far(effects: Path) -> int:
    """How many activity executions the worker has recorded (0 before its table exists)."""
    try:
        conn = sqlite3.connect(effects, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM effects").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_at_random_points_loses_nothing_and_repeats_no_committed_step(
    tmp_path: Path,
) -> None:
    db, effects = tmp_path / "wf.db", tmp_path / "effects.db"
    rng = random.Random(int(os.environ.get("GARRISON_CRASH_SEED", "0")) or None)
    kills = 0
    log = tmp_path / "worker.log"
    target = 0
    for _ in range(ROUNDS):
        proc = spawn(db, effects, log)
        # Kill points are chosen by progress (activity executions recorded so far), not by
        # wall time, so the test crashes the worker mid-run on a fast machine and a slow one.
        target += rng.randint(20, 100)
        deadline = time.monotonic() + 120
        while proc.poll() is None and executions_so_far(effects) < target:
            if time.monotonic() > deadline:
                break
            time.sleep(rng.uniform(0.0, 0.02))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    log.write_bytes(b"")
    proc = spawn(db, effects, log)
    proc.wait(timeout=240)
    out = log.read_bytes()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"ALL DONE" in out
    assert kills >= ROUNDS * 3 // 4, "the worker finished before most kill points"

    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT id, status, result FROM wf_instances").fetchall()
    assert len(rows) == WORKFLOWS  # each started once, however often start was repeated
    for wid, status, result in rows:
        i = int(wid.split("-")[1])
        assert status == "completed", wid
        assert msgpack_decode(result) == 6 * (i + 1), wid  # (i+1) + 2(i+1) + 3(i+1)
    committed: dict[tuple[str, int], float] = {}
    for wid, data in conn.execute("SELECT workflow_id, data FROM wf_history"):
        batch = decode_batch(data)
        for item in batch.inputs:
            if isinstance(item, ActivityCompleted):
                assert (wid, item.step) not in committed, "a step completed twice"
                committed[wid, item.step] = batch.at
    conn.close()

    e = sqlite3.connect(effects)
    executions = e.execute("SELECT key, workflow_id, step, started_at FROM effects").fetchall()
    e.close()
    per_key = Counter(k for k, _, _, _ in executions)
    # at least once: every activity of every workflow ran; its key dedupes the repeats
    assert len(per_key) == WORKFLOWS * 4
    assert set(per_key) == {f"wf-{i}:{s}" for i in range(WORKFLOWS) for s in (1, 3, 4, 5)}
    duplicates = sum(per_key.values()) - len(per_key)
    assert duplicates <= kills * WORKFLOWS * 2  # only what was in flight at a kill repeats
    # never after its commit: each execution started before the transition that recorded it
    for key, wid, step, started_at in executions:
        assert started_at < committed[wid, step], f"{key} ran again after its commit"
