"""The group-commit writer shared by the SQLite durable store and the SQLite log."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from garrison.core import GroupCommitWriter, WriterStats


def connector(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (v INTEGER PRIMARY KEY)")
    return conn


def rows(path: Path) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        return [v for (v,) in conn.execute("SELECT v FROM t ORDER BY v")]
    finally:
        conn.close()


async def test_queued_operations_share_a_commit_and_a_failure_stays_alone(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    writer = GroupCommitWriter(lambda: connector(db), what="the test database")
    writer.start()
    try:

        def insert(v: int) -> object:
            def op(conn: sqlite3.Connection) -> int:
                conn.execute("INSERT INTO t (v) VALUES (?)", (v,))
                if v == 13:
                    raise ValueError("thirteen")  # after its write: the savepoint undoes it
                return v

            return op

        results = await asyncio.gather(
            *(writer.submit(insert(v)) for v in range(50)),  # type: ignore[arg-type]
            return_exceptions=True,
        )
    finally:
        await asyncio.to_thread(writer.stop)
    errors = [r for r in results if isinstance(r, Exception)]
    assert [e.args for e in errors] == [("thirteen",)]
    assert [r for r in results if not isinstance(r, Exception)] == [v for v in range(50) if v != 13]
    assert rows(db) == [v for v in range(50) if v != 13]
    assert isinstance(writer.stats, WriterStats)
    assert writer.stats.writes == 50
    assert 1 <= writer.stats.commits < 50  # queued while a commit ran: they shared commits


async def test_a_lone_failing_operation_rolls_back_and_counts_no_commit(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    writer = GroupCommitWriter(lambda: connector(db))
    writer.start()
    try:

        def bad(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t (v) VALUES (1)")
            raise RuntimeError("no")

        with pytest.raises(RuntimeError, match="no"):
            await writer.submit(bad)
        assert (
            await writer.submit(lambda c: c.execute("INSERT INTO t (v) VALUES (2)").rowcount) == 1
        )
    finally:
        await asyncio.to_thread(writer.stop)
    assert rows(db) == [2]
    assert writer.stats.commits == 1
    assert writer.stats.writes == 2


async def test_submit_before_start_names_the_database(tmp_path: Path) -> None:
    writer = GroupCommitWriter(lambda: connector(tmp_path / "w.db"), what="the SQLite log")
    with pytest.raises(RuntimeError, match="the SQLite log is not open"):
        writer.submit(lambda c: None)
