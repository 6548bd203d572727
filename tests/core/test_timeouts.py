"""TimeoutWheel: never early, only the right task, outer cancellations kept, one lazy ticker.

Behaviour, not timings: a timeout must not fire before its time (checked against the monotonic
clock) and must fire eventually (checked with generous bounds), whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from garrison.core import TimeoutWheel, default_wheel

FOREVER = 3600.0
SOON = 0.03
"""A timeout short enough to wait for in a test."""
LATE = 5.0
"""A generous bound for 'it did fire': far above the wheel's 5 ms resolution."""


async def sleeps_forever() -> None:
    """Wait for a cancellation; a wheel that never sends one fails the test, not hangs it."""
    await asyncio.sleep(LATE * 4)
    pytest.fail("not cancelled: the timeout never fired")


async def expire(wheel: TimeoutWheel, seconds: float) -> float:
    """Wait in a scope of ``seconds`` until it fires; how long that took.

    A wheel that never fires fails the test after ``LATE`` seconds instead of hanging it.
    """
    start = time.monotonic()
    scope = wheel.timeout(seconds)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LATE), scope:
            await sleeps_forever()
    assert scope.expired, "the wheel did not fire"
    return time.monotonic() - start


def cancelling() -> int:
    """Cancellation requests pending on the current task (0 once every one was withdrawn)."""
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling()


# -- firing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.001, 0.01, SOON, 0.07])
async def test_a_timeout_fires_no_earlier_than_asked(seconds: float) -> None:
    wheel = TimeoutWheel()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        async with wheel.timeout(seconds) as scope:
            await sleeps_forever()
    elapsed = time.monotonic() - start
    assert seconds <= elapsed < LATE
    assert scope.expired
    assert wheel.fired == 1


async def test_a_scope_that_finishes_in_time_does_not_fire() -> None:
    wheel = TimeoutWheel()
    async with wheel.timeout(SOON) as scope:
        await asyncio.sleep(0)
    assert not scope.expired
    # Past the deadline, outside the scope: nothing is cancelled after the fact.
    await asyncio.sleep(SOON * 3)
    assert wheel.fired == 0
    assert cancelling() == 0


async def test_no_timeout_and_a_spent_one() -> None:
    wheel = TimeoutWheel()
    async with wheel.timeout(None) as scope:
        await asyncio.sleep(0.001)
    assert not scope.expired
    for spent in (0, -1.0):
        with pytest.raises(TimeoutError):
            async with wheel.timeout(spent):
                pytest.fail("a spent timeout must not run the block")


async def test_after_a_timeout_the_task_is_not_left_cancelling() -> None:
    # The wheel's cancellation is withdrawn (uncancel), so asyncio.timeout still works after.
    wheel = TimeoutWheel()
    with pytest.raises(TimeoutError):
        async with wheel.timeout(0.005):
            await sleeps_forever()
    assert cancelling() == 0
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.005):
            await sleeps_forever()
    await asyncio.sleep(0)  # and no stray cancellation is pending


async def test_an_error_raised_inside_the_scope_passes_through() -> None:
    wheel = TimeoutWheel()
    with pytest.raises(KeyError):
        async with wheel.timeout(FOREVER):
            raise KeyError("x")
    await asyncio.sleep(0)
    assert wheel.fired == 0


# -- cancellation from outside ---------------------------------------------------------------


async def test_an_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    wheel = TimeoutWheel()
    entered = asyncio.Event()

    async def victim() -> None:
        async with wheel.timeout(FOREVER):
            entered.set()
            await sleeps_forever()

    task = asyncio.create_task(victim())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wheel.fired == 0


async def test_an_outer_cancellation_wins_when_the_timeout_fires_too() -> None:
    # The outer cancellation arrives first; the block lingers until the wheel fires as well.
    # Both requests are on the task, so the scope must let CancelledError through.
    wheel = TimeoutWheel()
    entered = asyncio.Event()
    lingered = asyncio.Event()

    async def victim() -> None:
        async with wheel.timeout(SOON):
            entered.set()
            try:
                await sleeps_forever()
            except asyncio.CancelledError:
                try:
                    await asyncio.sleep(LATE)  # cut short by the wheel's own cancellation
                except asyncio.CancelledError:
                    lingered.set()
                raise

    task = asyncio.create_task(victim())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lingered.is_set()
    assert wheel.fired == 1


async def test_a_cancellation_from_elsewhere_inside_the_block_passes_through() -> None:
    wheel = TimeoutWheel()
    task = asyncio.current_task()
    assert task is not None

    async def cancelled_inside() -> None:
        async with wheel.timeout(FOREVER):
            task.cancel()  # delivered at the next await, inside the block
            await asyncio.sleep(0)

    with pytest.raises(asyncio.CancelledError):
        await cancelled_inside()
    assert task.uncancel() == 0  # the test's own request, now withdrawn


# -- nesting ---------------------------------------------------------------------------------


async def test_the_outer_scope_fires_through_a_longer_inner_one() -> None:
    wheel = TimeoutWheel()
    outer, inner = wheel.timeout(SOON), wheel.timeout(FOREVER)

    async def nested() -> None:
        async with outer, inner:
            await sleeps_forever()

    with pytest.raises(TimeoutError):
        await nested()
    assert outer.expired
    assert not inner.expired


async def test_the_inner_scope_fires_and_the_outer_one_carries_on() -> None:
    wheel = TimeoutWheel()
    async with wheel.timeout(FOREVER) as outer:
        with pytest.raises(TimeoutError):
            async with wheel.timeout(SOON) as inner:
                await sleeps_forever()
        await asyncio.sleep(0.001)  # the outer block is not cancelled
    assert inner.expired
    assert not outer.expired


async def test_nested_scopes_that_expire_together_raise_once_from_the_outer() -> None:
    wheel = TimeoutWheel()
    loop = asyncio.get_running_loop()
    at = loop.time() + SOON  # one deadline for both: the same bucket, the same tick
    caught_inside = False

    async def nested() -> None:
        nonlocal caught_inside
        async with wheel.timeout(at - loop.time()):
            try:
                async with wheel.timeout(at - loop.time()):
                    await sleeps_forever()
            except TimeoutError:
                caught_inside = True
                raise

    with pytest.raises(TimeoutError):
        await nested()
    # Both fired in the same tick: the cancellation belongs to both, and only the outermost,
    # the last to leave, may turn it into TimeoutError.
    assert wheel.fired == 2
    assert not caught_inside
    assert cancelling() == 0


# -- many tasks ------------------------------------------------------------------------------


async def test_concurrent_scopes_each_fire_for_their_own_task_only() -> None:
    wheel = TimeoutWheel()
    results: dict[int, tuple[str, float]] = {}

    async def call(i: int, seconds: float, work: float) -> None:
        start = time.monotonic()
        try:
            async with wheel.timeout(seconds):
                await asyncio.sleep(work)
            results[i] = ("done", time.monotonic() - start)
        except TimeoutError:
            results[i] = ("timeout", time.monotonic() - start)

    # Even: a short timeout and endless work; odd: plenty of time for short work.
    plans = {
        i: (0.01 + 0.005 * i, FOREVER) if i % 2 == 0 else (FOREVER, 0.02 + 0.005 * i)
        for i in range(20)
    }
    async with asyncio.timeout(LATE * 2):  # a wheel that never fires fails, not hangs
        await asyncio.gather(*(call(i, s, w) for i, (s, w) in plans.items()))
    for i, (seconds, work) in plans.items():
        outcome, elapsed = results[i]
        if i % 2 == 0:
            assert outcome == "timeout", i
            assert seconds <= elapsed < LATE, i
        else:
            assert outcome == "done", i
            assert work <= elapsed < LATE, i
    assert wheel.fired == 10


async def test_staggered_deadlines_each_fire_no_earlier_than_their_own() -> None:
    # Deadlines 1 ms apart share buckets and ticks: a tick that is due for one bucket must not
    # take the next one along.
    wheel = TimeoutWheel()
    seconds = [0.02 + 0.001 * i for i in range(24)]
    async with asyncio.timeout(LATE * 2):
        elapsed = await asyncio.gather(*(expire(wheel, s) for s in seconds))
    for s, took in zip(seconds, elapsed, strict=True):
        assert s <= took < LATE, s


async def test_a_timeout_does_not_cancel_a_task_that_already_finished() -> None:
    wheel = TimeoutWheel()

    async def quick() -> str:
        entry = wheel.enter(0.005)
        await asyncio.sleep(0)
        del entry  # finishes without leaving: the wheel must not touch a done task
        return "ok"

    assert await asyncio.create_task(quick()) == "ok"
    await asyncio.sleep(0.05)
    assert wheel.fired == 0


# -- the enter / leave pair ------------------------------------------------------------------


async def test_enter_and_leave_without_expiry() -> None:
    wheel = TimeoutWheel()
    entry = wheel.enter(FOREVER)
    await asyncio.sleep(0)
    assert wheel.leave(entry, False) is False
    assert wheel.fired == 0


async def test_enter_and_leave_on_expiry() -> None:
    wheel = TimeoutWheel()
    start = time.monotonic()
    entry = wheel.enter(SOON)
    try:
        await sleeps_forever()
    except asyncio.CancelledError:
        assert wheel.leave(entry, True) is True  # ours: the caller raises TimeoutError
    else:
        pytest.fail("the wheel did not cancel the task")
    assert time.monotonic() - start >= SOON
    assert cancelling() == 0


async def test_leave_says_no_when_the_cancellation_came_from_outside() -> None:
    wheel = TimeoutWheel()
    entered = asyncio.Event()
    verdicts: list[bool] = []

    async def victim() -> None:
        entry = wheel.enter(FOREVER)
        entered.set()
        try:
            await sleeps_forever()
        except asyncio.CancelledError:
            verdicts.append(wheel.leave(entry, True))
            raise

    task = asyncio.create_task(victim())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert verdicts == [False]


def test_enter_needs_a_task() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()

        def outside_any_task() -> None:
            try:
                TimeoutWheel().enter(1.0)
            except RuntimeError as exc:
                done.set_result(exc)
            else:
                done.set_result(None)

        loop.call_soon(outside_any_task)
        assert isinstance(await done, RuntimeError)

    asyncio.run(main())


def test_the_resolution_must_be_positive() -> None:
    for bad in (0, -0.005):
        with pytest.raises(ValueError, match="resolution"):
            TimeoutWheel(bad)


# -- the ticker ------------------------------------------------------------------------------


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that records what is scheduled with ``call_at``."""

    def __init__(self) -> None:
        super().__init__()
        self.scheduled: list[Callable[..., Any]] = []

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.scheduled.append(callback)
        return super().call_at(when, callback, *args, context=context)


def run_counting(main: Callable[[CountingLoop], Any]) -> None:
    loop = CountingLoop()
    try:
        loop.run_until_complete(main(loop))
    finally:
        loop.close()


def ticks(loop: CountingLoop, wheel: TimeoutWheel) -> int:
    return sum(1 for cb in loop.scheduled if cb == wheel._tick)


def test_the_ticker_stops_when_no_timeout_is_pending() -> None:
    async def main(loop: CountingLoop) -> None:
        wheel = TimeoutWheel()
        async with wheel.timeout(0.01):
            pass
        armed = ticks(loop, wheel)
        assert armed == 1  # armed once, for the scope's bucket
        await asyncio.sleep(0.1)  # the armed tick runs, finds nothing, and does not re-arm
        assert ticks(loop, wheel) == armed
        await expire(wheel, 0.01)  # and a later timeout starts it again
        assert ticks(loop, wheel) > armed
        await asyncio.sleep(0.1)
        settled = ticks(loop, wheel)
        await asyncio.sleep(0.1)
        assert ticks(loop, wheel) == settled

    run_counting(main)


def test_the_ticker_is_armed_once_for_many_timeouts_in_later_buckets() -> None:
    async def main(loop: CountingLoop) -> None:
        wheel = TimeoutWheel()
        async with wheel.timeout(FOREVER):
            for i in range(50):
                async with wheel.timeout(FOREVER + i):
                    pass
        assert ticks(loop, wheel) == 1

    run_counting(main)


def test_an_earlier_timeout_re_arms_the_ticker() -> None:
    async def main(loop: CountingLoop) -> None:
        wheel = TimeoutWheel()
        entered = asyncio.Event()

        async def long_call() -> None:
            async with wheel.timeout(FOREVER):
                entered.set()
                await sleeps_forever()

        pending = asyncio.create_task(long_call())
        await entered.wait()
        assert ticks(loop, wheel) == 1
        assert await expire(wheel, SOON) >= SOON  # now, not when the long call's tick is due
        assert ticks(loop, wheel) >= 2
        assert not pending.done()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending

    run_counting(main)


# -- one wheel per loop ----------------------------------------------------------------------


async def test_default_wheel_is_one_per_running_loop() -> None:
    wheel = default_wheel()
    assert default_wheel() is wheel
    other: list[TimeoutWheel] = []

    def in_another_loop() -> None:
        async def get() -> None:
            other.append(default_wheel())

        asyncio.run(get())

    await asyncio.to_thread(in_another_loop)
    assert len(other) == 1
    assert other[0] is not wheel


async def test_a_left_timeout_does_not_keep_its_task_alive() -> None:
    # Leaving only flags the entry until its bucket comes due; the entry must not hold the
    # finished task (a server would otherwise keep every request's task for its whole budget).
    wheel = TimeoutWheel()

    async def work() -> None:
        async with wheel.timeout(60):
            await asyncio.sleep(0)

    await asyncio.gather(*(work() for _ in range(5)))
    pending = [e for bucket in wheel._buckets.values() for e in bucket]
    assert len(pending) == 5  # still waiting for their bucket ...
    assert all(e.task is None for e in pending)  # ... without their tasks
