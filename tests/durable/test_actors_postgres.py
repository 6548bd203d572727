"""Actors on PostgreSQL specifically: several workers (each its own store and pool) on one schema,
fencing of a stale owner after a takeover, SKIP LOCKED claims, racing duplicate posts, and the
``actors`` migration component. The contract itself runs on PostgreSQL in test_actors.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest

from garrison.core import ConfigError
from garrison.durable import ActorConfig, ActorContext, ActorSystem, LeaseLost, actor
from garrison.durable._actor_runtime import actor_store_for
from garrison.durable._stores.actors_base import (
    NewMessage,
    Reminder,
    Reply,
    Turn,
    WorkflowEvent,
)
from garrison.durable._stores.actors_postgres import PostgresActorStore
from garrison.durable._stores.base import NewInstance
from garrison.durable._stores.postgres import PostgresStore

from .conftest import PG_URL, WAIT, until

FAST = ActorConfig(poll_interval=0.05, idle_timeout=30.0)


class Log(msgspec.Struct):
    seen: list[str] = []


@actor(name="Ledger")
class Ledger:
    state: Log
    ctx: ActorContext

    async def add(self, item: str) -> int:
        self.state.seen.append(item)
        return len(self.state.seen)

    async def relay(self, to: str, item: str) -> None:
        self.state.seen.append(item)
        self.ctx.send(Ledger, to, "add", item)


StoreFactory = Callable[[], Awaitable[PostgresStore]]


@pytest.fixture
async def make_store(pg_schema: str) -> AsyncIterator[StoreFactory]:
    """Stores on the test's schema, each with its own pool (one per simulated worker)."""
    opened: list[PostgresStore] = []

    async def make() -> PostgresStore:
        s = PostgresStore(PG_URL, schema=pg_schema, pool_size=4)
        await s.open()
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()


def msg(key: str, msg_id: str, item: str = "x", at: float = 100.0) -> NewMessage:
    return NewMessage(
        actor="Ledger",
        key=key,
        msg_id=msg_id,
        method="add",
        args=msgspec.msgpack.encode([item]),
        at=at,
    )


async def test_two_workers_apply_each_message_once_in_per_key_order(
    make_store: StoreFactory,
) -> None:
    keys = [f"k{i}" for i in range(4)]
    per_sender = 25
    async with (
        ActorSystem(await make_store(), actors=[Ledger], config=FAST) as one,
        ActorSystem(await make_store(), actors=[Ledger], config=FAST) as two,
    ):

        async def sender(system: ActorSystem, name: str, key: str) -> None:
            # one sender per (system, key): its messages are ordered; calls and signals mixed
            for i in range(per_sender):
                ref = system.ref(Ledger, key)
                if i % 3 == 0:
                    await ref.call("add", f"{name}:{i}")
                else:
                    await ref.signal("add", f"{name}:{i}")

        await asyncio.gather(*(sender(s, n, k) for k in keys for s, n in ((one, "a"), (two, "b"))))
        # relays: a turn's outbox message, exactly once with the turn, across workers
        for i in range(10):
            await two.ref(Ledger, "relay-src").signal("relay", "relay-dst", f"r:{i}")

        async def all_handled() -> bool:
            for k in keys:
                rec = await one.store.actor_get("Ledger", k)
                if rec is None or rec.done_seq != rec.next_seq:
                    return False
                if len((await one.state(Ledger, k)).seen) != 2 * per_sender:
                    return False
            return len((await one.state(Ledger, "relay-dst")).seen) == 10

        await until(all_handled, WAIT)
        for k in keys:
            seen = (await two.state(Ledger, k)).seen
            assert sorted(seen) == sorted(f"{n}:{i}" for n in "ab" for i in range(per_sender))
            for n in "ab":  # each sender's messages in the order it sent them
                mine = [int(x.split(":")[1]) for x in seen if x.startswith(f"{n}:")]
                assert mine == list(range(per_sender))
        assert (await one.state(Ledger, "relay-dst")).seen == [f"r:{i}" for i in range(10)]
        assert (await one.state(Ledger, "relay-src")).seen == [f"r:{i}" for i in range(10)]


async def test_a_stale_owner_is_fenced_after_a_takeover(make_store: StoreFactory) -> None:
    a = PostgresActorStore(await make_store())
    b = PostgresActorStore(await make_store())
    await a.actor_open()
    [posted] = await a.actor_post([msg("x", "m1", "first")])
    assert posted.seq == 1
    old = await a.actor_claim("w1", "Ledger", "x", 100.0, 130.0)
    assert old is not None
    assert [m.msg_id for m in old.inbox] == ["m1"]
    assert await b.actor_claim("w2", "Ledger", "x", 120.0, 150.0) is None  # w1's lease is live
    new = await b.actor_claim("w2", "Ledger", "x", 131.0, 161.0)  # expired: taken over
    assert new is not None
    assert new.epoch == old.epoch + 1
    stale = Turn(
        actor="Ledger",
        key="x",
        epoch=old.epoch,
        now=132.0,
        done_seq=1,
        state=b"stale",
        outbox=[msg("y", "out-1", at=132.0)],
        replies=[("m1", Reply(True, b"\x01"))],
        set_reminders=[Reminder(name="r", due_at=500.0)],
    )
    with pytest.raises(LeaseLost, match="stale"):
        await a.actor_commit(stale)
    # nothing of the stale turn is there: state, inbox, outbox, reply, reminder
    rec = await b.actor_get("Ledger", "x")
    assert rec is not None
    assert (rec.state, rec.done_seq, rec.owner, rec.reminders) == (None, 0, "w2", [])
    assert [m.msg_id for m in await b.actor_inbox("Ledger", "x", 0, 10)] == ["m1"]
    assert await b.actor_get("Ledger", "y") is None
    assert await b.actor_reply("m1") is None
    # the new owner's turn goes through; the old owner cannot release what it lost
    await b.actor_commit(
        Turn(actor="Ledger", key="x", epoch=new.epoch, now=133.0, done_seq=1, state=b"new")
    )
    assert await a.actor_release("w1", [("Ledger", "x", new.epoch)]) == 0
    assert await a.actor_release("w2", [("Ledger", "x", old.epoch)]) == 0
    rec = await a.actor_get("Ledger", "x")
    assert rec is not None
    assert (rec.state, rec.done_seq, rec.owner) == (b"new", 1, "w2")
    assert await a.actor_release("w2", [("Ledger", "x", new.epoch)]) == 1


async def test_a_commit_racing_a_claim_is_fenced_or_first(make_store: StoreFactory) -> None:
    """A claim taken while a turn commits either waits for the commit (and sees its result) or
    comes first (and the turn is rejected): never both applied at the same epoch."""
    a = PostgresActorStore(await make_store())
    b = PostgresActorStore(await make_store())
    await a.actor_open()
    await a.actor_post([msg(f"r{i}", f"m{i}") for i in range(20)])
    outcomes = []
    for i in range(20):
        key = f"r{i}"
        held = await a.actor_claim("w1", "Ledger", key, 100.0, 130.0)
        assert held is not None
        turn = Turn(actor="Ledger", key=key, epoch=held.epoch, now=140.0, done_seq=1, state=b"a")
        got = await asyncio.gather(
            a.actor_commit(turn),
            b.actor_claim("w2", "Ledger", key, 140.0, 170.0),
            return_exceptions=True,
        )
        committed = not isinstance(got[0], BaseException)
        if not committed:
            assert isinstance(got[0], LeaseLost)
        load = got[1]
        assert not isinstance(load, BaseException)
        assert load is not None
        # the claimer sees the turn's effects exactly when the turn committed
        assert (load.done_seq, load.state, len(load.inbox)) == (
            (1, b"a", 0) if committed else (0, None, 1)
        )
        outcomes.append(committed)
    assert len(outcomes) == 20  # which side wins each race is the scheduler's, not asserted


async def test_claims_skip_locked_keys_instead_of_waiting(make_store: StoreFactory) -> None:
    a = PostgresActorStore(await make_store())
    await a.actor_open()
    await a.actor_post([msg("busy", "m1"), msg("free", "m2")])
    conn = await asyncpg.connect(PG_URL)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(
            f'SELECT 1 FROM "{a.store.schema}".actor_rows WHERE key = $1 FOR UPDATE', "busy"
        )
        loads = await asyncio.wait_for(
            a.actor_claim_ready("w1", ["Ledger"], 100.0, 130.0, 10), WAIT
        )
        assert [load.key for load in loads] == ["free"]
        await tx.rollback()
    finally:
        await conn.close()
    assert [load.key for load in await a.actor_claim_ready("w1", ["Ledger"], 100.0, 130.0, 10)] == [
        "busy"
    ]


async def test_racing_posts_of_one_id_post_it_once(make_store: StoreFactory) -> None:
    stores = [PostgresActorStore(await make_store()) for _ in range(3)]
    await stores[0].actor_open()
    results = await asyncio.gather(
        *(
            s.actor_post([msg("dup", f"same-{j}") for j in range(5)])
            for s in stores
            for _ in range(4)
        )
    )
    for j in range(5):
        got = [r[j] for r in results]
        assert sum(not r.duplicate for r in got) == 1
        assert {r.seq for r in got} == {got[0].seq}
    rec = await stores[0].actor_get("Ledger", "dup")
    assert rec is not None
    assert rec.next_seq == 5  # gapless: no sequence number burnt by a lost race
    assert [m.seq for m in await stores[0].actor_inbox("Ledger", "dup", 0, 10)] == [1, 2, 3, 4, 5]
    # one message per post (one statement in autocommit): the same
    singles = await asyncio.gather(
        *(s.actor_post([msg("dup", "single")]) for s in stores for _ in range(4))
    )
    assert sum(not r.duplicate for (r,) in singles) == 1
    assert {r.seq for (r,) in singles} == {6}
    # once consumed with a recorded reply, a re-post returns the reply and posts nothing
    load = await stores[1].actor_claim("w1", "Ledger", "dup", 100.0, 130.0)
    assert load is not None
    assert len(load.inbox) == 6
    await stores[1].actor_commit(
        Turn(
            actor="Ledger",
            key="dup",
            epoch=load.epoch,
            now=101.0,
            done_seq=6,
            replies=[("single", Reply(True, b"\x2a"))],
        )
    )
    again = await asyncio.gather(*(s.actor_post([msg("dup", "single")]) for s in stores))
    assert [(r.duplicate, r.reply) for (r,) in again] == [(True, Reply(True, b"\x2a"))] * 3
    rec = await stores[2].actor_get("Ledger", "dup")
    assert rec is not None
    assert (rec.next_seq, rec.done_seq) == (6, 6)


async def test_a_turn_starts_and_signals_workflows_in_its_transaction(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    a = PostgresActorStore(store)
    await a.actor_open()
    heard = asyncio.Event()
    other = await make_store()
    other.on_work(heard.set)
    await other.claim("w9", ["nothing"], 0.0, 1.0, 1)  # starts listening
    await store.create(NewInstance(id="wf-1", workflow="wf", run_id="r1", args=b"", now=1.0))
    load = await a.actor_claim("w1", "Ledger", "n", 100.0, 130.0)
    assert load is not None
    res = await a.actor_commit(
        Turn(
            actor="Ledger",
            key="n",
            epoch=load.epoch,
            now=101.0,
            done_seq=0,
            workflow_events=[
                WorkflowEvent(workflow_id=w, name="go", payload=b"\x07")
                for w in ("wf-1", "missing")
            ],
        )
    )
    assert [e.workflow_id for e in res.events] == ["wf-1"]
    assert res.dropped == ["missing"]
    await asyncio.wait_for(heard.wait(), WAIT)  # NOTIFY: another worker's engine is kicked
    loaded = await store.load("wf-1")
    assert loaded is not None
    assert [(i.kind, i.name, i.payload) for i in loaded.inbox] == [("event", "go", b"\x07")]


async def test_the_actors_component_migrates_an_existing_schema(
    make_store: StoreFactory, pg_schema: str
) -> None:
    store = await make_store()  # a workflow-only schema, as garrison before actors left it
    await store.create(NewInstance(id="old", workflow="wf", run_id="r", args=b"a", now=1.0))
    conn = await asyncpg.connect(PG_URL)
    try:
        versions = f'SELECT component, version FROM "{pg_schema}".garrison_schema ORDER BY 1'
        assert [tuple(r) for r in await conn.fetch(versions)] == [("durable", 1)]
        # several workers opening at once migrate once
        systems = [actor_store_for(await make_store()) for _ in range(3)]
        await asyncio.gather(*(s.actor_open() for s in systems))
        assert [tuple(r) for r in await conn.fetch(versions)] == [("actors", 1), ("durable", 1)]
        assert await store.get("old") is not None  # the workflow data is untouched
        async with ActorSystem(store, actors=[Ledger], config=FAST) as s:
            assert await s.ref(Ledger, "m").call("add", "v") == 1
        # a schema written by a newer garrison is refused, not guessed at
        await conn.execute(
            f"UPDATE \"{pg_schema}\".garrison_schema SET version = 99 WHERE component = 'actors'"
        )
        with pytest.raises(ConfigError, match=r"actors schema .* is version 99"):
            await PostgresActorStore(await make_store()).actor_open()
    finally:
        await conn.close()
