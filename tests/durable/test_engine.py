"""The engine on each store, time driven by a FakeClock: every step kind end to end."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from garrison.core import FakeClock, UsageError
from garrison.durable import (
    ActivityError,
    ChildWorkflowError,
    Engine,
    LeaseLost,
    PayloadTooLarge,
    Saga,
    Status,
    Store,
    WorkflowCancelled,
    WorkflowContext,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTerminated,
    activity,
    activity_info,
)
from garrison.durable._stores.base import Transition
from garrison.resilience import RetryPolicy

from .conftest import WAIT, EngineFactory, advance, drain, until

NO_WAIT = RetryPolicy(max_attempts=3, initial_backoff=0.0, max_backoff=0.0, retry_on=(Exception,))
calls: list[Any] = []


@pytest.fixture(autouse=True)
def _reset() -> None:
    calls.clear()


async def record(x: Any) -> Any:
    calls.append((activity_info().idempotency_key, x))
    return x


@dataclass
class Order:
    id: str
    qty: int


async def make_order(oid: str) -> Order:
    return Order(oid, 2)


async def ordering(ctx: WorkflowContext, oid: str) -> int:
    order = await ctx.activity(make_order, oid)
    assert isinstance(order, Order)  # decoded with the annotation, first run and replay alike
    await ctx.activity(record, order.id)
    return order.qty


async def test_start_run_and_result(make_engine: EngineFactory) -> None:
    e = await make_engine(ordering)
    h = await e.start(ordering, "o1", id="order-1")
    assert await h.result(timeout=WAIT) == 2
    info = await h.status()
    assert info.status == Status.COMPLETED
    assert info.steps == 2
    assert calls == [("order-1:2", "o1")]
    assert e.stats.loads == 0  # ran hot from the start: nothing replayed


async def test_start_is_idempotent_by_id(make_engine: EngineFactory) -> None:
    e = await make_engine(ordering)
    h1 = await e.start(ordering, "o1", id="same")
    h2 = await e.start(ordering, "o2", id="same")
    assert h1.id == h2.id
    assert h1.created
    assert not h2.created  # the handle tells a repeated start from the first
    assert not e.handle("same").created
    assert await h2.result(timeout=WAIT) == 2
    assert calls == [("same:2", "o1")]
    assert e.stats.started == 1


async def test_starting_an_id_taken_by_another_workflow_is_an_error(
    make_engine: EngineFactory,
) -> None:
    async def other(ctx: WorkflowContext) -> None:
        return None

    e = await make_engine(ordering, other)
    await e.start(ordering, "o1", id="x")
    with pytest.raises(UsageError, match="taken by an instance of 'ordering'"):
        await e.start(other, id="x")


async def test_activity_retries_with_the_policy_and_fails_with_details(
    make_engine: EngineFactory,
) -> None:
    attempts: list[int] = []

    async def flaky(n: int) -> str:
        attempts.append(activity_info().attempt)
        if len(attempts) < n:
            raise ConnectionError("down")
        return "ok"

    async def wf(ctx: WorkflowContext, n: int) -> str:
        return await ctx.activity(flaky, n, retry=NO_WAIT)

    e = await make_engine(wf)
    assert await (await e.start(wf, 3)).result(timeout=WAIT) == "ok"
    assert attempts == [1, 2, 3]
    attempts.clear()
    h = await e.start(wf, 10)
    with pytest.raises(WorkflowFailed) as err:
        await h.result(timeout=WAIT)
    assert attempts == [1, 2, 3]
    f = err.value.failure
    assert f is not None
    assert f.type == "garrison.durable._errors.ActivityError"
    assert f.cause is not None
    assert f.cause.type == "ConnectionError"
    assert "raise ConnectionError" in f.cause.traceback
    assert (await h.status()).failure == f


async def test_usage_errors_and_retry_none_are_not_retried(make_engine: EngineFactory) -> None:
    n = 0

    async def bad() -> None:
        nonlocal n
        n += 1
        raise UsageError("wrong input")

    async def wf(ctx: WorkflowContext) -> str:
        attempts = 0
        try:
            await ctx.activity(bad, retry=NO_WAIT)
        except ActivityError as exc:
            attempts = exc.attempts
        assert attempts == 1
        try:
            await ctx.activity(bad, retry=None)
        except ActivityError:
            return "handled"
        return "no"

    e = await make_engine(wf)
    assert await (await e.start(wf)).result(timeout=WAIT) == "handled"
    assert n == 2


async def test_activity_timeout_is_retried_then_fails(make_engine: EngineFactory) -> None:
    async def slow() -> None:
        await asyncio.sleep(10)

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.activity(slow, timeout=0.01, retry=NO_WAIT)

    e = await make_engine(wf)
    with pytest.raises(WorkflowFailed, match="3 attempt"):
        await (await e.start(wf)).result(timeout=WAIT)


async def test_sync_activities_run_in_a_thread(make_engine: EngineFactory) -> None:
    import threading

    main = threading.get_ident()

    def blocking(x: int) -> bool:
        return threading.get_ident() != main and activity_info().step == 1 and x == 1

    async def wf(ctx: WorkflowContext) -> bool:
        return await ctx.activity(blocking, 1)

    e = await make_engine(wf)
    assert await (await e.start(wf)).result(timeout=WAIT) is True


async def test_a_long_sleep_unloads_and_resumes_by_replay_when_due(
    make_engine: EngineFactory, clock: FakeClock
) -> None:
    async def wf(ctx: WorkflowContext) -> float:
        await ctx.activity(record, "before")
        t0 = ctx.time()
        await ctx.sleep(3 * 86400)
        await ctx.activity(record, "after")
        return ctx.time() - t0

    e = await make_engine(wf)
    h = await e.start(wf, id="sleeper")
    await until(lambda: e.stats.unloads == 1)
    assert "sleeper" not in e.runner.live  # unloaded: costs the store, not RAM
    info = await h.status()
    assert info.owner is None
    assert info.ready_at == pytest.approx(clock.time() + 3 * 86400)
    await advance(clock, 3 * 86400 - 10)
    assert (await h.status()).status == Status.RUNNING
    await advance(clock, 20)
    assert await h.result(timeout=WAIT) == pytest.approx(3 * 86400 + 10, abs=11)
    assert [c[1] for c in calls] == ["before", "after"]  # "before" did not run again
    assert e.stats.loads == 1
    assert e.stats.replayed_batches >= 2


async def test_a_short_sleep_stays_hot(make_engine: EngineFactory, clock: FakeClock) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        await ctx.sleep(1)
        return "done"

    e = await make_engine(wf)
    h = await e.start(wf)
    await drain()
    assert h.id in e.runner.live
    await advance(clock, 1.5)
    assert await h.result(timeout=WAIT) == "done"
    assert e.stats.loads == 0


async def test_many_sleeping_workflows_live_in_the_store(
    make_engine: EngineFactory, clock: FakeClock
) -> None:
    async def wf(ctx: WorkflowContext, i: int) -> int:
        await ctx.sleep(3600)
        return i

    e = await make_engine(wf)
    hs = [await e.start(wf, i) for i in range(200)]
    await until(lambda: e.stats.unloads == 200)
    assert len(e.runner.live) == 0
    await advance(clock, 3601)
    assert [await h.result(timeout=WAIT) for h in hs] == list(range(200))


async def test_events_sent_before_the_wait_are_kept_in_order(
    make_engine: EngineFactory, clock: FakeClock
) -> None:
    async def wf(ctx: WorkflowContext) -> list[Any]:
        await ctx.sleep(10)
        return [await ctx.wait_event("e"), await ctx.wait_event("e"), await ctx.wait_event("e")]

    e = await make_engine(wf)
    h = await e.start(wf)
    await h.signal("e", 1)
    await h.signal("e", {"two": 2})
    await advance(clock, 11)
    await h.signal("e", [3])
    assert await h.result(timeout=WAIT) == [1, {"two": 2}, [3]]


async def test_wait_event_times_out(make_engine: EngineFactory, clock: FakeClock) -> None:
    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.wait_event("approve", timeout=3600)
        except TimeoutError:
            return "timed out"
        return "approved"

    e = await make_engine(wf)
    h = await e.start(wf)
    await advance(clock, 10)  # idle with an event wait: unloaded after idle_unload
    await advance(clock, 3600)
    assert await h.result(timeout=WAIT) == "timed out"


async def test_an_event_wakes_an_unloaded_workflow(
    make_engine: EngineFactory, clock: FakeClock
) -> None:
    async def wf(ctx: WorkflowContext) -> Any:
        await ctx.activity(record, 1)
        return await ctx.wait_event("go")

    e = await make_engine(wf, idle_unload=1.0)
    h = await e.start(wf)
    await until(lambda: e.stats.transitions == 2)  # the activity's result is committed
    await advance(clock, 2)
    await until(lambda: e.stats.unloads == 1)
    await h.signal("go", "payload")
    assert await h.result(timeout=WAIT) == "payload"
    assert e.stats.loads == 1
    assert len(calls) == 1


async def test_signals_to_unknown_or_ended_workflows_are_errors(
    make_engine: EngineFactory,
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        return None

    e = await make_engine(wf)
    with pytest.raises(WorkflowNotFound):
        await e.signal("nope", "x")
    h = await e.start(wf)
    await h.result(timeout=WAIT)
    with pytest.raises(UsageError, match="has ended"):
        await h.signal("x")
    with pytest.raises(PayloadTooLarge):
        await e.signal(h.id, "x", "y" * (3 * 1024 * 1024))


async def child(ctx: WorkflowContext, n: int) -> int:
    v = await ctx.activity(record, n)
    if v < 0:
        raise ValueError("negative")
    return v * 10


async def parent(ctx: WorkflowContext, ns: list[int]) -> list[Any]:
    out: list[Any] = []
    for r in await ctx.gather(*(ctx.child(child, n) for n in ns), return_exceptions=True):
        out.append(r if not isinstance(r, ChildWorkflowError) else r.status)
    return out


async def test_children_run_and_report_back(make_engine: EngineFactory) -> None:
    e = await make_engine(parent, child)
    h = await e.start(parent, [1, 2, -1])
    assert await h.result(timeout=WAIT) == [10, 20, "failed"]
    kids = await e.list(parent_id=h.id)
    assert len(kids) == 3
    assert {k.status for k in kids} == {Status.COMPLETED, Status.FAILED}


async def test_a_child_with_an_existing_id_that_has_ended_reports_at_once(
    make_engine: EngineFactory,
) -> None:
    async def p(ctx: WorkflowContext) -> int:
        return await ctx.child(child, 5, id="shared-child")

    e = await make_engine(p, child)
    assert await (await e.start(child, 5, id="shared-child")).result(timeout=WAIT) == 50
    assert await (await e.start(p)).result(timeout=WAIT) == 50
    assert len(calls) == 1


async def test_cancel_runs_compensation_then_ends_cancelled(
    make_engine: EngineFactory, clock: FakeClock
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        async with Saga(ctx) as saga:
            await ctx.activity(record, "book")
            saga.add(record, "unbook")
            await ctx.wait_event("never")

    e = await make_engine(wf)
    h = await e.start(wf)
    await until(lambda: len(calls) == 1)
    assert await h.cancel("user asked")
    with pytest.raises(WorkflowCancelled, match="user asked"):
        await h.result(timeout=WAIT)
    assert [c[1] for c in calls] == ["book", "unbook"]
    assert (await h.status()).status == Status.CANCELLED
    assert not await h.cancel()


async def test_saga_compensates_in_reverse_on_failure(make_engine: EngineFactory) -> None:
    async def fail(x: str) -> None:
        raise RuntimeError(x)

    async def wf(ctx: WorkflowContext) -> None:
        async with Saga(ctx) as saga:
            for step in ("a", "b", "c"):
                await ctx.activity(record, step)
                saga.add(record, f"undo-{step}")
            await ctx.activity(fail, "card declined", retry=None)

    e = await make_engine(wf)
    with pytest.raises(WorkflowFailed, match="card declined"):
        await (await e.start(wf)).result(timeout=WAIT)
    assert [c[1] for c in calls] == ["a", "b", "c", "undo-c", "undo-b", "undo-a"]


async def test_terminate_ends_at_once_and_fences_the_owner(
    make_engine: EngineFactory, store: Store
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.wait_event("never")

    e = await make_engine(wf)
    h = await e.start(wf)
    epoch = (await h.status()).epoch
    assert await h.terminate("stuck")
    with pytest.raises(WorkflowTerminated, match="stuck"):
        await h.result(timeout=WAIT)
    assert not await h.terminate()
    with pytest.raises(LeaseLost):  # a write from the old owner is rejected
        await store.commit(Transition(workflow_id=h.id, epoch=epoch, now=0.0, first_seq=1))


async def test_continue_as_new_loops_with_a_fresh_history(make_engine: EngineFactory) -> None:
    async def counter(ctx: WorkflowContext, n: int) -> int:
        await ctx.activity(record, n)
        if n < 5:
            ctx.continue_as_new(n + 1)
        return n

    e = await make_engine(counter)
    h = await e.start(counter, 1, id="loop")
    assert await h.result(timeout=WAIT) == 5
    info = await h.status()
    assert info.runs == 5
    assert info.steps == 1
    assert len((await h.history()).batches) == 2
    keys = [c[0] for c in calls]
    assert keys == ["loop:1", "loop:2:1", "loop:3:1", "loop:4:1", "loop:5:1"]


async def test_result_of_a_failed_workflow_carries_type_message_traceback(
    make_engine: EngineFactory,
) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        raise LookupError("no such device")

    e = await make_engine(wf)
    h = await e.start(wf)
    with pytest.raises(WorkflowFailed) as err:
        await h.result(timeout=WAIT)
    f = err.value.failure
    assert f is not None
    assert (f.type, f.message) == ("LookupError", "no such device")
    assert 'raise LookupError("no such device")' in f.traceback


async def test_list_filters_instances(make_engine: EngineFactory, clock: FakeClock) -> None:
    async def quick(ctx: WorkflowContext) -> None:
        return None

    async def waiting(ctx: WorkflowContext) -> None:
        await ctx.wait_event("x")

    e = await make_engine(quick, waiting)
    for i in range(3):
        await (await e.start(quick, id=f"q{i}")).result(timeout=WAIT)
    await advance(clock, 10)
    await e.start(waiting, id="w0")
    assert {i.id for i in await e.list(status="completed")} == {"q0", "q1", "q2"}
    assert [i.id for i in await e.list(workflow=waiting)] == ["w0"]
    assert [i.id for i in await e.list(status=Status.RUNNING)] == ["w0"]
    assert len(await e.list(limit=2)) == 2
    assert [i.id for i in await e.list(created_after=clock.time() - 1)] == ["w0"]
    assert [i.id for i in await e.list(id_prefix="q1")] == ["q1"]


async def test_cron_schedules_start_one_instance_per_fire_time(
    make_engine: EngineFactory, clock: FakeClock
) -> None:
    async def tick(ctx: WorkflowContext, label: str) -> str:
        return label

    e = await make_engine(tick)
    s = await e.schedule("every-5", "*/5 * * * *", tick, "hello")
    assert s.next_at > clock.time()
    await advance(clock, s.next_at - clock.time() + 1)
    await until(lambda: e.stats.ended == 1)
    await advance(clock, 300)
    await until(lambda: e.stats.ended == 2)
    runs = await e.list(workflow=tick)
    assert len(runs) == 2
    assert all(r.id.startswith("every-5@") for r in runs)
    assert await e.unschedule("every-5")
    assert await e.schedules() == []


async def test_workflows_not_registered_are_refused(make_engine: EngineFactory) -> None:
    e = await make_engine()
    with pytest.raises(Exception, match="no workflow named 'ordering'"):
        await e.start(ordering, "x")


async def test_a_client_engine_enqueues_and_a_worker_runs(store: Store, clock: FakeClock) -> None:
    client = Engine(store, workflows=[ordering], worker=False, clock=clock)
    worker = Engine(store, workflows=[ordering], clock=clock)
    await client.open()
    h = await client.start(ordering, "o9", id="remote")
    assert (await h.status()).owner is None
    async with worker:
        await worker.open()
        worker.kick()
        assert await worker.handle("remote").result(timeout=WAIT) == 2
    await client.close()


async def test_close_releases_and_a_new_engine_recovers(store: Store, clock: FakeClock) -> None:
    gate = asyncio.Event()

    async def blocked() -> str:
        await gate.wait()
        return "through"

    async def wf(ctx: WorkflowContext) -> str:
        await ctx.activity(record, "first")
        return await ctx.activity(blocked)

    e1 = Engine(store, workflows=[wf], clock=clock)
    await e1.open()
    h = await e1.start(wf, id="recover-me")
    # "first" ran and its result is committed (not merely returned: a close before that commit
    # would rightly run it again)
    await until(lambda: e1.stats.transitions == 2)
    await e1.close()
    assert (await store.get("recover-me")) is not None
    gate.set()
    async with Engine(store, workflows=[wf], clock=clock) as e2:
        assert await e2.handle(h.id).result(timeout=WAIT) == "through"
        assert e2.stats.loads == 1
    assert [c[1] for c in calls] == ["first"]  # its committed step did not run again


async def test_a_changed_workflow_is_blocked_not_failed(store: Store, clock: FakeClock) -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.activity(record, 1)
        await ctx.wait_event("go")

    async with Engine(store, workflows=[wf], clock=clock) as e1:
        h = await e1.start(wf, id="b1")
        await until(lambda: e1.stats.transitions == 2)  # the activity's result is committed

    async def wf2(ctx: WorkflowContext) -> None:  # a changed version of wf
        await ctx.sleep(1)
        await ctx.wait_event("go")

    e2 = Engine(store, clock=clock)
    stored = await store.get("b1")
    assert stored is not None
    e2.register(wf2, name=stored.workflow)
    async with e2:
        reports = await e2.replay_check()
        assert [r.ok for r in reports] == [False]
        assert reports[0].step == 1
        e2.kick()

        async def recorded() -> bool:  # the block is a store write: wait for it, not a counter
            return (await e2.get(h.id)).blocked is not None

        await until(recorded)
        info = await e2.get(h.id)
        assert info.status == Status.RUNNING
        assert info.blocked is not None
        assert "step 1" in info.blocked
        assert e2.stats.blocked == 1


async def test_replay_check_passes_for_unchanged_code(make_engine: EngineFactory) -> None:
    from garrison.durable import replay_check

    async def wf(ctx: WorkflowContext) -> None:
        await ctx.activity(record, 1)
        await ctx.wait_event("go")

    e = await make_engine(wf)
    h = await e.start(wf)
    await until(lambda: e.stats.transitions == 2)
    report = replay_check(wf, await h.history())
    assert report.ok
    assert (report.steps, report.ended) == (2, None)
    assert [r.ok for r in await e.replay_check()] == [True]


def test_engine_config_is_validated() -> None:
    from garrison.core import ConfigError
    from garrison.durable import EngineConfig, Limits

    with pytest.raises(ConfigError, match="lease_seconds"):
        EngineConfig(lease_seconds=0)
    with pytest.raises(ConfigError, match="max_steps"):
        Limits(max_steps=0)


async def test_an_engine_must_be_open(store: Store) -> None:
    e = Engine(store, workflows=[ordering])
    with pytest.raises(UsageError, match="not open"):
        await e.start(ordering, "x")


# --- @activity: options attached to the function -------------------------------------------

_decorated_calls: list[str] = []


@activity(retry={"max_attempts": 4, "initial_backoff": 0.001, "max_backoff": 0.001}, name="flaky")
async def _flaky_decorated(n: int) -> int:
    _decorated_calls.append(activity_info().name)
    if len(_decorated_calls) < 3:
        raise RuntimeError("transient")
    return n * 2


async def _uses_decorated(ctx: WorkflowContext, n: int) -> int:
    return await ctx.activity(_flaky_decorated, n)


async def _overrides_decorated(ctx: WorkflowContext, n: int) -> int:
    return await ctx.activity(_flaky_decorated, n, retry=None)


async def test_activity_decorator_options_apply(store: Store) -> None:
    _decorated_calls.clear()
    async with Engine(store, workflows=[_uses_decorated]) as engine:
        handle = await engine.start(_uses_decorated, 21, id="deco-1")
        assert await handle.result() == 42
    assert _decorated_calls == ["flaky", "flaky", "flaky"]  # its own name, its own retry


async def test_activity_call_options_override_the_decorator(store: Store) -> None:
    _decorated_calls.clear()
    async with Engine(store, workflows=[_overrides_decorated]) as engine:
        handle = await engine.start(_overrides_decorated, 21, id="deco-2")
        with pytest.raises(WorkflowFailed):
            await handle.result()
    assert _decorated_calls == ["flaky"]  # retry=None at the call: one attempt


def test_activity_decorator_rejects_bad_options() -> None:
    with pytest.raises(UsageError, match="max_attemps"):
        activity(retry={"max_attemps": 3})
    with pytest.raises(UsageError, match="RetryPolicy"):
        activity(retry=3)  # type: ignore[call-overload]
    with pytest.raises(UsageError, match="timeout"):
        activity(timeout=0)
    with pytest.raises(UsageError, match="name"):
        activity(name="")
    assert _flaky_decorated.__name__ == "_flaky_decorated"  # returned unchanged
