"""SQLite-specific behaviour of the log: group commit, isolation of a failing operation inside a
shared transaction, schema versioning, two instances on one file."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from garrison.core import ConfigError
from garrison.streams import Fenced, Record, TopicPartition, TopicSpec, open_log
from garrison.streams._backends.sqlite import SCHEMA_VERSION, SqliteLog


async def test_group_commit_shares_transactions_and_isolates_failures(tmp_path: Path) -> None:
    log = open_log(f"sqlite:///{tmp_path}/g.db")
    assert isinstance(log, SqliteLog)
    await log.open()
    try:
        await log.create_topic(TopicSpec(name="t", partitions=4))
        a = await log.join("g", "m", ["t"], lease=10)
        before = log.writer_stats
        appends = [log.append("t", i % 4, [Record(value=b"x")] * 10) for i in range(200)]
        stale = log.commit("g", "m", a.generation + 7, {TopicPartition("t", 0): 1})
        results = await asyncio.gather(*appends, stale, return_exceptions=True)
        assert isinstance(results[-1], Fenced)
        assert not any(isinstance(r, BaseException) for r in results[:-1])
        commits, ops = (x - y for x, y in zip(log.writer_stats, before, strict=True))
        assert ops == 201
        assert commits < ops  # many callers' operations per transaction
        assert sum(po.end for po in await log.offsets("t")) == 2000
        assert await log.committed("g") == {}
    finally:
        await log.close()


async def test_two_instances_share_one_file_with_dense_offsets(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    a, b = open_log(url), open_log(url)
    await a.open()
    await b.open()
    try:
        await a.create_topic(TopicSpec(name="t"))
        results = await asyncio.gather(
            *(x.append("t", 0, [Record(value=b"v")] * 5) for x in [a, b] * 20)
        )
        offsets = sorted(o for r in results for o in r)
        assert offsets == list(range(200))
    finally:
        await a.close()
        await b.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    log = open_log(f"sqlite:///{db}")
    await log.open()
    await log.close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE log_meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="newer than this garrison"):
        await open_log(f"sqlite:///{db}").open()


async def test_reopen_keeps_everything(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/re.db"
    log = open_log(url)
    await log.open()
    await log.create_topic(TopicSpec(name="t", partitions=2, retention_bytes=10_000))
    await log.append("t", 1, [Record(value=b"a", key=b"k", headers={"h": "v"}, timestamp=5)])
    a = await log.join("g", "m", ["t"], lease=10)
    await log.commit("g", "m", a.generation, {TopicPartition("t", 1): 1})
    await log.close()
    log = open_log(url)
    await log.open()
    try:
        info = await log.describe_topic("t")
        assert info.spec.retention_bytes == 10_000
        (r,) = await log.read("t", 1, 0)
        assert (r.key, r.value, r.headers, r.timestamp) == (b"k", b"a", {"h": "v"}, 5)
        assert await log.committed("g") == {TopicPartition("t", 1): 1}
    finally:
        await log.close()
