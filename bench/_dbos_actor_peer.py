"""The DBOS side of ``durable_actors``, in its own process: one DBOS workflow per message whose
single step applies the state change (an UPSERT of a counter row, committed with fsync in an
application SQLite file). DBOS 3 has no application-database transactions any more, so the
checkpoint of the step and the state change are two commits: the closest DBOS shape to a
durable actor message.

Usage: ``python -m bench._dbos_actor_peer DIR N KEYS CONCURRENCY`` prints one JSON line:
``{"msgs_per_s": ..., "p50_ms": ..., "version": ...}``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version


def main(directory: str, n: int, keys: int, concurrency: int) -> None:
    path = os.path.join(directory, "dbos.sqlite")
    app = os.path.join(directory, "app.sqlite")
    for p in (path, app):
        conn = sqlite3.connect(p)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    conn = sqlite3.connect(app)
    conn.execute("CREATE TABLE counters (key TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    conn.commit()
    conn.close()
    local = threading.local()

    def app_conn() -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(local, "conn", None)
        if c is None:
            c = local.conn = sqlite3.connect(app, isolation_level=None, timeout=60)
            c.execute("PRAGMA synchronous=FULL")
        return c

    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": "bench-actors",
        "system_database_url": f"sqlite:///{path}",
        "log_level": "WARNING",
    }
    DBOS(config=config)

    @DBOS.step()
    def apply(key: str) -> int:
        c = app_conn()
        c.execute("BEGIN IMMEDIATE")
        row = c.execute(
            "INSERT INTO counters (key, n) VALUES (?, 1) "
            "ON CONFLICT (key) DO UPDATE SET n = n + 1 RETURNING n",
            (key,),
        ).fetchone()
        c.execute("COMMIT")
        return int(row[0])

    @DBOS.workflow()
    def message(key: str) -> int:
        return apply(key)

    DBOS.launch()
    latencies: list[float] = []

    def send(i: int) -> None:
        t0 = time.perf_counter()
        message(f"k{i % keys}")
        latencies.append(time.perf_counter() - t0)

    for _ in range(10):  # warm up
        message("warm")
    latencies.clear()
    t0 = time.perf_counter()
    if concurrency == 1:
        for i in range(n):
            send(i)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(send, range(n)))
    wall = time.perf_counter() - t0
    DBOS.destroy()
    total = (
        sqlite3.connect(app)
        .execute("SELECT sum(n) FROM counters WHERE key != 'warm'")
        .fetchone()[0]
    )
    assert total == n, (total, n)
    latencies.sort()
    print(
        json.dumps(
            {
                "msgs_per_s": n / wall,
                "p50_ms": latencies[len(latencies) // 2] * 1e3,
                "version": version("dbos"),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
