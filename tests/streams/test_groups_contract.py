"""Consumer groups on every backend: membership, leases, rebalance, fenced commits, processor
transactions and state."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from garrison.core import FakeClock, InvalidInput
from garrison.streams._backends.base import (
    LogBackend,
    OutputRecord,
    Record,
    StateChange,
    TopicPartition,
    TopicSpec,
    Transaction,
)
from garrison.streams._errors import Fenced, GroupNotFound, NotAMember, TopicNotFound

Names = Callable[[str], str]
LEASE = 10.0


def _tps(t: str, *ps: int) -> tuple[TopicPartition, ...]:
    return tuple(TopicPartition(t, p) for p in ps)


async def test_join_assigns_everything_to_the_first_member(log: LogBackend, names: Names) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=4))
    a = await log.join(g, "m1", [t], lease=LEASE)
    assert a.partitions == _tps(t, 0, 1, 2, 3)
    assert a.generation >= 1
    info = await log.describe_group(g)
    assert [m.member for m in info.members] == ["m1"]
    assert g in await log.list_groups()


async def test_rebalance_on_join_and_leave_is_sticky(log: LogBackend, names: Names) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=6))
    a1 = await log.join(g, "m1", [t], lease=LEASE)
    a2 = await log.join(g, "m2", [t], lease=LEASE)
    assert a2.generation > a1.generation
    h1 = await log.heartbeat(g, "m1", lease=LEASE)
    assert h1.generation == a2.generation
    assert len(h1.partitions) == len(a2.partitions) == 3
    assert set(h1.partitions) | set(a2.partitions) == set(_tps(t, *range(6)))
    assert set(h1.partitions) <= set(a1.partitions)  # m1 only gave partitions away
    a3 = await log.join(g, "m3", [t], lease=LEASE)
    h1b = await log.heartbeat(g, "m1", lease=LEASE)
    h2b = await log.heartbeat(g, "m2", lease=LEASE)
    assert len(h1b.partitions) == len(h2b.partitions) == len(a3.partitions) == 2
    assert set(h1b.partitions) <= set(h1.partitions)
    assert set(h2b.partitions) <= set(a2.partitions)
    await log.leave(g, "m2")
    h1c = await log.heartbeat(g, "m1", lease=LEASE)
    h3c = await log.heartbeat(g, "m3", lease=LEASE)
    assert set(h1c.partitions) | set(h3c.partitions) == set(_tps(t, *range(6)))
    assert set(h1b.partitions) <= set(h1c.partitions)  # survivors keep what they had
    assert set(a3.partitions) <= set(h3c.partitions)
    with pytest.raises(NotAMember):
        await log.heartbeat(g, "m2", lease=LEASE)


async def test_dead_member_expires_and_its_partitions_move(
    log: LogBackend, names: Names, clock: FakeClock
) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=4))
    await log.join(g, "alive", [t], lease=LEASE)
    dead = await log.join(g, "dead", [t], lease=LEASE)
    assert len(dead.partitions) == 2
    clock.advance(LEASE / 2)
    await log.heartbeat(g, "alive", lease=LEASE)
    clock.advance(LEASE / 2 + 1)  # "dead" never heartbeats: its lease ran out
    info = await log.describe_group(g)
    assert [m.member for m in info.members] == ["alive"]  # expired members are not shown
    h = await log.heartbeat(g, "alive", lease=LEASE)
    assert h.partitions == _tps(t, 0, 1, 2, 3)
    assert h.generation > dead.generation
    with pytest.raises(NotAMember):
        await log.commit(g, "dead", dead.generation, {dead.partitions[0]: 1})
    with pytest.raises(NotAMember):
        await log.heartbeat(g, "dead", lease=LEASE)
    again = await log.join(g, "dead", [t], lease=LEASE)  # it comes back: a new generation
    assert again.generation > h.generation
    assert len(again.partitions) == 2


async def test_commit_is_fenced_by_generation_and_ownership(log: LogBackend, names: Names) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=2))
    a1 = await log.join(g, "m1", [t], lease=LEASE)
    await log.commit(g, "m1", a1.generation, {TopicPartition(t, 0): 5, TopicPartition(t, 1): 7})
    assert await log.committed(g) == {TopicPartition(t, 0): 5, TopicPartition(t, 1): 7}
    a2 = await log.join(g, "m2", [t], lease=LEASE)
    (moved,) = a2.partitions
    (kept,) = (tp for tp in a1.partitions if tp != moved)
    # m1 kept one partition: committing it with its old generation is still fine.
    await log.commit(g, "m1", a1.generation, {kept: 6})
    # The moved one is fenced for m1, and nothing of a fenced commit is applied.
    with pytest.raises(Fenced):
        await log.commit(g, "m1", a1.generation, {kept: 100, moved: 100})
    assert (await log.committed(g))[kept] == 6
    # m2 owns it now.
    await log.commit(g, "m2", a2.generation, {moved: 9})
    assert (await log.committed(g, t))[moved] == 9
    # A generation from the future is refused too.
    with pytest.raises(Fenced):
        await log.commit(g, "m2", a2.generation + 5, {moved: 10})
    # If it moves back to m1 later, m1's knowledge from before is stale.
    await log.leave(g, "m2")
    h = await log.heartbeat(g, "m1", lease=LEASE)
    assert moved in h.partitions
    with pytest.raises(Fenced):
        await log.commit(g, "m1", a1.generation, {moved: 11})
    await log.commit(g, "m1", h.generation, {moved: 11})


async def test_reset_offsets_fences_live_members(log: LogBackend, names: Names) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=1))
    a = await log.join(g, "m1", [t], lease=LEASE)
    await log.commit(g, "m1", a.generation, {TopicPartition(t, 0): 40})
    gen = await log.reset_offsets(g, {TopicPartition(t, 0): 3})
    assert gen > a.generation
    assert await log.committed(g) == {TopicPartition(t, 0): 3}
    with pytest.raises(Fenced):
        await log.commit(g, "m1", a.generation, {TopicPartition(t, 0): 41})
    h = await log.heartbeat(g, "m1", lease=LEASE)
    assert h.generation == gen
    await log.commit(g, "m1", h.generation, {TopicPartition(t, 0): 4})


async def test_reset_offsets_of_a_group_without_members(log: LogBackend, names: Names) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=2))
    await log.reset_offsets(g, {TopicPartition(t, 1): 12})
    assert await log.committed(g) == {TopicPartition(t, 1): 12}
    assert g in await log.list_groups()
    assert (await log.describe_group(g)).members == ()


async def test_members_with_different_topics(log: LogBackend, names: Names) -> None:
    a, b, g = names("a"), names("b"), names("g")
    await log.create_topic(TopicSpec(name=a, partitions=2))
    await log.create_topic(TopicSpec(name=b, partitions=2))
    await log.join(g, "m1", [a, b], lease=LEASE)
    m2 = await log.join(g, "m2", [b], lease=LEASE)
    m1 = await log.heartbeat(g, "m1", lease=LEASE)
    assert set(m1.partitions) >= set(_tps(a, 0, 1))
    assert len(m2.partitions) == 1
    assert m2.partitions[0].topic == b


async def test_transact_commits_offsets_state_and_outputs_together(
    log: LogBackend, names: Names
) -> None:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src, partitions=2))
    await log.create_topic(TopicSpec(name=out, partitions=1))
    a = await log.join(g, "m1", [src], lease=LEASE)
    tp = TopicPartition(src, 1)
    await log.transact(
        Transaction(
            group=g,
            member="m1",
            generation=a.generation,
            offsets={tp: 3},
            state=[StateChange("counts", 1, b"k1", b"1"), StateChange("counts", 1, b"k2", b"2")],
            outputs=[OutputRecord(out, 0, Record(value=b"o1", key=b"k1", id=f"{g}-1-0-0"))],
        )
    )
    assert (await log.committed(g))[tp] == 3
    assert await log.get_state(g, "counts", 1, b"k1") == b"1"
    assert await log.load_state(g, "counts", 1) == [(b"k1", b"1"), (b"k2", b"2")]
    assert await log.load_state(g, "counts", 0) == []
    assert [r.value for r in await log.read(out, 0, 0)] == [b"o1"]
    # A second transaction: delete k1, overwrite k2.
    await log.transact(
        Transaction(
            group=g,
            member="m1",
            generation=a.generation,
            offsets={tp: 5},
            state=[StateChange("counts", 1, b"k1", None), StateChange("counts", 1, b"k2", b"3")],
        )
    )
    assert await log.load_state(g, "counts", 1) == [(b"k2", b"3")]
    assert await log.get_state(g, "counts", 1, b"k1") is None


async def test_fenced_transaction_applies_nothing(log: LogBackend, names: Names) -> None:
    src, out, g = names("src"), names("out"), names("g")
    await log.create_topic(TopicSpec(name=src, partitions=1))
    await log.create_topic(TopicSpec(name=out, partitions=1))
    a = await log.join(g, "m1", [src], lease=LEASE)
    await log.leave(g, "m1")
    await log.join(g, "m2", [src], lease=LEASE)
    with pytest.raises(Fenced):
        await log.transact(
            Transaction(
                group=g,
                member="m1",
                generation=a.generation,
                offsets={TopicPartition(src, 0): 1},
                state=[StateChange("s", 0, b"k", b"v")],
                outputs=[OutputRecord(out, 0, Record(value=b"dup", id=f"{g}-0-0-0"))],
            )
        )
    assert await log.committed(g) == {}
    assert await log.load_state(g, "s", 0) == []
    assert await log.read(out, 0, 0) == []


# -- bad input ----------------------------------------------------------------------------------


async def test_bad_group_input(log: LogBackend, names: Names) -> None:
    t, g = names("t"), names("g")
    await log.create_topic(TopicSpec(name=t, partitions=2))
    with pytest.raises(InvalidInput, match="group name"):
        await log.join("bad group", "m", [t], lease=LEASE)
    with pytest.raises(InvalidInput, match="member id"):
        await log.join(g, "bad member!", [t], lease=LEASE)
    with pytest.raises(InvalidInput, match="lease"):
        await log.join(g, "m", [t], lease=0)
    with pytest.raises(InvalidInput, match="topics"):
        await log.join(g, "m", [], lease=LEASE)
    with pytest.raises(InvalidInput, match="topics"):
        await log.join(g, "m", t, lease=LEASE)
    with pytest.raises(TopicNotFound):
        await log.join(g, "m", [names("missing")], lease=LEASE)
    with pytest.raises(GroupNotFound):
        await log.describe_group(names("nobody"))
    a = await log.join(g, "m", [t], lease=LEASE)
    with pytest.raises(InvalidInput, match="partition 7 out of range"):
        await log.commit(g, "m", a.generation, {TopicPartition(t, 7): 1})
    with pytest.raises(InvalidInput, match="offset"):
        await log.commit(g, "m", a.generation, {TopicPartition(t, 0): -1})
    with pytest.raises(InvalidInput, match="offset"):
        await log.reset_offsets(g, {TopicPartition(t, 0): -1})
    with pytest.raises(TopicNotFound):
        await log.reset_offsets(g, {TopicPartition(names("missing"), 0): 0})
    with pytest.raises(InvalidInput, match="not among"):
        await log.transact(
            Transaction(
                group=g,
                member="m",
                generation=a.generation,
                offsets={TopicPartition(t, 0): 1},
                state=[StateChange("s", 1, b"k", b"v")],
            )
        )
    with pytest.raises(InvalidInput, match="partition"):
        await log.load_state(g, "s", -1)
    with pytest.raises(InvalidInput, match="store name"):
        await log.get_state(g, "bad store", 0, b"k")
