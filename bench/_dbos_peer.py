"""The DBOS side of ``durable_workflows``, run in its own process (its threads and its event
loop stay out of garrison's measurements).

Usage: ``python -m bench._dbos_peer DIR N CONCURRENCY`` prints one JSON line:
``{"wf_per_s": ..., "p50_ms": ..., "p99_ms": ..., "synchronous": ..., "journal_mode": ...,
"version": ...}``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version


def main(directory: str, n: int, concurrency: int) -> None:
    path = os.path.join(directory, "dbos.sqlite")
    conn = sqlite3.connect(path)  # WAL is a property of the file: set it before DBOS opens it
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()

    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": "bench-durable",
        "system_database_url": f"sqlite:///{path}",
        "log_level": "WARNING",
        "notification_listener_polling_interval_sec": 0.01,
    }
    DBOS(config=config)

    @DBOS.step()
    def one(x: int) -> int:
        return x + 1

    @DBOS.step()
    def two(x: int) -> int:
        return x + 1

    @DBOS.step()
    def three(x: int) -> int:
        return x + 1

    @DBOS.workflow()
    def wf(x: int) -> int:
        return three(two(one(x)))

    DBOS.launch()
    # DBOS's connections use sqlite3's defaults (it sets no synchronous): read them the same way
    probe = sqlite3.connect(path)
    sync = probe.execute("PRAGMA synchronous").fetchone()[0]
    mode = probe.execute("PRAGMA journal_mode").fetchone()[0]
    probe.close()
    latencies: list[float] = []

    def call(i: int) -> None:
        t0 = time.perf_counter()
        assert wf(i) == i + 3
        latencies.append(time.perf_counter() - t0)

    for i in range(min(20, n)):  # warm up
        call(-i - 1)
    latencies.clear()
    t0 = time.perf_counter()
    if concurrency == 1:
        for i in range(n):
            call(i)
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(call, range(n)))
    wall = time.perf_counter() - t0
    DBOS.destroy()
    latencies.sort()
    print(
        json.dumps(
            {
                "wf_per_s": n / wall,
                "p50_ms": latencies[len(latencies) // 2] * 1e3,
                "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
                "synchronous": sync,
                "journal_mode": mode,
                "version": version("dbos"),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
