"""What only the PostgreSQL store has: several stores (pools, as separate workers would hold) on
one schema, claimed with SKIP LOCKED, fenced by epochs under row locks; its schema migrations;
its URL. The store contract itself runs on PostgreSQL through the ``store`` fixture."""

from __future__ import annotations

import asyncio
import importlib.util
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
import pytest

from garrison.core import ConfigError, FakeClock, TransportError, UsageError
from garrison.durable import Engine, EngineConfig, LeaseLost, Status, WorkflowContext
from garrison.durable._stores import open_store
from garrison.durable._stores.base import (
    ListFilter,
    NewChild,
    NewInstance,
    Schedule,
    Transition,
)
from garrison.durable._stores.postgres import PostgresStore
from garrison.durable._stores.postgres_schema import MIGRATIONS

from .conftest import PG_URL, WAIT, until

StoreFactory = Callable[[], Awaitable[PostgresStore]]


@pytest.fixture
async def stores(pg_schema: str) -> AsyncIterator[StoreFactory]:
    """Opens any number of stores on one fresh schema, as separate workers would."""
    opened: list[PostgresStore] = []

    async def make() -> PostgresStore:
        s = PostgresStore(PG_URL, schema=pg_schema, pool_size=4)
        await s.open()
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()


def new(wid: str, owner: str | None = None, now: float = 100.0, wf: str = "wf") -> NewInstance:
    return NewInstance(
        id=wid, workflow=wf, run_id="r" + wid, args=b"\x90", now=now, owner=owner,
        lease_until=None if owner is None else now + 30,
    )  # fmt: skip


async def test_two_stores_claiming_at_once_never_take_the_same_instance(
    stores: StoreFactory,
) -> None:
    a, b = await stores(), await stores()
    for round_ in range(15):
        ids = [f"r{round_}-{i}" for i in range(40)]
        await asyncio.gather(*(a.create(new(i)) for i in ids))
        now = 200.0 + round_
        # several concurrent claimers per store, small batches: the SKIP LOCKED path is hot
        claims = await asyncio.gather(
            *(
                s.claim(f"{name}{k}", ["wf"], now, now + 30, 7)
                for k in range(4)
                for name, s in (("a", a), ("b", b))
            )
        )
        taken = Counter(c.id for batch in claims for c in batch)
        assert all(n == 1 for n in taken.values()), taken.most_common(3)
        # what was skipped (locked by a peer at that moment) is claimed by a later call
        rest = await a.claim("late", ["wf"], now, now + 30, 100, ids)
        assert sorted([*taken, *(c.id for c in rest)]) == sorted(ids)
        owners = {i.id: i.owner for i in await a.query(ListFilter(id_prefix=f"r{round_}-"))}
        for batch, worker in zip(claims, [f"{n}{k}" for k in range(4) for n in "ab"], strict=True):
            assert all(owners[c.id] == worker and c.epoch == 1 for c in batch)


async def test_a_stale_owner_is_fenced_out_after_takeover(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    await a.create(new("x"))
    (mine,) = await a.claim("wa", ["wf"], 100.0, 110.0, 1)
    await a.commit(Transition(workflow_id="x", epoch=mine.epoch, now=101.0, batches=[b"0"]))
    assert await b.claim("wb", ["wf"], 105.0, 135.0, 1) == []  # the lease still holds
    (theirs,) = await b.claim("wb", ["wf"], 111.0, 141.0, 1)  # expired: taken over
    assert theirs.epoch == mine.epoch + 1
    # the old owner neither writes nor extends the lease it lost
    with pytest.raises(LeaseLost, match="stale"):
        await a.commit(Transition(workflow_id="x", epoch=mine.epoch, now=112.0, first_seq=1))
    assert await a.renew("wa", 500.0) == 0
    assert await a.release("wa", 112.0) == 0
    await b.commit(Transition(workflow_id="x", epoch=theirs.epoch, now=113.0, first_seq=1))
    info = await b.get("x")
    assert info is not None
    assert (info.owner, info.epoch, info.steps) == ("wb", 2, 0)


async def test_racing_writers_only_the_current_epoch_commits(stores: StoreFactory) -> None:
    a, b = await stores(), await stores()
    for i in range(20):
        wid = f"w{i}"
        await a.create(new(wid, owner="old"))
        (c,) = await b.claim("new", ["wf"], 200.0, 230.0, 1)  # old's lease (130) expired
        stale = Transition(workflow_id=wid, epoch=1, now=201.0, batches=[b"old"])
        fresh = Transition(workflow_id=wid, epoch=c.epoch, now=201.0, batches=[b"new"])
        results = await asyncio.gather(a.commit(stale), b.commit(fresh), return_exceptions=True)
        assert isinstance(results[0], LeaseLost)
        assert not isinstance(results[1], BaseException)
        loaded = await a.load(wid)
        assert loaded is not None
        assert loaded.batches == [b"new"]
        await b.commit(
            Transition(
                workflow_id=wid, epoch=c.epoch, now=202.0, first_seq=1, status=Status.COMPLETED
            )
        )


async def test_a_child_ending_while_its_parent_adds_the_waiter_is_never_lost(
    stores: StoreFactory,
) -> None:
    """The parent's commit (waiter row) and the child's end (reads waiters) race on two
    connections; whichever wins, the outcome reaches the parent's inbox exactly once."""
    a, b = await stores(), await stores()
    rng = random.Random(5)
    for i in range(200):
        p, k = f"p{i}", f"k{i}"
        await a.create(new(p, owner="w"))
        await a.create(new(k, owner="w"))
        start = Transition(
            workflow_id=p, epoch=1, now=101.0, children=[NewChild(instance=new(k), step=2)]
        )
        end = Transition(workflow_id=k, epoch=1, now=101.0, status=Status.COMPLETED, result=b"\x07")
        first, second = (a.commit(start), b.commit(end))
        if rng.random() < 0.5:
            first, second = second, first
        await asyncio.gather(first, second)
        loaded = await a.load(p)
        assert loaded is not None
        assert [(m.kind, m.step) for m in loaded.inbox] == [("child", 2)], i


async def test_posts_and_terminations_racing_an_end_leave_no_orphan_rows(
    stores: StoreFactory,
) -> None:
    a, b = await stores(), await stores()
    for i in range(20):
        wid = f"e{i}"
        await a.create(new(wid, owner="w"))
        end = Transition(workflow_id=wid, epoch=1, now=101.0, status=Status.COMPLETED)
        results = await asyncio.gather(
            a.commit(end), b.post(wid, "event", "go", b"", 101.0), return_exceptions=True
        )
        assert not isinstance(results[0], BaseException)
        loaded = await a.load(wid)
        assert loaded is not None
        assert loaded.inbox == []  # a post either came first (and was dropped) or saw the end
        assert loaded.info.ready_at is None


async def test_two_engines_share_the_work_and_each_workflow_runs_once(
    stores: StoreFactory,
) -> None:
    runs: Counter[int] = Counter()
    gate = asyncio.Event()  # held until each worker holds its 10 workflows

    async def count(i: int) -> int:
        await gate.wait()
        runs[i] += 1
        return i * 2

    async def job(ctx: WorkflowContext, i: int) -> int:
        return await ctx.activity(count, i)

    # the real clock: the workers find the client's work by polling, as separate processes do
    cfg = EngineConfig(poll_interval=0.05, max_active=10)
    client = Engine(await stores(), workflows=[job], config=cfg, worker=False)
    await client.open()
    handles = [await client.start(job, i, id=f"j{i}") for i in range(60)]
    workers = [Engine(await stores(), workflows=[job], config=cfg) for _ in range(2)]
    try:
        for e in workers:
            await e.open()
        await until(lambda: all(w.stats.loads == 10 for w in workers))
        gate.set()
        assert [await h.result(timeout=60) for h in handles] == [i * 2 for i in range(60)]
        assert runs == Counter(range(60))
        assert sorted(w.stats.ended > 0 for w in workers) == [True, True]
        assert sum(w.stats.ended for w in workers) == 60
    finally:
        for e in (client, *workers):
            await e.close()


class LookingStore(PostgresStore):
    """Counts the poller's looks (``schedules`` is the last read before it pauses)."""

    looks = 0

    async def schedules(self) -> list[Schedule]:
        found = await super().schedules()
        self.looks += 1
        return found


async def test_work_started_elsewhere_wakes_a_worker_without_a_poll(
    stores: StoreFactory, pg_schema: str
) -> None:
    """LISTEN/NOTIFY: the worker's clock never moves, so once its poller has looked and paused
    it never wakes by itself; the client's start (on another store, as from another process)
    reaches it by a notification."""

    async def job(ctx: WorkflowContext, x: int) -> int:
        return x + 1

    clock = FakeClock()
    store = LookingStore(PG_URL, schema=pg_schema)
    await store.open()
    worker = Engine(store, workflows=[job], clock=clock)
    client = Engine(await stores(), workflows=[job], worker=False, clock=clock)
    await worker.open()
    await client.open()
    try:
        await until(lambda: bool(store._listener) and store.looks >= 1)
        looks = -1
        while looks != store.looks:  # until the poller has paused (a false pass if not, never red)
            looks = store.looks
            await asyncio.sleep(0.3)
        await client.start(job, 41, id="remote")
        assert await worker.handle("remote").result(timeout=WAIT) == 42
        assert store.looks > looks
        assert worker.stats.loads == 1
    finally:
        await client.close()
        await worker.close()
        await store.close()


# -- schema -------------------------------------------------------------------------------------


async def test_concurrent_opens_migrate_once_and_reopen_is_idempotent(pg_schema: str) -> None:
    many = [PostgresStore(PG_URL, schema=pg_schema, pool_size=1) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in many))
    await many[0].create(new("keep"))
    for s in many:
        await s.close()
    again = PostgresStore(PG_URL, schema=pg_schema)
    await again.open()
    try:
        assert await again.get("keep") is not None
    finally:
        await again.close()
    conn = await asyncpg.connect(PG_URL)
    try:
        version = await conn.fetchval(
            f"SELECT version FROM {pg_schema}.garrison_schema WHERE component = 'durable'"
        )
        assert version == len(MIGRATIONS)
    finally:
        await conn.close()


async def test_a_newer_schema_is_refused(pg_schema: str) -> None:
    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f"CREATE SCHEMA {pg_schema}")
        await conn.execute(
            f"CREATE TABLE {pg_schema}.garrison_schema (component text PRIMARY KEY, version bigint)"
        )
        await conn.execute(f"INSERT INTO {pg_schema}.garrison_schema VALUES ('durable', 99)")
    finally:
        await conn.close()
    with pytest.raises(ConfigError, match="version 99, newer than this garrison"):
        await PostgresStore(PG_URL, schema=pg_schema).open()


async def test_a_missing_database_or_server_is_named(pg_schema: str) -> None:
    base = PG_URL.rsplit("/", 1)[0]
    with pytest.raises(ConfigError, match="no_such_db_for_garrison"):
        await open_store(f"{base}/no_such_db_for_garrison").open()
    with pytest.raises(TransportError, match=r"cannot connect to PostgreSQL at .*:\*\*\*@"):
        await open_store("postgresql://u:secret@127.0.0.1:1/db").open()


async def test_a_closed_store_says_so() -> None:
    with pytest.raises(UsageError, match="not open"):
        await PostgresStore(PG_URL).get("x")


# -- URLs ---------------------------------------------------------------------------------------


def test_postgres_urls() -> None:
    s = open_store("postgresql://u:secret@db.example:6543/app?schema=orders&pool_size=3")
    assert isinstance(s, PostgresStore)
    assert (s.schema, s.pool_size) == ("orders", 3)
    assert s.dsn == "postgresql://u:secret@db.example:6543/app"  # garrison's options removed
    s = open_store("postgres://u@h/db?sslmode=require")
    assert isinstance(s, PostgresStore)
    assert (s.schema, s.pool_size, s.dsn) == ("public", 10, "postgres://u@h/db?sslmode=require")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u:secret@h/db?scheme=x", r"unknown postgresql option\(s\) \['scheme'\]"),
        ("postgresql://h/db?schema=Bad-Name", "schema name must be"),
        ("postgresql://h/db?schema=", "schema name must be"),
        ("postgresql://h/db?pool_size=0", "pool_size must be an integer >= 1"),
        ("postgresql://h/db?pool_size=many", "pool_size must be an integer >= 1"),
        ("postgresql://", "expected postgresql://user@host:port/database"),
    ],
)
def test_bad_postgres_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        open_store(url)
    assert "secret" not in str(info.value)  # a password is never echoed


def test_a_missing_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "asyncpg" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"garrison\[postgres\]"):
        open_store("postgresql://h/db")
