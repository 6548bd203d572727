"""The DBOS side of ``durable_postgres``: one DBOS process on a PostgreSQL system database, run
as a subprocess so that two of them can share one database like two garrison workers do.

Usage: ``python -m bench._dbos_pg_peer URL SCHEMA EXECUTOR N CONCURRENCY``. It launches DBOS
(system tables in ``SCHEMA``), warms up, prints ``READY``, waits for a line on stdin (so that
several processes start measuring together), runs ``N`` 3-step workflows from ``CONCURRENCY``
threads and prints one JSON line: ``{"n", "t0", "t1", "cpu_s", "p50_ms", "p99_ms", "version"}``.
(``bench/_dbos_peer.py`` is the SQLite variant used by ``durable_workflows``.)
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version


def main(url: str, schema: str, executor: str, n: int, concurrency: int) -> None:
    from dbos import DBOS, DBOSConfig

    config: DBOSConfig = {
        "name": "bench-durable-pg",
        "system_database_url": url,
        "dbos_system_schema": schema,
        "executor_id": executor,
        "sys_db_pool_size": max(20, concurrency + 4),
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
    latencies: list[float] = []

    def call(i: int) -> None:
        t0 = time.perf_counter()
        assert wf(i) == i + 3
        latencies.append(time.perf_counter() - t0)

    for i in range(20):  # warm up
        call(-i - 1)
    latencies.clear()
    print("READY", flush=True)
    sys.stdin.readline()
    t0, cpu0 = time.time(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, range(n)))
    t1, cpu = time.time(), time.process_time() - cpu0
    DBOS.destroy()
    latencies.sort()
    print(
        json.dumps(
            {
                "n": n,
                "t0": t0,
                "t1": t1,
                "cpu_s": cpu,
                "p50_ms": latencies[len(latencies) // 2] * 1e3,
                "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1e3,
                "version": version("dbos"),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
