"""The replay machine, sans I/O: steps, replay, non-determinism, versioning, limits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import msgpack_encode
from garrison.durable import (
    ActivityError,
    ChildWorkflowError,
    FailureInfo,
    HistoryTooLong,
    Limits,
    NonDeterminismError,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowContext,
)
from garrison.durable._journal import (
    ActivityCompleted,
    ActivityFailed,
    Batch,
    CancelRequested,
    ChildCompleted,
    ChildFailed,
    EventReceived,
    Input,
    TimerFired,
    WaitTimedOut,
    decode_batch,
    encode_batch,
)
from garrison.durable._machine import (
    ActivityCommand,
    ChildCommand,
    Command,
    Machine,
    TimerCommand,
    WaitCommand,
)


def make(fn: Any, *args: Any, limits: Limits | None = None) -> Machine:
    return Machine(fn, args, workflow="wf", workflow_id="w1", run_id="r1", limits=limits)


def done(cmd: ActivityCommand) -> ActivityCompleted:
    value = cmd.fn(*cmd.args)
    return ActivityCompleted(cmd.step, cmd.name, msgpack_encode(value))


def run_all(m: Machine, at: float = 100.0) -> list[Batch]:
    """Drive a machine to its end, completing every activity/timer at once, one per batch."""
    batches = [m.advance(at)]
    pending: list[Command] = m.take_commands()
    while m.outcome is None:
        assert pending, "stuck"
        cmd = pending.pop(0)
        if isinstance(cmd, ActivityCommand):
            item: Input = done(cmd)
        elif isinstance(cmd, TimerCommand):
            at = max(at, cmd.fire_at)
            item = TimerFired(cmd.step)
        else:
            raise AssertionError(cmd)
        batches.append(m.advance(at, [item]))
        pending += m.take_commands()
    return batches


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


async def two_steps(ctx: WorkflowContext, x: int) -> int:
    a = await ctx.activity(inc, x)
    return await ctx.activity(double, a)


def test_activities_run_in_order_and_replay_returns_recorded_results() -> None:
    m = make(two_steps, 3)
    batches = run_all(m)
    assert m.outcome is not None
    assert m.outcome.status == "completed"
    assert m.outcome.result == msgpack_encode(8)
    r = make(two_steps, 3)
    r.replay([decode_batch(encode_batch(b)) for b in batches])
    assert r.outcome is not None
    assert r.outcome.result == msgpack_encode(8)
    assert r.take_commands()[0].step == 1  # replay re-issues, the engine skips resolved ones
    assert r.pending_commands() == []


def test_a_partial_history_resumes_with_the_pending_step() -> None:
    m = make(two_steps, 3)
    b0 = m.advance(1.0)
    (c1,) = m.take_commands()
    assert isinstance(c1, ActivityCommand)
    b1 = m.advance(2.0, [done(c1)])
    r = make(two_steps, 3)
    r.replay([b0, b1])
    (pending,) = r.pending_commands()
    assert isinstance(pending, ActivityCommand)
    assert (pending.step, pending.name, pending.args) == (2, "double", (4,))


def test_a_changed_step_is_a_non_determinism_error_naming_workflow_step_and_difference() -> None:
    m = make(two_steps, 3)
    batches = run_all(m)

    async def changed(ctx: WorkflowContext, x: int) -> int:
        a = await ctx.activity(inc, x)
        return await ctx.activity(inc, a)  # was double

    r = make(changed, 3)
    with pytest.raises(NonDeterminismError) as err:
        r.replay(batches)
    assert err.value.step == 2
    assert "'wf'" in str(err.value)
    assert "w1" in str(err.value)
    assert "activity 'double'" in str(err.value)
    assert "activity 'inc'" in str(err.value)


def test_a_removed_step_and_an_early_return_are_non_determinism_errors() -> None:
    batches = run_all(make(two_steps, 3))

    async def shorter(ctx: WorkflowContext, x: int) -> int:
        return await ctx.activity(inc, x)

    with pytest.raises(NonDeterminismError, match="code ended"):
        make(shorter, 3).replay(batches)

    async def swapped(ctx: WorkflowContext, x: int) -> int:
        await ctx.sleep(1)
        return 0

    with pytest.raises(NonDeterminismError, match="step 1"):
        make(swapped, 3).replay(batches)


def test_user_code_cannot_swallow_a_non_determinism_error() -> None:
    batches = run_all(make(two_steps, 3))

    async def sneaky(ctx: WorkflowContext, x: int) -> int:
        try:
            await ctx.activity(double, x)
        except Exception:
            return 2
        return 1

    with pytest.raises(NonDeterminismError):
        make(sneaky, 3).replay(batches)


def test_time_random_and_uuid_are_deterministic() -> None:
    seen: list[Any] = []

    async def wf(ctx: WorkflowContext) -> None:
        seen.append((ctx.now(), ctx.time(), ctx.random().random(), ctx.uuid()))
        await ctx.sleep(5)
        seen.append((ctx.now(), ctx.random().randint(0, 10**9), ctx.uuid()))

    m = make(wf)
    batches = run_all(m, at=1_700_000_000.0)
    first = list(seen)
    seen.clear()
    make(wf).replay(batches)
    assert seen == first
    assert first[1][0].timestamp() == 1_700_000_005.0
    assert first[0][3].version == 4


def test_sleep_accepts_timedelta_and_rejects_negative() -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.sleep(timedelta(days=2))

    m = make(wf)
    m.advance(10.0)
    (cmd,) = m.take_commands()
    assert isinstance(cmd, TimerCommand)
    assert cmd.fire_at == 10.0 + 2 * 86400

    async def bad(ctx: WorkflowContext) -> None:
        await ctx.sleep(-1)

    m = make(bad)
    m.advance(0.0)
    assert m.outcome is not None
    assert m.outcome.status == "failed"


def test_activity_failure_raises_activity_error_with_details_on_first_run_and_replay() -> None:
    caught: list[ActivityError] = []

    async def wf(ctx: WorkflowContext) -> str:
        try:
            await ctx.activity(inc, 1)
        except ActivityError as exc:
            caught.append(exc)
            return "handled"
        return "no"

    fail = FailureInfo("ValueError", "boom", "Traceback ...")
    m = make(wf)
    b = [m.advance(0.0)]
    b.append(m.advance(1.0, [ActivityFailed(1, "inc", fail, 3)]))
    assert m.outcome is not None
    assert m.outcome.result == msgpack_encode("handled")
    make(wf).replay(b)
    assert len(caught) == 2
    for exc in caught:
        assert exc.attempts == 3
        assert exc.step == 1
        assert exc.failure is not None
        assert exc.failure == fail
        assert "ValueError: boom" in str(exc)


def test_an_unhandled_error_fails_the_run_with_type_message_and_traceback() -> None:
    async def wf(ctx: WorkflowContext) -> None:
        await ctx.sleep(1)
        raise KeyError("missing")

    m = make(wf)
    run_all(m)
    assert m.outcome is not None
    assert m.outcome.status == "failed"
    f = m.outcome.failure
    assert f is not None
    assert f.type == "KeyError"
    assert "missing" in f.message
    assert "raise KeyError" in f.traceback


def test_wait_event_gets_payload_or_times_out() -> None:
    got: list[Any] = []

    async def wf(ctx: WorkflowContext) -> None:
        got.append(await ctx.wait_event("go", type=int))
        try:
            await ctx.wait_event("never", timeout=10)
        except WaitTimeout as exc:
            got.append(isinstance(exc, TimeoutError))

    m = make(wf)
    m.advance(0.0)
    (w1,) = m.take_commands()
    assert isinstance(w1, WaitCommand)
    assert (w1.name, w1.deadline) == ("go", None)
    m.advance(1.0, [EventReceived(1, "go", msgpack_encode(7))])
    (w2,) = m.take_commands()
    assert isinstance(w2, WaitCommand)
    assert w2.deadline == 11.0
    m.advance(11.0, [WaitTimedOut(2, "never")])
    assert got == [7, True]
    assert m.outcome is not None
    assert m.outcome.status == "completed"


@dataclass
class Receipt:
    order: str
    amount: float


async def child_wf(ctx: WorkflowContext, order: str) -> Receipt:
    return Receipt(order, 1.5)


def test_child_results_are_decoded_with_the_child_annotation_and_failures_raise() -> None:
    got: list[Any] = []

    async def wf(ctx: WorkflowContext) -> None:
        got.append(await ctx.child(child_wf, "o1"))
        try:
            await ctx.child(child_wf, "o2", id="fixed")
        except ChildWorkflowError as exc:
            got.append((exc.status, exc.child_id))

    m = make(wf)
    m.advance(0.0)
    (c1,) = m.take_commands()
    assert isinstance(c1, ChildCommand)
    assert c1.child_id == "w1:r1:1"
    assert c1.workflow == "child_wf"
    res = msgpack_encode(Receipt("o1", 1.5))
    m.advance(1.0, [ChildCompleted(1, "child_wf", c1.child_id, res)])
    (c2,) = m.take_commands()
    assert isinstance(c2, ChildCommand)
    assert c2.child_id == "fixed"
    m.advance(2.0, [ChildFailed(2, "child_wf", "fixed", "cancelled", None)])
    assert got == [Receipt("o1", 1.5), ("cancelled", "fixed")]


def test_cancellation_is_raised_where_the_workflow_waits_and_may_be_handled() -> None:
    async def wf(ctx: WorkflowContext) -> None:
        try:
            await ctx.sleep(100)
        except WorkflowCancelled:
            await ctx.activity(inc, 0)  # compensation: a new step after the cancellation
            raise

    m = make(wf)
    m.advance(0.0)
    m.take_commands()
    m.advance(1.0, [CancelRequested("operator")])
    (comp,) = m.take_commands()
    assert isinstance(comp, ActivityCommand)
    assert comp.step == 2
    m.advance(2.0, [done(comp)])
    assert m.outcome is not None
    assert m.outcome.status == "cancelled"


def test_continue_as_new_ends_the_run_with_new_arguments() -> None:
    async def wf(ctx: WorkflowContext, n: int) -> None:
        await ctx.sleep(1)
        ctx.continue_as_new(n + 1)

    m = make(wf, 1)
    run_all(m)
    assert m.outcome is not None
    assert m.outcome.status == "continued"
    assert m.outcome.args is not None


def test_version_markers_take_no_step_numbers_and_old_runs_get_the_default() -> None:
    async def v1(ctx: WorkflowContext) -> str:
        await ctx.activity(inc, 1)
        await ctx.sleep(1)
        return "v1"

    async def v2(ctx: WorkflowContext) -> str:
        await ctx.activity(inc, 1)
        if ctx.patched("extra-step"):
            await ctx.activity(double, 1)
        await ctx.sleep(1)
        return "v2" if ctx.version("ret", 0, 1) == 1 else "v2-old"

    # a run recorded under v1, up to its sleep, continues under v2 along the old path
    m = make(v1)
    b = [m.advance(0.0)]
    (a,) = m.take_commands()
    assert isinstance(a, ActivityCommand)
    b.append(m.advance(1.0, [done(a)]))
    r = make(v2)
    r.replay(b)
    (timer,) = r.pending_commands()
    assert isinstance(timer, TimerCommand)
    assert timer.step == 2
    r.advance(2.0, [TimerFired(2)])
    assert r.outcome is not None
    assert r.outcome.result == msgpack_encode("v2")  # "ret" reached after the change: new
    # a new run takes the new path and records its markers
    n = make(v2)
    batches = run_all(n)
    assert {k: v for b in batches for k, v in b.markers.items()} == {"extra-step": 1, "ret": 1}
    assert n.steps == 3
    make(v2).replay(batches)


def test_a_version_no_longer_supported_is_a_non_determinism_error() -> None:
    async def old(ctx: WorkflowContext) -> None:
        await ctx.sleep(1)

    async def new(ctx: WorkflowContext) -> None:
        ctx.version("c1", 1, 2)
        await ctx.sleep(1)

    m = make(old)
    b = [m.advance(0.0)]
    with pytest.raises(NonDeterminismError, match="'c1' is at version 0"):
        make(new).replay(b)


def test_awaiting_a_non_durable_awaitable_fails_the_run_clearly() -> None:
    import asyncio

    async def wf(ctx: WorkflowContext) -> None:
        await asyncio.sleep(0)

    m = make(wf)
    m.advance(0.0)
    assert m.outcome is not None
    assert m.outcome.failure is not None
    assert "ctx.sleep" in m.outcome.failure.message


def test_history_and_payload_limits_fail_with_clear_errors() -> None:
    async def loop(ctx: WorkflowContext) -> None:
        while True:
            await ctx.sleep(1)

    m = make(loop, limits=Limits(max_steps=3))
    run_all(m)
    assert m.outcome is not None
    assert m.outcome.failure is not None
    assert m.outcome.failure.type == "garrison.durable._errors.HistoryTooLong"
    assert "continue_as_new" in m.outcome.failure.message

    async def big(ctx: WorkflowContext) -> str:
        return "x" * 2000

    m = make(big, limits=Limits(max_payload_bytes=1000))
    m.advance(0.0)
    assert m.outcome is not None
    assert m.outcome.failure is not None
    assert "PayloadTooLarge" in m.outcome.failure.type
    assert "over the limit of 1,000 bytes" in m.outcome.failure.message
    assert issubclass(HistoryTooLong, Exception)


# -- gather ---------------------------------------------------------------------------------------


async def fan(ctx: WorkflowContext, n: int) -> list[int]:
    async def branch(i: int) -> int:
        a = await ctx.activity(inc, i)
        b = await ctx.activity(double, a)
        return a + b

    out = await ctx.gather(*(branch(i) for i in range(n)), ctx.activity(inc, 100))
    return [*out, await ctx.activity(inc, sum(out))]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_interleaving_of_gathered_completions_replays_identically(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 4), label="branches")
    m = make(fan, n)
    batches = [m.advance(0.0)]
    pending = {c.step: c for c in m.take_commands()}
    issued = sorted(pending)
    t = 0.0
    while m.outcome is None:
        steps = sorted(pending)
        k = data.draw(st.integers(1, len(steps)), label="batch size")
        chosen = data.draw(st.permutations(steps), label="order")[:k]
        t += 1
        items: list[Input] = []
        for s in chosen:
            cmd = pending.pop(s)
            assert isinstance(cmd, ActivityCommand)
            items.append(done(cmd))
        batches.append(m.advance(t, items))
        for c in m.take_commands():
            pending[c.step] = c
            issued.append(c.step)
    assert m.outcome.status == "completed"
    expected = [(i + 1) * 3 for i in range(n)] + [101]
    assert m.outcome.result == msgpack_encode([*expected, sum(expected) + 1])
    r = make(fan, n)
    r.replay([decode_batch(encode_batch(b)) for b in batches])
    assert r.outcome is not None
    assert r.outcome.result == m.outcome.result
    assert r.steps == m.steps == len(issued)


def test_gather_raises_the_first_error_or_returns_them() -> None:
    fail = FailureInfo("ValueError", "x")

    async def wf(ctx: WorkflowContext) -> list[Any]:
        res = await ctx.gather(ctx.activity(inc, 1), ctx.activity(inc, 2), return_exceptions=True)
        return [type(r).__name__ for r in res]

    m = make(wf)
    m.advance(0.0)
    m.take_commands()
    m.advance(1.0, [ActivityFailed(2, "inc", fail, 1), ActivityCompleted(1, "inc", b"\x02")])
    assert m.outcome is not None
    assert m.outcome.result == msgpack_encode(["int", "ActivityError"])

    async def strict(ctx: WorkflowContext) -> None:
        await ctx.gather(ctx.activity(inc, 1), ctx.activity(inc, 2))

    m = make(strict)
    m.advance(0.0)
    m.advance(1.0, [ActivityFailed(2, "inc", fail, 1)])
    assert m.outcome is not None
    assert m.outcome.status == "failed"
    assert m.outcome.failure is not None
    assert m.outcome.failure.type == "garrison.durable._errors.ActivityError"
