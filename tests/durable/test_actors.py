"""Actors on each store (memory, SQLite, PostgreSQL): every API, ordering, concurrency, failures,
reminders, idle deactivation, ownership and bad input. Time-driven behaviour uses a FakeClock."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest

from garrison.core import ConfigError, FakeClock, UsageError
from garrison.durable import (
    ActivityError,
    ActorConfig,
    ActorContext,
    ActorError,
    ActorSystem,
    Engine,
    LeaseLost,
    MemoryStore,
    PayloadTooLarge,
    StateTooLarge,
    Store,
    WorkflowContext,
    actor,
)
from garrison.durable._actor_workflow import WorkflowActorRef
from garrison.durable._stores.actors_base import Turn
from garrison.durable._stores.sqlite import SqliteStore

from .conftest import PG_URL, drop_schema, pg_reachable

FAST = ActorConfig(poll_interval=0.05, idle_timeout=30.0)


class Tally(msgspec.Struct):
    n: int = 0
    seen: list[int] = []
    blob: str = ""


@actor
class Counter:
    state: Tally
    ctx: ActorContext

    async def add(self, k: int) -> int:
        self.state.n += k
        self.state.seen.append(k)
        return self.state.n

    async def get(self) -> int:
        return self.state.n

    async def fail_after_change(self, k: int) -> None:
        self.state.n += k
        self.ctx.send(Counter, "sink", "add", 1)
        raise ValueError(f"refused {k}")

    async def forward(self, to: str, k: int) -> None:
        self.state.n += 1
        self.ctx.send(Counter, to, "add", k)

    async def grow(self, size: int) -> None:
        self.state.blob = "x" * size

    async def ident(self) -> str:
        return self.ctx.message_id


class Needs(msgspec.Struct):
    x: int


@dataclass
class Book:
    fired: list[str] = field(default_factory=list)


@actor(name="Alarm")
class Alarm:
    state: Book
    ctx: ActorContext

    async def arm(self, name: str, after: float, every: float | None) -> None:
        self.ctx.set_reminder(name, after=after, every=every, payload={"name": name})

    async def disarm(self, name: str) -> bool:
        return self.ctx.cancel_reminder(name)

    async def names(self) -> list[str]:
        return list(self.ctx.reminders())

    async def on_reminder(self, name: str, payload: Any) -> None:
        assert payload == {"name": name}
        self.state.fired.append(name)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def astore(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgres":  # a fresh schema per test, dropped after (see conftest)
        from garrison.durable._stores.postgres import PostgresStore

        await pg_reachable()
        schema = f"t_{uuid.uuid4().hex[:16]}"
        pg: Store = PostgresStore(PG_URL, schema=schema)
        try:
            await pg.open()
            yield pg
            await pg.close()
        finally:
            await drop_schema(schema)
        return
    s: Store = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "a.db")
    await s.open()
    yield s
    await s.close()


Factory = Callable[..., Awaitable[ActorSystem]]


@pytest.fixture
async def make(astore: Store) -> AsyncIterator[Factory]:
    made: list[ActorSystem] = []

    async def factory(**kw: Any) -> ActorSystem:
        kw.setdefault("actors", [Counter, Alarm])
        kw.setdefault("config", FAST)
        s = ActorSystem(astore, **kw)
        await s.open()
        made.append(s)
        return s

    yield factory
    for s in reversed(made):
        await s.close()


async def eventually(cond: Callable[[], Awaitable[bool]], what: str, limit: float = 30.0) -> None:
    """Poll ``cond`` until true (bounded: a generous limit, never a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not await cond():
        if loop.time() > end:
            raise AssertionError(f"not reached within {limit}s: {what}")
        await asyncio.sleep(0.01)


# -- calls, signals, state ----------------------------------------------------------------------


async def test_call_returns_the_result_and_persists_the_state(make: Factory) -> None:
    s = await make()
    ref = s.ref(Counter, "c1")
    assert await ref.state() == Tally()  # never activated: the default state
    assert await ref.call("add", 2) == 2
    assert await ref.call("add", 3) == 5
    assert (await ref.state()).n == 5
    assert await s.ref("Counter", "c1").call("get") == 5  # addressed by name too


async def test_signal_is_durable_and_handled(make: Factory) -> None:
    s = await make()
    for k in range(10):
        await s.ref(Counter, "s1").signal("add", k)

    async def done() -> bool:
        return bool((await s.state(Counter, "s1")).n == 45)

    await eventually(done, "all signals handled")
    assert (await s.state(Counter, "s1")).seen == list(range(10))  # one sender: in order


async def test_messages_of_one_key_run_one_at_a_time_in_order(make: Factory) -> None:
    s = await make()
    ref = s.ref(Counter, "ordered")
    results = await asyncio.gather(*(ref.call("add", 1) for _ in range(200)))
    assert sorted(results) == list(range(1, 201))  # each saw the state the previous left
    assert (await ref.state()).n == 200


async def test_different_keys_run_concurrently(astore: Store) -> None:
    gate = asyncio.Event()
    inside: list[str] = []

    @actor(name="Gate")
    class Gated:
        state: Tally
        ctx: ActorContext

        async def wait(self) -> None:
            inside.append(self.ctx.key)
            await gate.wait()

        async def ping(self) -> str:
            return self.ctx.key

    async with ActorSystem(astore, actors=[Gated], config=FAST) as s:
        blocked = asyncio.ensure_future(s.ref(Gated, "a").call("wait"))

        async def entered() -> bool:
            return inside == ["a"]

        await eventually(entered, "key a inside its handler")
        assert await s.ref(Gated, "b").call("ping") == "b"  # b is not held up by a
        second = asyncio.ensure_future(s.ref(Gated, "a").call("ping"))
        await asyncio.sleep(0.05)
        assert not second.done()  # a's next message waits for a's current one
        gate.set()
        await blocked
        assert await second == "a"


async def test_a_failing_handler_is_rolled_back_and_reported(make: Factory) -> None:
    s = await make()
    ref = s.ref(Counter, "f")
    await ref.call("add", 1)
    with pytest.raises(ActorError) as info:
        await ref.call("fail_after_change", 100)
    err = info.value
    assert err.failure is not None
    assert err.failure.type == "ValueError"
    assert "refused 100" in str(err)
    assert err.method == "fail_after_change"
    assert err.key == "f"
    assert await ref.call("get") == 1  # in memory too: the state was restored
    assert (await ref.state()).n == 1
    assert (await s.state(Counter, "sink")).n == 0  # its outbox was dropped
    assert s.stats.failures == 1


async def test_a_failing_signal_is_consumed_and_kept_as_a_dead_letter(make: Factory) -> None:
    s = await make()
    await s.ref(Counter, "dl").signal("fail_after_change", 5, id="poison-1")
    await s.ref(Counter, "dl").signal("add", 1)

    async def done() -> bool:
        return bool((await s.state(Counter, "dl")).n == 1)

    await eventually(done, "the next message handled")
    reply = await s.store.actor_reply("poison-1")
    assert reply is not None
    assert not reply.ok


async def test_outbox_messages_are_delivered_once(make: Factory) -> None:
    s = await make()
    for _ in range(5):
        await s.ref(Counter, "from").call("forward", "to", 10)

    async def done() -> bool:
        return bool((await s.state(Counter, "to")).n == 50)

    await eventually(done, "forwarded messages handled")
    assert (await s.state(Counter, "from")).n == 5
    assert (await s.state(Counter, "to")).seen == [10] * 5


async def test_a_retried_call_gets_the_recorded_reply(
    astore: Store, make: Factory, tmp_path: Path
) -> None:
    s = await make()
    ref = s.ref(Counter, "r")
    assert await ref.call("add", 7, id="req-1") == 7
    assert await ref.call("add", 7, id="req-1") == 7  # recorded: not applied twice
    await ref.signal("add", 1, id="sig-1")
    await ref.signal("add", 1, id="sig-1")

    async def done() -> bool:
        return bool((await ref.state()).n == 8)

    await eventually(done, "the signal handled")
    assert await ref.call("get") == 8
    assert await ref.call("ident", id="mine") == "mine"  # the id is the handler's message_id


async def test_a_call_survives_a_restart_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "restart.db"
    store = SqliteStore(path)
    await store.open()
    async with ActorSystem(store, actors=[Counter], config=FAST) as s:
        assert await s.ref(Counter, "k").call("add", 3, id="once") == 3
        await s.ref(Counter, "k").signal("add", 4)  # handled before close
        await eventually(lambda: _n(s, "k", 7), "second message handled")
    await store.close()
    store = SqliteStore(path)  # a new process: the recorded reply, the state are there
    await store.open()
    async with ActorSystem(store, actors=[Counter], config=FAST) as s:
        assert await s.ref(Counter, "k").call("add", 3, id="once") == 3
        assert await s.ref(Counter, "k").call("add", 1) == 8
    await store.close()


async def _n(s: ActorSystem, key: str, n: int) -> bool:
    return bool((await s.state(Counter, key)).n == n)


async def test_a_client_reaches_an_actor_hosted_elsewhere(make: Factory) -> None:
    await make()  # the worker
    client = await make(actors=[Counter], worker=False)
    assert await client.ref(Counter, "remote").call("add", 4) == 4
    assert client.active() == []


async def test_messages_posted_while_another_worker_holds_the_key(make: Factory) -> None:
    w1 = await make()
    w2 = await make()
    assert await w1.ref(Counter, "held").call("add", 1) == 1
    # usually w1 holds it now, but another worker's poller may claim the posted message first
    # (on PostgreSQL, between w1's post and w1's claim): the holder is whoever did
    holder, other = (w1, w2) if ("Counter", "held") in w1.active() else (w2, w1)
    assert ("Counter", "held") in holder.active()
    assert await other.ref(Counter, "held").call("add", 1) == 2  # the holder's poller handles it
    assert ("Counter", "held") in holder.active()
    assert ("Counter", "held") not in other.active()


# -- reminders, idle deactivation, ownership ----------------------------------------------------


async def test_several_reminders_per_key_fire_durably(astore: Store) -> None:
    clock = FakeClock()
    cfg = ActorConfig(poll_interval=1.0, idle_timeout=1000.0)
    async with ActorSystem(astore, actors=[Alarm], config=cfg, clock=clock) as s:
        ref = s.ref(Alarm, "home")
        await ref.call("arm", "once", 10.0, None)
        await ref.call("arm", "tick", 5.0, 5.0)
        await ref.call("arm", "later", 100.0, None)
        assert await ref.call("names") == ["later", "once", "tick"]
        clock.advance(6.0)  # t = 6: tick (due 5)

        # The checks nudge the clock by 10 ms, 1.5 s in all per stage (nothing else comes due):
        # the poller computes its sleep before its sleeper task registers with the FakeClock, so
        # an advance in between is missed until time moves again, at most poll_interval (1 s)
        # later (seen on PostgreSQL, whose I/O reorders the tasks); see the report of issue 5.
        nudged = [0.0]

        def nudge() -> None:
            if nudged[0] < 1.5:
                nudged[0] += 0.01
                clock.advance(0.01)

        async def ticked() -> bool:
            nudge()
            return bool((await ref.state()).fired == ["tick"])

        await eventually(ticked, "tick at 5")
        clock.advance(5.0)  # t = 11 (+ nudges): once (due 10), tick again (due 10)
        nudged[0] = 0.0

        async def fired() -> bool:
            nudge()
            return sorted((await ref.state()).fired) == ["once", "tick", "tick"]

        await eventually(fired, "tick twice and once")
        assert await ref.call("disarm", "later") is True
        assert await ref.call("disarm", "later") is False
        assert await ref.call("names") == ["tick"]
        rec = await s.store.actor_get("Alarm", "home")
        assert rec is not None
        assert [r.name for r in rec.reminders] == ["tick"]
        assert rec.wake_at == pytest.approx(clock.time() + 4.0)  # tick: due 15


async def test_idle_actors_deactivate_and_come_back_with_state_and_reminders(
    astore: Store,
) -> None:
    clock = FakeClock()
    cfg = ActorConfig(poll_interval=1.0, idle_timeout=10.0)
    async with ActorSystem(astore, actors=[Counter, Alarm], config=cfg, clock=clock) as s:
        assert await s.ref(Counter, "idle").call("add", 5) == 5
        await s.ref(Alarm, "sleepy").call("arm", "wake", 50.0, None)
        assert len(s.active()) == 2

        async def gone() -> bool:
            clock.advance(1.0)
            await asyncio.sleep(0)
            return not s.active()

        await eventually(gone, "both deactivated")
        assert s.stats.deactivations == 2

        async def released() -> bool:  # the lease is given up right after the deactivation
            rec = await s.store.actor_get("Counter", "idle")
            assert rec is not None
            return rec.owner is None

        await eventually(released, "the idle key's lease released")
        assert await s.ref(Counter, "idle").call("add", 1) == 6  # reactivated with its state

        async def woke() -> bool:
            clock.advance(5.0)
            await asyncio.sleep(0)
            return bool((await s.state(Alarm, "sleepy")).fired == ["wake"])

        await eventually(woke, "the reminder reactivated the alarm")


async def test_reminders_survive_a_restart_on_sqlite(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "rem.db"
    cfg = ActorConfig(poll_interval=1.0, idle_timeout=1000.0)
    for round_ in range(2):
        store = SqliteStore(path)
        await store.open()
        async with ActorSystem(store, actors=[Alarm], config=cfg, clock=clock) as s:
            if round_ == 0:
                await s.ref(Alarm, "a").call("arm", "r1", 30.0, None)
                await s.ref(Alarm, "a").call("arm", "r2", 40.0, None)
                continue

            async def both() -> bool:
                clock.advance(5.0)
                await asyncio.sleep(0)
                return sorted((await s.state(Alarm, "a")).fired) == ["r1", "r2"]

            await eventually(both, "reminders after restart")
        await store.close()


async def test_a_stale_owner_is_rejected_by_the_store(make: Factory) -> None:
    s = await make()
    st = s.store
    first = await st.actor_claim("w1", "Counter", "x", 100.0, 130.0)
    assert first is not None
    assert first.epoch == 1
    assert await st.actor_claim("w2", "Counter", "x", 110.0, 140.0) is None  # lease is live
    second = await st.actor_claim("w2", "Counter", "x", 131.0, 161.0)  # expired: taken over
    assert second is not None
    assert second.epoch == 2
    with pytest.raises(LeaseLost, match="stale"):
        await st.actor_commit(Turn(actor="Counter", key="x", epoch=1, now=132.0, done_seq=0))
    await st.actor_commit(Turn(actor="Counter", key="x", epoch=2, now=132.0, done_seq=0))
    assert await st.actor_release("w1", [("Counter", "x", 2)]) == 0  # not w1's any more


async def test_a_worker_that_lost_its_lease_drops_the_turn(make: Factory) -> None:
    s = await make()
    ref = s.ref(Counter, "fenced")
    assert await ref.call("add", 1) == 1
    far = s.clock.time() + 10_000  # another worker takes the key after the lease expired
    assert await s.store.actor_claim("intruder", "Counter", "fenced", far, far + 30) is not None
    await ref.signal("add", 100)

    async def dropped() -> bool:
        return s.stats.lease_lost == 1

    await eventually(dropped, "the stale turn rejected")
    assert (await ref.state()).n == 1
    assert ("Counter", "fenced") not in s.active()


# -- limits and bad input -----------------------------------------------------------------------


async def test_bad_input_is_rejected_with_clear_errors(make: Factory) -> None:
    s = await make(config=ActorConfig(poll_interval=0.05, max_payload_bytes=1000))
    with pytest.raises(UsageError, match="unknown actor type 'Nope'"):
        s.ref("Nope", "k")
    with pytest.raises(UsageError, match="actor key"):
        s.ref(Counter, "")
    with pytest.raises(UsageError, match="actor key"):
        s.ref(Counter, "k" * 257)
    ref = s.ref(Counter, "k")
    with pytest.raises(UsageError, match="no handler 'nope'; handlers: add"):
        await ref.call("nope")
    with pytest.raises(UsageError, match="no handler 'on_reminder'"):
        await s.ref(Alarm, "k").signal("on_reminder", "x", None)
    with pytest.raises(UsageError, match=r"'add'.*missing a required argument"):
        await ref.call("add")
    with pytest.raises(UsageError, match="too many"):
        await ref.signal("add", 1, 2)
    with pytest.raises(PayloadTooLarge, match="over the limit of 1,000"):
        await ref.call("add", "x" * 2000)
    with pytest.raises(UsageError, match="message id"):
        await ref.call("add", 1, id="")
    with pytest.raises(TypeError, match="cannot be stored"):
        await ref.call("add", object())
    with pytest.raises(UsageError, match="is not an @actor class"):
        s.ref(Tally, "k")


async def test_state_over_the_limit_fails_the_turn(make: Factory) -> None:
    s = await make(config=ActorConfig(poll_interval=0.05, max_state_bytes=500))
    ref = s.ref(Counter, "big")
    await ref.call("grow", 100)
    with pytest.raises(ActorError, match="StateTooLarge") as info:
        await ref.call("grow", 1000)
    assert info.value.failure is not None
    assert "max_state_bytes" in info.value.failure.message
    assert len((await ref.state()).blob) == 100
    assert issubclass(StateTooLarge, PayloadTooLarge)


async def test_reminder_misuse_is_reported(make: Factory) -> None:
    s = await make(config=ActorConfig(poll_interval=0.05, max_reminders=2))

    @actor(name="NoReminders")
    class Plain:
        state: Tally
        ctx: ActorContext

        async def arm(self) -> None:
            self.ctx.set_reminder("x", after=1.0)

    s.register(Plain)
    with pytest.raises(ActorError, match="defines no `async def on_reminder"):
        await s.ref(Plain, "p").call("arm")
    alarm = s.ref(Alarm, "a")
    with pytest.raises(ActorError, match="seconds >= 0"):
        await alarm.call("arm", "neg", -1.0, None)
    with pytest.raises(ActorError, match="every must be > 0"):
        await alarm.call("arm", "zero", 1.0, 0.0)
    await alarm.call("arm", "one", 10.0, None)
    await alarm.call("arm", "two", 10.0, None)
    with pytest.raises(ActorError, match="max_reminders"):
        await alarm.call("arm", "three", 10.0, None)
    await alarm.call("arm", "two", 20.0, None)  # replacing one is fine


def test_actor_classes_are_validated_at_decoration() -> None:
    with pytest.raises(UsageError, match="needs a typed state attribute"):

        @actor
        class NoState:
            async def go(self) -> None: ...

    with pytest.raises(UsageError, match="must be an async method"):

        @actor
        class Sync:
            state: Tally

            def go(self) -> None: ...

    with pytest.raises(UsageError, match="constructible without arguments"):

        @actor
        class Bad:
            state: Needs

            async def go(self) -> None: ...

    with pytest.raises(UsageError, match="no async handler"):

        @actor
        class Empty:
            state: Tally

    with pytest.raises(UsageError, match="decorates a class"):
        actor(lambda: None)  # type: ignore[call-overload]
    with pytest.raises(UsageError, match="name must be"):
        actor(name="")


def test_actor_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="idle_timeout"):
        ActorConfig(idle_timeout=0)
    with pytest.raises(ConfigError, match="max_batch"):
        ActorConfig(max_batch=0)
    with pytest.raises(ConfigError, match="handler_timeout"):
        ActorConfig(handler_timeout=-1.0)


async def test_a_slow_handler_fails_at_its_timeout(make: Factory) -> None:
    @actor(name="Slow")
    class Slow:
        state: Tally

        async def nap(self) -> None:
            self.state.n += 1
            await asyncio.sleep(30)

    s = await make(config=ActorConfig(poll_interval=0.05, handler_timeout=0.05))
    s.register(Slow)
    with pytest.raises(ActorError, match="TimeoutError"):
        await s.ref(Slow, "z").call("nap")
    assert (await s.state(Slow, "z")).n == 0


async def test_closed_systems_and_engines_without_actors(astore: Store) -> None:
    s = ActorSystem(astore, actors=[Counter])
    with pytest.raises(UsageError, match="not open"):
        await s.ref(Counter, "k").call("get")
    async with Engine(astore) as engine:
        with pytest.raises(UsageError, match="hosts no actors"):
            _ = engine.actors


async def test_a_newer_actor_schema_is_refused(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "new.db")
    await store.open()
    async with ActorSystem(store, actors=[Counter]):
        pass
    await store.close()
    conn = sqlite3.connect(tmp_path / "new.db")
    conn.execute("UPDATE garrison_schema SET version = 99 WHERE component = 'actors'")
    conn.commit()
    conn.close()
    store = SqliteStore(tmp_path / "new.db")
    await store.open()
    try:
        with pytest.raises(ConfigError, match="actors schema is version 99"):
            await ActorSystem(store, actors=[Counter]).open()
    finally:
        await store.close()


# -- with workflows -----------------------------------------------------------------------------


async def wf_uses_actors(ctx: WorkflowContext, key: str) -> list[int]:
    a = await ctx.actor(Counter, key).call("add", 5)
    await ctx.actor(Counter, key).signal("add", 1)
    b = await ctx.actor("Counter", key).call("get")
    return [a, b]


async def wf_actor_fails(ctx: WorkflowContext) -> str:
    try:
        await ctx.actor(Counter, "wf-f").call("fail_after_change", 1)
    except ActivityError as exc:
        failure = exc.failure
    else:
        return "no error"
    cause = None if failure is None else failure.cause
    return f"{failure and failure.type} <- {cause and cause.type}"


async def test_workflows_call_and_signal_actors_as_steps(astore: Store) -> None:
    async with Engine(
        astore, workflows=[wf_uses_actors, wf_actor_fails], actors=[Counter], actor_config=FAST
    ) as engine:
        h = await engine.start(wf_uses_actors, "wf-k", id="w1")
        assert await h.result() == [5, 6]
        again = await engine.start(wf_uses_actors, "wf-k", id="w1")  # idempotent start
        assert await again.result() == [5, 6]
        assert (await engine.actors.state(Counter, "wf-k")).n == 6
        fails = await engine.start(wf_actor_fails, id="w2")
        assert await fails.result() == "garrison.durable._actor.ActorError <- ValueError"
        with pytest.raises(UsageError, match="no handler"):
            WorkflowActorRef(None, Counter, "k").call("nope")


async def test_closing_the_system_under_a_waiting_call_says_so(astore: Store) -> None:
    entered = asyncio.Event()

    @actor(name="Stuck")
    class Stuck:
        state: Tally

        async def hang(self) -> None:
            entered.set()
            await asyncio.Event().wait()

    s = ActorSystem(astore, actors=[Stuck], config=FAST)
    await s.open()
    pending = asyncio.ensure_future(s.ref(Stuck, "z").call("hang", id="h-1"))
    await entered.wait()
    await s.close()
    with pytest.raises(UsageError, match="closed before the reply to message h-1"):
        await pending


async def test_a_local_call_whose_turn_is_fenced_is_posted_and_handled_once(
    make: Factory,
) -> None:
    s = await make()
    ref = s.ref(Counter, "moved")
    assert await ref.call("add", 1) == 1  # active here: the next call goes direct
    far = s.clock.time() + 10_000
    assert await s.store.actor_claim("intruder", "Counter", "moved", far, far + 30) is not None
    assert await s.store.actor_release("intruder", None) == 1  # fenced us, then left
    assert await ref.call("add", 10) == 11  # rejected turn, re-posted durably, handled once
    assert s.stats.lease_lost == 1
    assert (await ref.state()).seen == [1, 10]


async def test_direct_calls_keep_order_behind_posted_signals(make: Factory) -> None:
    s = await make()
    ref = s.ref(Counter, "mix")
    await ref.call("add", 0)  # active
    for k in range(1, 6):
        await ref.signal("add", k)
        assert await ref.call("add", 10 * k) == sum(range(1, k + 1)) + sum(
            10 * j for j in range(1, k + 1)
        )
    assert (await ref.state()).seen == [0, 1, 10, 2, 20, 3, 30, 4, 40, 5, 50]


async def test_a_system_opens_its_own_store_from_a_url() -> None:
    async with ActorSystem("memory://", actors=[Counter], config=FAST) as s:
        assert await s.ref(Counter, "u").call("add", 2) == 2
    with pytest.raises(UsageError, match="actors are not supported on a object"):
        ActorSystem(object())  # type: ignore[arg-type]

    @actor(name="Counter")
    class Other:
        state: Tally

        async def add(self, k: int) -> int:
            return k

    with pytest.raises(UsageError, match="two actor classes are named 'Counter'"):
        ActorSystem("memory://", actors=[Counter, Other])


async def wf_waits(ctx: WorkflowContext) -> Any:
    return await ctx.wait_event("go", timeout=600)


async def wf_doubles(ctx: WorkflowContext, x: int) -> int:
    return x * 2


@actor(name="Notifier")
class Notifier:
    state: Tally
    ctx: ActorContext

    async def notify(self, workflow_id: str, payload: int) -> None:
        self.state.n += 1
        self.ctx.signal_workflow(workflow_id, "go", payload)

    async def notify_then_fail(self, workflow_id: str) -> None:
        self.ctx.signal_workflow(workflow_id, "go", -1)
        self.ctx.start_workflow(wf_doubles, 100, id="never")
        raise ValueError("changed my mind")

    async def kick_off(self, x: int) -> str:
        return self.ctx.start_workflow(wf_doubles, x, id=f"doubled-{x}")

    async def kick_off_derived(self) -> str:
        return self.ctx.start_workflow("wf_doubles", 21)


async def test_actors_signal_and_start_workflows_through_the_outbox(astore: Store) -> None:
    async with Engine(
        astore, workflows=[wf_waits, wf_doubles], actors=[Notifier], actor_config=FAST
    ) as engine:
        ref = engine.actors.ref(Notifier, "n")
        waiter = await engine.start(wf_waits, id="waiter")
        with pytest.raises(ActorError, match="changed my mind"):
            await ref.call("notify_then_fail", "waiter")  # rolled back: no event, no start
        await ref.call("notify", "waiter", 7)
        assert await waiter.result() == 7  # the first event it got is 7, not -1
        assert await ref.call("kick_off", 3) == "doubled-3"
        assert await engine.handle("doubled-3").result() == 6
        wid = await ref.call("kick_off_derived")
        assert await engine.handle(wid).result() == 42
        await ref.call("notify", "no-such-workflow", 1)  # dropped at commit, logged
        assert (await ref.state()).n == 2
        assert await engine.list(id_prefix="never") == []


async def test_workflow_effects_are_validated_in_the_handler(make: Factory) -> None:
    @actor(name="BadNotifier")
    class BadNotifier:
        state: Tally
        ctx: ActorContext

        async def empty_id(self) -> None:
            self.ctx.signal_workflow("", "go")

        async def empty_name(self) -> None:
            self.ctx.signal_workflow("w", "")

        async def bad_start(self) -> None:
            self.ctx.start_workflow(wf_doubles, 1, id="")

    s = await make()
    s.register(BadNotifier)
    ref = s.ref(BadNotifier, "b")
    with pytest.raises(ActorError, match="workflow id must be a non-empty string"):
        await ref.call("empty_id")
    with pytest.raises(ActorError, match="event name must be a non-empty string"):
        await ref.call("empty_name")
    with pytest.raises(ActorError, match="workflow id must be a non-empty string"):
        await ref.call("bad_start")


async def test_a_handler_that_raises_cancelled_error_fails_alone(make: Factory) -> None:
    @actor(name="Canceller")
    class Canceller:
        state: Tally

        async def cancel_inside(self, k: int) -> None:
            self.state.n += k
            inner = asyncio.ensure_future(asyncio.sleep(10))
            inner.cancel()
            await inner  # raises CancelledError into the handler, not from our turn

        async def add(self, k: int) -> int:
            self.state.n += k
            return self.state.n

    s = await make()
    s.register(Canceller)
    ref = s.ref(Canceller, "c")
    with pytest.raises(ActorError, match="HandlerCancelled"):
        await ref.call("cancel_inside", 100)
    assert await ref.call("add", 1) == 1  # the cancelled change did not survive
    assert (await ref.state()).n == 1
