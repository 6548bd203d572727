"""Property: whatever the messages, their interleaving across keys and the batching of turns,
the persisted state of every key equals the sequential fold of its messages (failures skipped,
each rolled back alone)."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.durable import ActorConfig, ActorSystem, MemoryStore, actor


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


@settings(max_examples=60, deadline=None)
@given(ops=ops_strategy, batch=st.integers(min_value=1, max_value=8), calls=st.booleans())
def test_persisted_state_is_the_sequential_fold(
    ops: list[tuple[str, str, int]], batch: int, calls: bool
) -> None:
    async def scenario() -> None:
        store = MemoryStore()
        cfg = ActorConfig(poll_interval=0.05, max_batch=batch)
        async with ActorSystem(store, actors=[Fold], config=cfg) as s:

            async def send(method: str, key: str, arg: int) -> None:
                if calls:
                    try:
                        await s.ref(Fold, key).call(method, arg)
                    except Exception:
                        assert method == "bad"
                else:
                    await s.ref(Fold, key).signal(method, arg)

            await asyncio.gather(*(send(*op) for op in ops))  # posted in list order
            for key in "abc":
                want = fold(ops, key)
                sent = sum(1 for _, k_, _ in ops if k_ == key)
                loop = asyncio.get_running_loop()
                end = loop.time() + 30
                while True:
                    rec = await s.store.actor_get("Fold", key)
                    if rec is None or rec.done_seq == sent:
                        break
                    assert loop.time() < end, f"key {key}: {rec.done_seq} of {sent} handled"
                    await asyncio.sleep(0.005)
                assert await s.state(Fold, key) == want

    asyncio.run(scenario())
