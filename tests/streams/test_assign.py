"""The sans-I/O partition assignment: balanced, complete, deterministic and sticky."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from garrison.streams._assign import assign_partitions, by_member, next_since
from garrison.streams._backends.base import TopicPartition

members_st = st.dictionaries(
    st.sampled_from([f"m{i}" for i in range(8)]),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
    min_size=1,
    max_size=8,
)
counts_st = st.fixed_dictionaries(
    {"a": st.integers(1, 20), "b": st.integers(1, 20), "c": st.integers(1, 20)}
)


@given(members_st, counts_st)
def test_complete_balanced_deterministic(
    members: dict[str, list[str]], counts: dict[str, int]
) -> None:
    owners = assign_partitions(members, counts)
    assert owners == assign_partitions(dict(reversed(list(members.items()))), counts)
    for topic, n in counts.items():
        eligible = {m for m, ts in members.items() if topic in ts}
        tps = [TopicPartition(topic, p) for p in range(n)]
        if not eligible:
            assert not any(tp in owners for tp in tps)
            continue
        assert all(owners[tp] in eligible for tp in tps)
        loads = [sum(1 for tp in tps if owners[tp] == m) for m in eligible]
        assert max(loads) - min(loads) <= 1


@given(members_st, counts_st, st.sampled_from([f"m{i}" for i in range(9)]))
def test_sticky_when_a_member_joins_or_leaves(
    members: dict[str, list[str]], counts: dict[str, int], other: str
) -> None:
    before = assign_partitions(members, counts)
    changed = dict(members)
    if other in changed and len(changed) > 1:
        del changed[other]  # it leaves: only its partitions move
        after = assign_partitions(changed, counts, before)
        for tp, m in before.items():
            if (
                m != other
                and tp in after
                and _load(before, m, tp.topic) <= _quota(changed, counts, tp.topic)
            ):
                assert after[tp] == m
    else:
        changed[other] = ["a", "b", "c"]  # it joins: nobody else gains anything
        after = assign_partitions(changed, counts, before)
        for tp, m in after.items():
            if m != other and tp in before:
                assert before[tp] == m


def _load(owners: dict[TopicPartition, str], m: str, topic: str) -> int:
    return sum(1 for tp, o in owners.items() if o == m and tp.topic == topic)


def _quota(members: dict[str, list[str]], counts: dict[str, int], topic: str) -> int:
    k = sum(1 for ts in members.values() if topic in ts)
    return counts[topic] // k if k else 0


def test_since_is_kept_for_kept_partitions() -> None:
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    since = next_since({a: "m1", b: "m2"}, {a: "m1", b: "m1"}, {a: 1, b: 1}, 2)
    assert since == {a: 1, b: 2}
    assert by_member({a: "m1", b: "m1"}) == {"m1": (a, b)}


def test_topic_missing_from_counts_is_skipped() -> None:
    assert assign_partitions({"m": ["gone"]}, {}) == {}
