"""Actor crash test: a real worker process handling thousands of messages to many counters (and
relays forwarding through their outbox) is SIGKILLed at random points and restarted; in the end
every message changed its actor's state exactly once — none lost, none applied twice — and
every outbox message was delivered exactly once into its target's state.

``GARRISON_ACTOR_CRASH_ROUNDS`` (kill points), ``GARRISON_ACTOR_CRASH_MESSAGES``,
``GARRISON_ACTOR_CRASH_KEYS`` and ``GARRISON_CRASH_SEED`` scale and vary it.
"""

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

import msgspec
import pytest

from ._actor_crash_worker import plan

WORKER = Path(__file__).with_name("_actor_crash_worker.py")
ROUNDS = int(os.environ.get("GARRISON_ACTOR_CRASH_ROUNDS", "50"))
MESSAGES = int(os.environ.get("GARRISON_ACTOR_CRASH_MESSAGES", "3000"))
KEYS = int(os.environ.get("GARRISON_ACTOR_CRASH_KEYS", "40"))


def spawn(db: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, str(WORKER), str(db), str(MESSAGES), str(KEYS)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def handled_so_far(db: Path) -> int:
    """Messages consumed by committed turns (0 before the tables exist)."""
    try:
        conn = sqlite3.connect(db, timeout=5)
        try:
            return int(
                conn.execute("SELECT coalesce(sum(done_seq), 0) FROM actor_rows").fetchone()[0]
            )
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_at_random_points_applies_every_message_exactly_once(tmp_path: Path) -> None:
    db, log = tmp_path / "actors.db", tmp_path / "worker.log"
    rng = random.Random(int(os.environ.get("GARRISON_CRASH_SEED", "0")) or None)
    work = plan(MESSAGES, KEYS)
    total = len(work) + sum(1 for m in work if m[0] == "relay")  # + the relays' outbox
    kills = 0
    target = 0
    for _ in range(ROUNDS):
        proc = spawn(db, log)
        # kill points by progress (messages handled), so they land mid-run on any machine;
        # some rounds die early, while the worker is still posting or recovering
        target += rng.randint(0, 2 * total // (ROUNDS + 10))
        deadline = time.monotonic() + 60
        while proc.poll() is None and handled_so_far(db) < target:
            if time.monotonic() > deadline:
                break
            time.sleep(rng.uniform(0.0, 0.01))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    log.write_bytes(b"")
    proc = spawn(db, log)
    proc.wait(timeout=240)
    out = log.read_bytes()
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"ALL DONE" in out
    assert kills >= ROUNDS * 3 // 4, "the worker finished before most kill points"

    want: dict[str, Counter[str]] = {}
    for method, key, i, to in work:
        want.setdefault(key, Counter())[f"m{i}"] += 1
        if method == "relay":
            # the relay's outbox message: its id derives from the message that sent it
            want.setdefault(to, Counter())[f"m{i}>0"] += 1
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT key, state, next_seq, done_seq FROM actor_rows").fetchall()
    pending = conn.execute("SELECT count(*) FROM actor_inbox").fetchone()[0]
    conn.close()
    assert pending == 0
    got: dict[str, Counter[str]] = {}
    for key, state, next_seq, done_seq in rows:
        assert next_seq == done_seq, key
        applied = msgspec.msgpack.decode(state)
        got[key] = Counter(applied["ids"])
        assert applied["n"] == len(applied["ids"]), key
    assert set(got) == set(want)
    for key in want:
        twice = [m for m, c in got[key].items() if c > 1]
        assert not twice, f"{key}: applied twice: {twice[:5]}"
        assert got[key] == want[key], f"{key}: lost {sorted(set(want[key]) - set(got[key]))[:5]}"
    assert sum(sum(c.values()) for c in got.values()) == total
