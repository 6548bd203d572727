"""The bulkhead: the sans-I/O core's decisions, and the asyncio layer under random concurrency."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock, UsageError
from garrison.resilience._base import Criticality, Rejected
from garrison.resilience._bulkhead import (
    AsyncBulkhead,
    Bulkhead,
    BulkheadConfig,
    Ticket,
    TicketState,
)

LOW, DEFAULT, HIGH, TOP = (
    Criticality.SHEDDABLE,
    Criticality.DEFAULT,
    Criticality.CRITICAL,
    Criticality.CRITICAL_PLUS,
)


def core(limit: int = 1, queue: int = 4, timeout: float = 10.0) -> tuple[Bulkhead[str], FakeClock]:
    clock = FakeClock()
    cfg = BulkheadConfig(max_concurrent_calls=limit, max_queue=queue, queue_timeout=timeout)
    return Bulkhead(cfg, name="a->b", clock=clock), clock


def names(tickets: object) -> list[str]:
    return [t.waiter for t in tickets]  # type: ignore[attr-defined]


# -- configuration ---------------------------------------------------------------------------


def test_config_defaults() -> None:
    cfg = BulkheadConfig()
    assert (cfg.max_concurrent_calls, cfg.max_queue, cfg.queue_timeout) == (25, 0, 1.0)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_concurrent_calls", 0, "integer >= 1"),
        ("max_concurrent_calls", 1.5, "an integer"),
        ("max_queue", -1, "integer >= 0"),
        ("max_queue", False, "an integer"),
        ("queue_timeout", -0.5, ">= 0"),
        ("queue_timeout", float("inf"), "finite number"),
        ("queue_timeout", "1s", "finite number"),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        BulkheadConfig(**{field: value})  # type: ignore[arg-type]
    assert info.value.key == field
    # loading from plain data: msgspec itself rejects wrong types, the struct the rest
    with pytest.raises((ConfigError, msgspec.ValidationError)):
        msgspec.convert({field: value}, BulkheadConfig)


# -- the core --------------------------------------------------------------------------------


def test_slots_up_to_the_limit() -> None:
    bh, _ = core(limit=2)
    assert bh.try_acquire()
    assert bh.try_acquire()
    assert not bh.try_acquire()
    assert bh.release() == ()
    assert bh.try_acquire()
    assert bh.active == 2


def test_release_without_a_slot_is_a_usage_error() -> None:
    bh, _ = core()
    with pytest.raises(UsageError, match="without a held slot"):
        bh.release()


def test_full_without_queue_rejects() -> None:
    bh, _ = core(queue=0)
    assert bh.try_acquire()
    with pytest.raises(Rejected) as info:
        bh.enqueue("w")
    assert (info.value.policy, info.value.reason) == ("bulkhead", "full")
    assert bh.metrics().rejected_full == 1


def test_enqueue_with_a_free_slot_grants_at_once() -> None:
    bh, _ = core()
    ticket, changed = bh.enqueue("w")
    assert ticket.state is TicketState.GRANTED
    assert changed == ()
    assert bh.active == 1


def test_zero_timeout_never_waits() -> None:
    bh, _ = core()
    assert bh.try_acquire()
    for t in (0.0, -1.0, math.nan):
        with pytest.raises(Rejected, match="full"):
            bh.enqueue("w", timeout=t)
    assert bh.waiting == 0


def test_release_hands_the_slot_over_by_criticality_then_arrival() -> None:
    bh, _ = core(queue=6)
    assert bh.try_acquire()
    for name, crit in [("l1", LOW), ("d1", DEFAULT), ("h1", HIGH), ("d2", DEFAULT), ("l2", LOW)]:
        ticket, _ = bh.enqueue(name, crit)
        assert ticket.state is TicketState.WAITING
    order = []
    for _ in range(5):
        (granted,) = bh.release()
        assert granted.state is TicketState.GRANTED
        order.append(granted.waiter)
        assert bh.active == 1  # handed over, never freed
    assert order == ["h1", "d1", "d2", "l1", "l2"]
    assert bh.release() == ()
    assert bh.active == 0


def test_a_newcomer_cannot_overtake_the_queue() -> None:
    bh, _ = core()
    assert bh.try_acquire()
    bh.enqueue("w")
    bh.release()
    assert not bh.try_acquire()  # the slot went to the waiter


def test_full_queue_displaces_the_newest_of_the_lowest_criticality() -> None:
    bh, _ = core(queue=3)
    assert bh.try_acquire()
    bh.enqueue("l1", LOW)
    bh.enqueue("l2", LOW)
    bh.enqueue("d1", DEFAULT)
    with pytest.raises(Rejected, match="full"):
        bh.enqueue("l3", LOW)  # equal criticality never displaces
    ticket, changed = bh.enqueue("h1", HIGH)
    assert names(changed) == ["l2"]
    assert changed[0].state is TicketState.DISPLACED
    assert ticket.state is TicketState.WAITING
    _, changed = bh.enqueue("t1", TOP)
    assert names(changed) == ["l1"]
    _, changed = bh.enqueue("t2", TOP)
    assert names(changed) == ["d1"]
    with pytest.raises(Rejected):
        bh.enqueue("h2", HIGH)
    assert bh.metrics().rejected_full == 5
    assert [names(bh.release()) for _ in range(3)] == [["t1"], ["t2"], ["h1"]]


def test_expire_times_out_waiters_past_their_deadline() -> None:
    bh, clock = core(queue=4, timeout=10.0)
    assert bh.try_acquire()
    bh.enqueue("a")
    bh.enqueue("b", timeout=3.0)
    bh.enqueue("c", timeout=math.inf)
    clock.advance(2.9)
    assert bh.expire() == ()
    clock.advance(0.1)
    assert names(bh.expire()) == ["b"]
    clock.advance(7.0)
    (a,) = bh.expire()
    assert (a.waiter, a.state) == ("a", TicketState.TIMED_OUT)
    clock.advance(1e9)
    assert bh.expire() == ()
    assert bh.waiting == 1
    assert bh.metrics().rejected_timeout == 2


def test_release_skips_waiters_whose_time_is_up() -> None:
    bh, clock = core(queue=4)
    assert bh.try_acquire()
    bh.enqueue("a", timeout=1.0)
    bh.enqueue("b", timeout=5.0)
    clock.advance(2.0)
    changed = bh.release()
    assert [(t.waiter, t.state) for t in changed] == [
        ("a", TicketState.TIMED_OUT),
        ("b", TicketState.GRANTED),
    ]
    clock.advance(10.0)
    bh.enqueue("c", timeout=1.0)
    clock.advance(1.0)
    (c,) = bh.release()
    assert c.state is TicketState.TIMED_OUT
    assert bh.active == 0  # nobody left to take it


def test_expired_waiters_make_room_for_a_newcomer() -> None:
    bh, clock = core(queue=1)
    assert bh.try_acquire()
    bh.enqueue("old", timeout=1.0)
    clock.advance(1.0)
    ticket, changed = bh.enqueue("new")
    assert names(changed) == ["old"]
    assert changed[0].state is TicketState.TIMED_OUT
    assert ticket.state is TicketState.WAITING


def test_cancel() -> None:
    bh, _ = core(queue=2)
    assert bh.try_acquire()
    a, _ = bh.enqueue("a")
    b, _ = bh.enqueue("b")
    assert bh.cancel(a)
    assert a.state is TicketState.CANCELLED
    assert not bh.cancel(a)
    assert bh.waiting == 1
    assert bh.release() == [b]
    assert not bh.cancel(b)  # granted: the caller holds a slot
    assert bh.active == 1


def test_dead_tickets_never_pile_up() -> None:
    bh, _ = core(queue=3)
    assert bh.try_acquire()
    for i in range(10_000):
        ticket, _ = bh.enqueue(f"w{i}", Criticality(i % 4))
        assert bh.cancel(ticket)
    assert bh.waiting == 0
    assert sum(len(q) for q in bh._queues) <= 64 + 1
    assert len(bh._heap) <= 64 + 1


def test_metrics_and_repr() -> None:
    bh, _ = core(limit=2, queue=1)
    bh.try_acquire()
    m = bh.metrics()
    assert (m.active, m.waiting, m.max_concurrent_calls, m.max_queue) == (1, 0, 2, 1)
    assert "1/2" in repr(bh)
    ticket: Ticket[str] = Ticket("w", HIGH, 1.0, 7)
    assert "#7 CRITICAL waiting" in repr(ticket)


Op = tuple[str, Criticality, float | None, int, float]
core_ops: st.SearchStrategy[Op] = st.tuples(
    st.sampled_from(["arrive"] * 4 + ["release"] * 3 + ["cancel", "advance", "expire"]),
    st.sampled_from(list(Criticality)),
    st.sampled_from([None, None, 0.0, 1.0, 2.5, math.inf]),  # queue timeout of an arrival
    st.integers(0, 100),  # which waiter to cancel
    st.sampled_from([0.5, 1.0, 3.0]),  # time to advance
)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(1, 3),
    queue=st.sampled_from([0, 1, 2, 3, 4, 4, 4]),
    ops=st.lists(core_ops, min_size=8, max_size=80),
)
def test_core_never_exceeds_its_limits_nor_loses_a_slot(
    limit: int, queue: int, ops: list[Op]
) -> None:
    """Against a brute-force model: slots and queue bounded, grants in order, nothing lost."""
    bh, clock = core(limit=limit, queue=queue, timeout=2.0)
    holders = 0
    waiting: list[Ticket[str]] = []  # the model's queue, in arrival order

    def settle(changed: Sequence[Ticket[str]]) -> None:
        nonlocal holders
        for t in changed:
            assert t in waiting
            waiting.remove(t)
            if t.state is TicketState.GRANTED:
                holders += 1
            else:
                assert t.state in (TicketState.TIMED_OUT, TicketState.DISPLACED)

    for i, (kind, crit, timeout, which, dt) in enumerate(ops):
        now = clock.monotonic()
        live = [t for t in waiting if t.deadline > now]
        if kind == "arrive":
            if bh.try_acquire():
                holders += 1
                continue
            lower = [t for t in live if t.criticality < crit]
            victim = min(lower, key=lambda t: (t.criticality, -t.seq), default=None)
            room = len(live) < queue or victim is not None
            try:
                ticket, changed = bh.enqueue(f"w{i}", crit, timeout)
            except Rejected:
                assert timeout == 0.0 or not room
                continue
            assert room
            displaced = [t for t in changed if t.state is TicketState.DISPLACED]
            assert displaced == ([victim] if len(live) >= queue else [])
            settle(changed)
            assert ticket.state is TicketState.WAITING
            waiting.append(ticket)
        elif kind == "release" and holders:
            best = max(live, key=lambda t: (t.criticality, -t.seq), default=None)
            holders -= 1
            changed = bh.release()
            granted = [t for t in changed if t.state is TicketState.GRANTED]
            assert granted == ([best] if best else [])
            settle(changed)
        elif kind == "cancel" and waiting:
            ticket = waiting[which % len(waiting)]
            assert bh.cancel(ticket)
            waiting.remove(ticket)
        elif kind == "advance":
            clock.advance(dt)
        elif kind == "expire":
            changed = bh.expire()
            assert {t.seq for t in changed} == {t.seq for t in waiting if t not in live}
            settle(changed)
        assert bh.active == holders <= limit
        assert bh.waiting == len(waiting) <= queue
        assert not waiting or bh.active == limit
        queued = [t for q in bh._queues for t in q]
        assert bh._dead == sum(t.state is not TicketState.WAITING for t in queued)
        assert {t.seq for t in queued if t.state is TicketState.WAITING} == {t.seq for t in waiting}
    while holders:  # every holder releases, and so does each waiter granted in turn
        holders -= 1
        settle(bh.release())
    assert bh.active == 0
    assert bh.waiting == 0 == len(waiting)


# -- the asyncio layer -----------------------------------------------------------------------


def abulk(
    limit: int = 1, queue: int = 4, timeout: float = 30.0, clock: FakeClock | None = None
) -> AsyncBulkhead:
    cfg = BulkheadConfig(max_concurrent_calls=limit, max_queue=queue, queue_timeout=timeout)
    return AsyncBulkhead(cfg, name="a->b", clock=clock)


async def settle_loop(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


async def test_async_context_managers() -> None:
    bh = abulk(limit=2)
    async with bh:
        assert bh.core.active == 1
        async with bh.slot(HIGH):
            assert bh.metrics().active == 2
    assert bh.core.active == 0


async def test_waiters_are_served_in_criticality_order() -> None:
    bh = abulk(limit=1)
    order: list[str] = []

    async def call(name: str, crit: Criticality) -> None:
        async with bh.slot(crit):
            order.append(name)
            await asyncio.sleep(0)

    await bh.acquire()
    tasks = [
        asyncio.create_task(call(n, c))
        for n, c in [("low", LOW), ("d1", DEFAULT), ("top", TOP), ("d2", DEFAULT)]
    ]
    await settle_loop()
    assert bh.core.waiting == 4
    bh.release()
    await asyncio.gather(*tasks)
    assert order == ["top", "d1", "d2", "low"]
    assert bh.core.active == 0


async def test_full_bulkhead_rejects() -> None:
    bh = abulk(limit=1, queue=0)
    await bh.acquire()
    with pytest.raises(Rejected, match="full"):
        await bh.acquire()
    bh.release()


async def test_queue_timeout_on_the_real_loop() -> None:
    bh = abulk(limit=1)
    await bh.acquire()
    with pytest.raises(Rejected) as info:
        await bh.acquire(timeout=0.01)
    assert info.value.reason == "queue timeout"
    assert bh.core.waiting == 0
    assert bh.metrics().rejected_timeout == 1
    bh.release()
    assert bh.core.active == 0


async def test_queue_timeout_decided_by_the_clock() -> None:
    clock = FakeClock()
    bh = abulk(limit=1, timeout=30.0, clock=clock)
    await bh.acquire()
    waiter = asyncio.create_task(bh.acquire())
    late = asyncio.create_task(bh.acquire(timeout=60.0))
    await settle_loop()
    assert bh.expire() == 0
    clock.advance(30.0)
    assert bh.expire() == 1
    with pytest.raises(Rejected, match="queue timeout"):
        await waiter
    clock.advance(30.0)
    bh.release()  # the late waiter's time is up too: the slot is freed, not handed over
    with pytest.raises(Rejected, match="queue timeout"):
        await late
    assert bh.core.active == 0


async def test_displaced_waiter_is_rejected() -> None:
    bh = abulk(limit=1, queue=1)
    await bh.acquire()
    low = asyncio.create_task(bh.acquire(LOW))
    await settle_loop()
    high = asyncio.create_task(bh.acquire(HIGH))
    with pytest.raises(Rejected, match="full"):
        await low
    bh.release()
    await high
    bh.release()
    assert bh.core.active == 0


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    bh = abulk(limit=1)
    await bh.acquire()
    waiter = asyncio.create_task(bh.acquire())
    await settle_loop()
    assert bh.core.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bh.core.waiting == 0
    bh.release()
    assert bh.core.active == 0


async def test_a_waiter_cancelled_just_after_the_handover_leaks_nothing() -> None:
    bh = abulk(limit=1)
    await bh.acquire()
    first = asyncio.create_task(bh.acquire())
    second = asyncio.create_task(bh.acquire())
    await settle_loop()
    bh.release()  # hands the slot to `first`, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await second  # the slot was passed on
    bh.release()
    assert bh.core.active == 0
    assert bh.core.waiting == 0


@settings(max_examples=40, deadline=None)
@given(
    limit=st.integers(1, 4),
    queue=st.integers(0, 6),
    script=st.lists(
        st.tuples(
            st.sampled_from(["spawn", "spawn", "spawn", "cancel", "advance", "yield"]),
            st.sampled_from(list(Criticality)),
            st.integers(0, 4),  # hold for this many loop turns, or which task to cancel
            st.sampled_from([None, 5.0, 50.0, 0.0]),
        ),
        min_size=10,
        max_size=60,
    ),
)
def test_async_bulkhead_under_random_concurrency(
    limit: int, queue: int, script: list[tuple[str, Criticality, int, float | None]]
) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        bh = abulk(limit=limit, queue=queue, timeout=10.0, clock=clock)
        inside = 0
        peak = 0
        tasks: list[asyncio.Task[str]] = []

        async def call(crit: Criticality, hold: int, timeout: float | None) -> str:
            nonlocal inside, peak
            try:
                async with bh.slot(crit, timeout):
                    inside += 1
                    peak = max(peak, inside)
                    try:
                        for _ in range(hold):
                            await asyncio.sleep(0)
                    finally:
                        inside -= 1
            except Rejected as exc:
                return exc.reason
            return "done"

        for action, crit, n, timeout in script:
            if action == "spawn":
                tasks.append(asyncio.create_task(call(crit, n, timeout)))
            elif action == "cancel" and tasks:
                tasks[n % len(tasks)].cancel()
            elif action == "advance":
                clock.advance(n * 3.0)
                bh.expire()
            await asyncio.sleep(0)
            assert bh.core.active <= limit
            assert bh.core.waiting <= queue
            assert inside <= bh.core.active
        # drain: time out every waiter still queued, let the holders finish
        for _ in range(10):
            clock.advance(100.0)
            bh.expire()
            await settle_loop()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            assert r in ("done", "full", "queue timeout") or isinstance(r, asyncio.CancelledError)
        assert peak <= limit
        assert inside == 0
        assert bh.core.active == 0
        assert bh.core.waiting == 0

    asyncio.run(scenario())
