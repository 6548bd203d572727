"""Races between the engine's memory and its store, each forced deterministically.

A store wrapper holds one chosen call (before its write, or after its read) until the test
opens it, so an event, a cancellation or a workflow's end lands exactly in the window where a
wake-up used to be lost. Time is a FakeClock that never moves by itself: a lost wake-up is not
merely late here, it never comes, and the test fails instead of passing after a poll.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest

from garrison.core import FakeClock
from garrison.durable import (
    Engine,
    EngineConfig,
    Store,
    WorkflowCancelled,
    WorkflowContext,
)
from garrison.durable._runner import sleep_until
from garrison.durable._stores.base import Loaded, Transition, WorkflowInfo

from .conftest import WAIT, EngineFactory, until


class Gate:
    """Holds the first store call that matches until :meth:`open`."""

    def __init__(self, match: Callable[..., bool]) -> None:
        self.match = match
        self.reached = asyncio.Event()
        self._open = asyncio.Event()
        self._used = False

    async def hold(self, *args: Any) -> None:
        if not self._used and self.match(*args):
            self._used = True
            self.reached.set()
            await self._open.wait()

    def open(self) -> None:
        self._open.set()


class GatedStore:
    """A store whose ``commit`` (before its write), ``load`` and ``get`` (after their read) can
    be held; calls are counted."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.gates: dict[str, Gate] = {}
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def gate(self, method: str, match: Callable[..., bool] = lambda *a: True) -> Gate:
        g = self.gates[method] = Gate(match)
        return g

    async def _hold(self, method: str, *args: Any) -> None:
        self.calls[method] += 1
        g = self.gates.get(method)
        if g is not None:
            await g.hold(*args)

    async def commit(self, t: Transition) -> Any:
        await self._hold("commit", t)
        return await self.inner.commit(t)

    async def load(self, workflow_id: str) -> Loaded | None:
        loaded = await self.inner.load(workflow_id)
        await self._hold("load", workflow_id)  # rows posted from now on are not in the snapshot
        return loaded

    async def get(self, workflow_id: str) -> WorkflowInfo | None:
        info = await self.inner.get(workflow_id)
        await self._hold("get", workflow_id)
        return info


@pytest.fixture
def gated(store: Store) -> GatedStore:
    return GatedStore(store)


class Parked:
    """Whether an engine's poller is parked: sleeping until a time still ahead on the clock,
    with no kick pending, so nothing but a kick or the clock moving on will make it look at the
    store again. Tests wait for this before opening a gate, so that a wake-up the engine failed
    to give cannot be covered by a look that happened to come late."""

    def __init__(self, e: Engine, clock: FakeClock) -> None:
        self.e, self.clock = e, clock
        self.until: float | None = None
        sleep = e._sleep_until

        async def watched(at: float) -> None:
            if not e._kick.is_set() and at > clock.time():
                self.until = at
            try:
                await sleep(at)
            finally:
                self.until = None

        e._sleep_until = watched  # type: ignore[method-assign]

    def __call__(self) -> bool:
        at = self.until
        return at is not None and at > self.clock.time() and not self.e._kick.is_set()


@pytest.fixture
async def make(gated: GatedStore, clock: FakeClock) -> AsyncIterator[EngineFactory]:
    engines: list[Engine] = []

    async def make(*workflows: Any, **config: Any) -> Engine:
        cfg = EngineConfig(**{"poll_interval": 0.5, "idle_unload": 1.0, **config})
        e = Engine(cast(Store, gated), workflows=list(workflows), config=cfg, clock=clock)
        await e.open()
        engines.append(e)
        return e

    yield make
    for e in engines:
        await e.close()


async def waits_for_go(ctx: WorkflowContext) -> Any:
    return await ctx.wait_event("go")


def unload(t: Transition) -> bool:
    return t.release and not t.batches


async def test_a_timer_fires_even_if_the_clock_moved_before_its_task_started(
    clock: FakeClock,
) -> None:
    task = asyncio.get_running_loop().create_task(sleep_until(clock, clock.time() + 5))
    clock.advance(10)  # the task has not run yet: its deadline was fixed when it was made
    await asyncio.wait_for(task, WAIT)


async def test_idle_time_counts_from_the_transition_not_from_when_the_timer_task_starts(
    make: EngineFactory, clock: FakeClock
) -> None:
    e = await make(waits_for_go)
    await e.start(waits_for_go)
    clock.advance(2)  # at once: the idle-unload timer's task has not started yet
    await until(lambda: e.stats.unloads == 1)


async def test_the_poller_wakes_when_the_clock_moved_before_its_pause_began(
    make: EngineFactory, clock: FakeClock
) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep(3600)
        return "woke"

    e = await make(wf)
    loop = asyncio.get_running_loop()
    moved = False

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        # the poller decided to pause and made its sleeper; before that task first runs, the
        # clock moves past the workflow's timer (another task ran in between)
        nonlocal moved
        name = getattr(coro, "__qualname__", "")
        if not moved and e.stats.unloads == 1 and name in ("FakeClock.sleep", "sleep_until"):
            moved = True
            clock.advance(3601)
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(factory)
    try:
        h = await e.start(wf)
        assert await h.result(timeout=WAIT) == "woke"
        assert moved
    finally:
        loop.set_task_factory(None)


async def test_an_event_sent_while_an_unload_is_written_wakes_the_workflow(
    make: EngineFactory, gated: GatedStore, clock: FakeClock
) -> None:
    e = await make(waits_for_go)
    parked = Parked(e, clock)
    gate = gated.gate("commit", unload)
    h = await e.start(waits_for_go)
    clock.advance(2)
    await gate.reached.wait()  # the unload is decided, its write is in flight
    await h.signal("go", "late")  # the poller finds it still owned: nothing to claim yet
    await until(parked)
    gate.open()  # the release commits with the inbox moved: ready now, and the poller is told
    assert await h.result(timeout=WAIT) == "late"
    assert e.stats.loads == 1


async def test_a_cancel_sent_while_a_releasing_transition_is_written_is_not_lost(
    make: EngineFactory, gated: GatedStore, clock: FakeClock
) -> None:
    async def step() -> int:
        return 1

    async def wf(ctx: WorkflowContext, seconds: float) -> None:
        await ctx.activity(step)
        await ctx.sleep(seconds)  # far: the transition that records it releases the workflow

    e = await make(wf)
    parked = Parked(e, clock)
    await e.start(wf, 100.0)  # another sleeper, due earlier: the poller knows a nearer wake-up
    await until(lambda: e.stats.unloads == 1)
    await until(parked)
    gate = gated.gate("commit", lambda t: t.workflow_id == "c" and t.release and bool(t.batches))
    h = await e.start(wf, 3600.0, id="c")
    await gate.reached.wait()
    assert await h.cancel("stop")  # must not be fed to the copy that is leaving memory
    await until(parked)
    gate.open()
    with pytest.raises(WorkflowCancelled, match="stop"):
        await h.result(timeout=WAIT)


async def test_an_event_sent_while_a_claimed_workflow_loads_is_handed_over(
    make: EngineFactory, gated: GatedStore, clock: FakeClock
) -> None:
    async def wf(ctx: WorkflowContext) -> list[Any]:
        return [await ctx.wait_event("a"), await ctx.wait_event("b")]

    e = await make(wf)
    parked = Parked(e, clock)
    h = await e.start(wf)
    clock.advance(2)
    await until(lambda: e.stats.unloads == 1)
    gate = gated.gate("load")
    await h.signal("a", 1)  # wakes it: claimed, and its snapshot (with "a") is read
    await gate.reached.wait()
    await h.signal("b", 2)  # posted after the snapshot, before the workflow is hot
    await until(parked)
    gate.open()
    assert await h.result(timeout=WAIT) == [1, 2]


async def test_a_child_ending_wakes_its_unloaded_parent(
    make: EngineFactory, clock: FakeClock
) -> None:
    release = asyncio.Event()

    async def slow() -> int:
        await release.wait()
        return 7

    async def kid(ctx: WorkflowContext) -> int:
        return await ctx.activity(slow)

    async def dad(ctx: WorkflowContext) -> int:
        return await ctx.child(kid, id="kid") + 1

    e = await make(dad, kid)
    parked = Parked(e, clock)
    h = await e.start(dad)
    clock.advance(2)  # the parent, waiting for its child, unloads; the child works on
    await until(lambda: e.stats.unloads == 1)
    await until(parked)
    release.set()  # the child's end is posted to the parent's inbox in the store
    assert await h.result(timeout=WAIT) == 8


async def test_a_result_waiter_hears_an_end_that_happens_while_it_reads_the_status(
    make: EngineFactory, gated: GatedStore, clock: FakeClock
) -> None:
    e = await make(waits_for_go, poll_interval=3600.0)  # no re-check would come in time
    h = await e.start(waits_for_go)
    clock.advance(2)
    await until(lambda: e.stats.unloads == 1)  # not hot: result() reads the status
    gate = gated.gate("get")
    waiter = asyncio.get_running_loop().create_task(h.result(timeout=WAIT))
    await gate.reached.wait()  # it read "running" and is held before acting on it
    await h.signal("go", "done")
    await until(lambda: e.stats.ended == 1)
    gate.open()
    assert await waiter == "done"
    assert gated.calls["get"] == 1  # told of the end, not finding it by reading again later


async def test_a_block_is_counted_once_it_is_recorded(
    store: Store, gated: GatedStore, clock: FakeClock
) -> None:
    async def step() -> int:
        return 1

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.activity(step)
        await ctx.wait_event("go")

    async with Engine(store, workflows=[wf], clock=clock) as e1:
        h = await e1.start(wf, id="b1")
        await until(lambda: e1.stats.transitions == 2)

    async def changed(ctx: WorkflowContext) -> None:
        await ctx.sleep(1)

    e2 = Engine(cast(Store, gated), clock=clock)
    e2.register(changed, name=wf.__qualname__)
    gate = gated.gate("commit", lambda t: t.blocked is not None)
    async with e2:
        await gate.reached.wait()
        assert e2.stats.blocked == 0  # decided, not yet recorded
        gate.open()
        await until(lambda: e2.stats.blocked == 1)
        assert (await e2.get(h.id)).blocked is not None
