"""Property: whatever the messages, their interleaving across keys and the batching of turns,
the persisted state of every key equals the sequential fold of its messages (failures skipped,
each rolled back alone). On the memory store, and on PostgreSQL (fewer examples: real I/O)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garrison.durable import ActorConfig, ActorSystem, MemoryStore, Store, actor

from .conftest import PG_URL, drop_schema, pg_reachable


class Acc(msgspec.Struct):
    v: int = 0
    n: int = 0


@actor(name="Fold")
class Fold:
    state: Acc

    async def add(self, k: int) -> int:
        self.state.v += k
        self.state.n += 1
        return self.state.v

    async def mul(self, k: int) -> int:
        self.state.v *= k
        self.state.n += 1
        return self.state.v

    async def bad(self, k: int) -> int:
        self.state.v = -1_000_000
        raise RuntimeError("rejected")


def fold(ops: list[tuple[str, str, int]], key: str) -> Acc:
    acc = Acc()
    for method, k_, arg in ops:
        if k_ != key or method == "bad":
            continue
        acc.v = acc.v + arg if method == "add" else acc.v * arg
        acc.n += 1
    return acc


ops_strategy = st.lists(
    st.tuples(
        st.sampled_from(["add", "add", "mul", "bad"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=-3, max_value=3),
    ),
    max_size=60,
)


async def check_fold(
    store: Store,
    ops: list[tuple[str, str, int]],
    batch: int,
    calls: bool,
    prefix: str = "",
    concurrent: bool = True,
) -> None:
    """Send ``ops`` (keys prefixed by ``prefix``) and compare every key's state with its fold.
    ``concurrent``: all at once, which posts them in list order only on a store that sequences
    posts in submission order (memory); else one after the other (concurrent sends to a key
    have no order on PostgreSQL, whose posts run on several connections)."""
    cfg = ActorConfig(poll_interval=0.05, max_batch=batch)
    async with ActorSystem(store, actors=[Fold], config=cfg) as s:

        async def send(method: str, key: str, arg: int) -> None:
            if calls:
                try:
                    await s.ref(Fold, prefix + key).call(method, arg)
                except Exception:
                    assert method == "bad"
            else:
                await s.ref(Fold, prefix + key).signal(method, arg)

        if concurrent:
            await asyncio.gather(*(send(*op) for op in ops))  # posted in list order
        else:
            for op in ops:
                await send(*op)
        for key in "abc":
            want = fold(ops, key)
            sent = sum(1 for _, k_, _ in ops if k_ == key)
            loop = asyncio.get_running_loop()
            end = loop.time() + 30
            # every call has returned, so it was handled (a call to an active key may run
            # directly, never posted: done_seq does not count it); signals are waited for
            while not calls:
                rec = await s.store.actor_get("Fold", prefix + key)
                if rec is None or rec.done_seq == sent:
                    break
                assert loop.time() < end, f"key {key}: {rec.done_seq} of {sent} handled"
                await asyncio.sleep(0.005)
            assert await s.state(Fold, prefix + key) == want


@settings(max_examples=60, deadline=None)
@given(ops=ops_strategy, batch=st.integers(min_value=1, max_value=8), calls=st.booleans())
def test_persisted_state_is_the_sequential_fold(
    ops: list[tuple[str, str, int]], batch: int, calls: bool
) -> None:
    asyncio.run(check_fold(MemoryStore(), ops, batch, calls))


@pytest.fixture(scope="module")
def pg_fold_schema() -> Iterator[str]:
    """One schema for every example (a store per example, fresh keys per example)."""
    asyncio.run(pg_reachable())
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    asyncio.run(drop_schema(schema))


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=ops_strategy, batch=st.integers(min_value=1, max_value=8), calls=st.booleans())
def test_persisted_state_is_the_sequential_fold_on_postgres(
    pg_fold_schema: str, ops: list[tuple[str, str, int]], batch: int, calls: bool
) -> None:
    from garrison.durable._stores.postgres import PostgresStore

    async def scenario() -> None:
        store = PostgresStore(PG_URL, schema=pg_fold_schema, pool_size=4)
        await store.open()
        try:
            await check_fold(
                store, ops, batch, calls, prefix=f"{uuid.uuid4().hex}-", concurrent=False
            )
        finally:
            await store.close()

    asyncio.run(scenario())
