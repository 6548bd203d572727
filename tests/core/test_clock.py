"""The injectable clock: FakeClock moves only when told to; SystemClock is the real one."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from garrison.core import Clock, FakeClock, SystemClock


async def settle() -> None:
    """Let every task that is ready run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def sleeper(clock: FakeClock, seconds: float, woke: list[float]) -> None:
    await clock.sleep(seconds)
    woke.append(seconds)


def test_both_clocks_are_clocks() -> None:
    assert isinstance(FakeClock(), Clock)
    assert isinstance(SystemClock(), Clock)


def test_fake_clock_starts_where_told() -> None:
    clock = FakeClock(start=5.0, wall_start=1_000_000.0)
    assert clock.monotonic() == 5.0
    assert clock.time() == 1_000_000.0
    assert clock.sleepers == 0


def test_advance_moves_monotonic_and_wall_time_together() -> None:
    clock = FakeClock()
    mono, wall = clock.monotonic(), clock.time()
    clock.advance(2.5)
    clock.advance(0)
    assert clock.monotonic() == mono + 2.5
    assert clock.time() == wall + 2.5


@pytest.mark.parametrize("seconds", [-0.001, -1, math.nan, -math.inf])
def test_advance_rejects_negative_and_nan(seconds: float) -> None:
    clock = FakeClock()
    before = clock.monotonic()
    with pytest.raises(ValueError, match="must be >= 0"):
        clock.advance(seconds)
    assert clock.monotonic() == before


async def test_advance_wakes_due_sleepers_in_deadline_order() -> None:
    clock = FakeClock()
    woke: list[float] = []
    tasks = [asyncio.create_task(sleeper(clock, s, woke)) for s in (3.0, 1.0, 2.0, 5.0)]
    await settle()
    assert clock.sleepers == 4
    assert woke == []

    clock.advance(2.5)
    await settle()
    assert woke == [1.0, 2.0]
    assert clock.sleepers == 2

    clock.advance(0.5)  # exactly due
    await settle()
    assert woke == [1.0, 2.0, 3.0]

    clock.advance(10)
    await asyncio.gather(*tasks)
    assert woke == [1.0, 2.0, 3.0, 5.0]
    assert clock.sleepers == 0


async def test_equal_deadlines_wake_in_the_order_they_slept() -> None:
    clock = FakeClock()
    order: list[int] = []

    async def nap(i: int) -> None:
        await clock.sleep(1)
        order.append(i)

    tasks = [asyncio.create_task(nap(i)) for i in range(10)]
    await settle()
    clock.advance(1)
    await asyncio.gather(*tasks)
    assert order == list(range(10))


async def test_not_due_sleepers_stay_asleep() -> None:
    clock = FakeClock()
    woke: list[float] = []
    task = asyncio.create_task(sleeper(clock, 1.0, woke))
    await settle()
    for _ in range(9):
        clock.advance(0.1)
        await settle()
    assert not task.done()
    assert clock.sleepers == 1
    clock.advance(0.2)
    await task
    assert woke == [1.0]


async def test_woken_sleeper_sees_the_advanced_time() -> None:
    clock = FakeClock(start=0.0)

    async def nap() -> float:
        await clock.sleep(1)
        return clock.monotonic()

    task = asyncio.create_task(nap())
    await settle()
    clock.advance(4)
    assert await task == 4.0


@pytest.mark.parametrize("seconds", [0, -1])
async def test_sleep_zero_or_less_returns_without_advance(seconds: float) -> None:
    clock = FakeClock()
    before = clock.monotonic()
    await asyncio.wait_for(clock.sleep(seconds), timeout=60)
    assert clock.monotonic() == before
    assert clock.sleepers == 0


async def test_sleep_zero_yields_to_other_tasks() -> None:
    clock = FakeClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await clock.sleep(0)
    assert ran == ["other"]
    await task


async def test_cancelled_sleeper_is_forgotten() -> None:
    clock = FakeClock()
    woke: list[float] = []
    task = asyncio.create_task(sleeper(clock, 1.0, woke))
    await settle()
    assert clock.sleepers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    clock.advance(5)  # a cancelled sleeper is skipped, not resolved
    await settle()
    assert woke == []


async def test_sleepers_are_counted_across_many_tasks() -> None:
    clock = FakeClock()
    woke: list[float] = []
    tasks = [asyncio.create_task(sleeper(clock, float(i), woke)) for i in range(1, 101)]
    await settle()
    assert clock.sleepers == 100
    clock.advance(50)
    await settle()
    assert clock.sleepers == 50
    assert woke == [float(i) for i in range(1, 51)]
    clock.advance(50)
    await asyncio.gather(*tasks)
    assert woke == [float(i) for i in range(1, 101)]


def test_system_clock_reads_the_real_clocks() -> None:
    clock = SystemClock()
    before_wall = time.time()
    before_mono = time.monotonic()
    mono = clock.monotonic()
    wall = clock.time()
    assert before_mono <= mono <= time.monotonic()
    assert before_wall <= wall <= time.time()
    assert clock.monotonic() >= mono


async def test_system_clock_sleeps_on_the_loop() -> None:
    clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(0)
    await clock.sleep(0.001)
    assert clock.monotonic() >= before


def test_system_clock_has_no_state() -> None:
    assert SystemClock.__slots__ == ()
