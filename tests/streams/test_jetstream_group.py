"""The JetStream backend's group state machine, sans I/O: random joins, heartbeats, leaves and
deaths keep the assignment whole and the fencing tokens consistent."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.streams._backends._jetstream_group import GroupState, tp_key, tp_of
from garrison.streams._backends.base import TopicPartition
from garrison.streams._errors import Fenced, NotAMember

PARTITIONS = {"a": 3, "b": 5}
MEMBERS = ["m0", "m1", "m2", "m3"]
LEASE = 10.0

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("join"),
            st.sampled_from(MEMBERS),
            st.sampled_from([("a",), ("b",), ("a", "b")]),
        ),
        st.tuples(st.just("heartbeat"), st.sampled_from(MEMBERS), st.none()),
        st.tuples(st.just("leave"), st.sampled_from(MEMBERS), st.none()),
        st.tuples(st.just("wait"), st.floats(0, 2 * LEASE), st.none()),
    ),
    max_size=40,
)


def _invariants(s: GroupState, now: float) -> None:
    live = {m for m in s.members if s.live(m, now)}
    owners = {tp_of(k): m for k, m in s.owners.items()}
    subscribed = {t for m in s.members.values() for t in m.topics}
    # Every partition of a subscribed topic has exactly one owner, subscribed to it.
    assert set(owners) == {TopicPartition(t, p) for t in subscribed for p in range(PARTITIONS[t])}
    for tp, m in owners.items():
        assert m in s.members
        assert tp.topic in s.members[m].topics
    assert set(s.since) == set(s.owners)
    assert all(1 <= g <= s.generation for g in s.since.values())
    # Each owner that is still live may commit what it owns with the current generation.
    for tp, m in owners.items():
        if m in live:
            s.check_fence("g", m, s.generation, [tp], now)
    # The stored form round-trips.
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(s), type=GroupState) == s


@settings(max_examples=300, deadline=None)
@given(ops)
def test_random_membership_keeps_the_assignment_whole(
    steps: list[tuple[str, object, object]],
) -> None:
    s = GroupState()
    now = 1000.0
    for op, arg, topics in steps:
        before = s.generation
        if op == "wait":
            assert isinstance(arg, float)
            now += arg
            continue
        assert isinstance(arg, str)
        if op == "join":
            assert isinstance(topics, tuple)
            s.join(arg, topics, now + LEASE, now, PARTITIONS)
        elif op == "heartbeat":
            if not s.live(arg, now):
                with pytest.raises(NotAMember):
                    s.heartbeat(arg, now + LEASE, now, PARTITIONS)
                continue
            s.heartbeat(arg, now + LEASE, now, PARTITIONS)
        else:
            s.leave(arg, now, PARTITIONS)
        assert s.generation in (before, before + 1)
        assert all(m.lease_until > now for m in s.members.values())  # the dead were removed
        _invariants(s, now)


def test_fencing_rules() -> None:
    s = GroupState()
    s.join("a", ["t"], 100.0, 0.0, {"t": 2})
    g1 = s.generation
    s.join("b", ["t"], 100.0, 0.0, {"t": 2})
    owners = {tp_of(k): m for k, m in s.owners.items()}
    kept = next(tp for tp, m in owners.items() if m == "a")
    moved = next(tp for tp, m in owners.items() if m == "b")
    s.check_fence("g", "a", g1, [kept], 1.0)  # kept since before: the old generation is fine
    with pytest.raises(Fenced, match="not assigned"):
        s.check_fence("g", "a", g1, [moved], 1.0)
    with pytest.raises(Fenced, match="only since generation"):
        s.check_fence("g", "b", g1, [moved], 1.0)
    with pytest.raises(Fenced, match="unknown"):
        s.check_fence("g", "b", s.generation + 1, [moved], 1.0)
    with pytest.raises(NotAMember):
        s.check_fence("g", "a", s.generation, [kept], 100.0)  # its lease ran out
    g = s.reset({kept: 7})
    assert s.offsets[tp_key(kept)] == 7
    with pytest.raises(Fenced):
        s.check_fence("g", "a", g - 1, [kept], 1.0)  # a reset fences everyone
    s.check_fence("g", "a", g, [kept], 1.0)
    s.pending[tp_key(kept)] = 3
    assert s.drop_topic("t")
    assert not s.offsets
    assert not s.pending
