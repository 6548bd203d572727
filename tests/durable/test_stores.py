"""The store contract on every store, and what only SQLite has: group commit, WAL, migrations."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from garrison.core import ConfigError
from garrison.durable import LeaseLost, MemoryStore, Status, Store, WorkflowNotFound
from garrison.durable._errors import FailureInfo
from garrison.durable._stores import open_store
from garrison.durable._stores.base import ListFilter, NewChild, NewInstance, Transition
from garrison.durable._stores.sqlite import SqliteStore
from garrison.durable._stores.sqlite_schema import MIGRATIONS


def new(wid: str, owner: str | None = None, now: float = 100.0, wf: str = "wf") -> NewInstance:
    return NewInstance(
        id=wid, workflow=wf, run_id="r" + wid, args=b"\x90", now=now, owner=owner,
        lease_until=None if owner is None else now + 30,
    )  # fmt: skip


async def test_create_is_idempotent(store: Store) -> None:
    assert (await store.create(new("a"))).created
    again = await store.create(new("a"))
    assert not again.created
    assert again.existing is not None
    assert again.existing.id == "a"


async def test_commit_appends_history_and_checks_the_epoch(store: Store) -> None:
    await store.create(new("a", owner="w1"))
    t = Transition(workflow_id="a", epoch=1, now=101.0, batches=[b"b0", b"b1"], steps=2)
    await store.commit(t)
    loaded = await store.load("a")
    assert loaded is not None
    assert loaded.batches == [b"b0", b"b1"]
    with pytest.raises(LeaseLost, match="out of date"):  # a replayed, stale view of history
        await store.commit(Transition(workflow_id="a", epoch=1, now=102.0, first_seq=1))
    with pytest.raises(LeaseLost, match="stale"):
        await store.commit(Transition(workflow_id="a", epoch=7, now=102.0, first_seq=2))
    with pytest.raises(WorkflowNotFound):
        await store.commit(Transition(workflow_id="zz", epoch=1, now=102.0))


async def test_claim_takes_ready_unowned_or_expired_and_bumps_the_epoch(store: Store) -> None:
    await store.create(new("free"))
    await store.create(new("held", owner="w1"))
    await store.create(new("other-type", wf="other"))
    claims = await store.claim("w2", ["wf"], 101.0, 131.0, 10)
    assert [(c.id, c.epoch) for c in claims] == [("free", 1)]
    assert await store.claim("w3", ["wf"], 101.0, 131.0, 10) == []
    # w1's lease (until 130) expires: w3 takes "held", and w1's writes are fenced out
    later = await store.claim("w3", ["wf"], 140.0, 170.0, 10)
    assert sorted((c.id, c.epoch) for c in later) == [("free", 2), ("held", 2)]
    with pytest.raises(LeaseLost):
        await store.commit(Transition(workflow_id="held", epoch=1, now=141.0))
    assert await store.renew("w3", 200.0) == 2
    assert await store.release("w3", 150.0, ["held"]) == 1
    info = await store.get("held")
    assert info is not None
    assert (info.owner, info.ready_at) == (None, 150.0)


async def test_release_with_a_wake_time_unless_the_inbox_moved(store: Store) -> None:
    await store.create(new("a", owner="w1"))
    t = Transition(workflow_id="a", epoch=1, now=101.0, release=True, wake_at=500.0)
    await store.commit(t)
    info = await store.get("a")
    assert info is not None
    assert (info.owner, info.ready_at) == (None, 500.0)
    assert await store.next_wake(["wf"], 101.0) == 500.0
    # an event posted while the owner was about to unload makes it ready now
    (c,) = await store.claim("w1", ["wf"], 600.0, 630.0, 1)
    item = await store.post("a", "event", "go", b"\x01", 601.0)
    assert item is not None
    t = Transition(
        workflow_id="a", epoch=c.epoch, now=602.0, release=True, wake_at=900.0, seen_inbox=0
    )
    await store.commit(t)
    info = await store.get("a")
    assert info is not None
    assert info.ready_at == 602.0


async def test_children_waiters_and_outcomes_reach_the_parent_inbox(store: Store) -> None:
    await store.create(new("p", owner="w1"))
    kid = NewChild(instance=new("k", owner="w1"), step=3)
    res = await store.commit(Transition(workflow_id="p", epoch=1, now=101.0, children=[kid]))
    assert res.created == ["k"]
    res = await store.commit(
        Transition(workflow_id="k", epoch=1, now=102.0, status=Status.COMPLETED, result=b"\x05")
    )
    (posted,) = res.posted
    assert (posted.workflow_id, posted.kind, posted.step) == ("p", "child", 3)
    loaded = await store.load("p")
    assert loaded is not None
    assert [i.seq for i in loaded.inbox] == [posted.seq]
    assert loaded.inbox_version == 1
    # a child id that has already ended answers in the same commit
    kid2 = NewChild(instance=new("k"), step=4)
    res = await store.commit(
        Transition(workflow_id="p", epoch=1, now=103.0, children=[kid2], consumed=[posted.seq])
    )
    assert res.created == []
    assert [(i.kind, i.step) for i in res.posted] == [("child", 4)]


async def test_terminate_notifies_and_bumps_epoch(store: Store) -> None:
    await store.create(new("a", owner="w1"))
    f = FailureInfo("T", "stop")
    assert await store.terminate("a", f, 110.0) is not None
    assert await store.terminate("a", f, 111.0) is None
    info = await store.get("a")
    assert info is not None
    assert (info.status, info.epoch, info.failure) == (Status.TERMINATED, 2, f)
    assert await store.post("a", "event", "x", b"", 112.0) is None


async def test_query_filters(store: Store) -> None:
    for i in range(5):
        await store.create(new(f"i{i}", now=100.0 + i))
    got = await store.query(ListFilter(created_after=102.0, limit=2))
    assert [i.id for i in got] == ["i4", "i3"]
    assert [i.id for i in await store.query(ListFilter(offset=4))] == ["i0"]
    assert await store.query(ListFilter(status=Status.COMPLETED)) == []


# -- SQLite only ---------------------------------------------------------------------------------


async def test_group_commit_shares_transactions_between_many_writers(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db")
    await s.open()
    try:
        await asyncio.gather(*(s.create(new(f"w{i}")) for i in range(500)))
        assert s.stats.writes == 500
        assert s.stats.commits < 100  # one fsync carried many workflows' writes
        infos = await s.query(ListFilter(limit=1000))
        assert len(infos) == 500
    finally:
        await s.close()


async def test_a_failing_operation_rolls_back_alone(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "g.db")
    await s.open()
    try:
        await s.create(new("a", owner="w1"))
        bad = Transition(workflow_id="a", epoch=9, now=1.0, batches=[b"x"])
        good = Transition(workflow_id="a", epoch=1, now=1.0, batches=[b"y"])
        results = await asyncio.gather(s.commit(bad), s.commit(good), return_exceptions=True)
        assert isinstance(results[0], LeaseLost)
        loaded = await s.load("a")
        assert loaded is not None
        assert loaded.batches == [b"y"]
    finally:
        await s.close()


async def test_sqlite_is_wal_full_sync_migrated_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    s = open_store(f"sqlite:///{path}")
    assert isinstance(s, SqliteStore)
    await s.open()
    await s.create(new("keep"))
    await s.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT version FROM garrison_schema").fetchone()[0] == len(MIGRATIONS)
    conn.close()
    s2 = SqliteStore(path)
    assert s2.synchronous == "FULL"
    await s2.open()  # migrations are idempotent
    assert await s2.get("keep") is not None
    await s2.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE garrison_schema (component TEXT PRIMARY KEY, version INTEGER)")
    conn.execute("INSERT INTO garrison_schema VALUES ('durable', 99)")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="newer than this garrison"):
        await SqliteStore(path).open()


def test_store_urls() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert open_store("sqlite:///rel/x.db").path == "rel/x.db"  # type: ignore[attr-defined]
    assert open_store("sqlite:////abs/x.db").path == "/abs/x.db"  # type: ignore[attr-defined]
    s = open_store("sqlite:///x.db?synchronous=normal")
    assert s.synchronous == "NORMAL"  # type: ignore[attr-defined]
    for bad in ("redis://x", "sqlite://host/x.db", "sqlite:///x.db?foo=1"):
        with pytest.raises(ConfigError):
            open_store(bad)
