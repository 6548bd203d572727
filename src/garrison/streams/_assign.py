"""Partition assignment of a consumer group: sans-I/O, sticky, the same on every backend.

Every log backend calls :func:`assign_partitions` when a group's member set or subscriptions
change and stores the result with :func:`next_since`, so the same members and topics give the
same assignment whether the group lives in SQLite or in a JetStream KV bucket.

Per topic, its partitions are shared among the members subscribed to it: each gets
``n // m`` partitions, and ``n % m`` of them one more. *Sticky*: the members that held the most
partitions of the topic before get the extra ones, each member keeps as many of its previous
partitions as its quota allows, and only the rest move (to the members with room, in id
order). So a member joining takes partitions from the others without reshuffling the rest, and
a member leaving hands over only its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._backends.base import TopicPartition

__all__ = ["assign_partitions", "by_member", "next_since"]


def assign_partitions(
    members: Mapping[str, Sequence[str]],
    partitions: Mapping[str, int],
    previous: Mapping[TopicPartition, str] | None = None,
) -> dict[TopicPartition, str]:
    """The owner of every partition of the subscribed topics.

    ``members`` maps each live member to the topics it subscribes to; ``partitions`` each topic
    to its partition count (topics absent from it are skipped: deleted meanwhile);
    ``previous`` the last assignment (owner per partition). Partitions of a topic nobody
    subscribes to are absent from the result.
    """
    previous = previous or {}
    owners: dict[TopicPartition, str] = {}
    topics = sorted({t for ts in members.values() for t in ts if t in partitions})
    for topic in topics:
        n = partitions[topic]
        eligible = sorted(m for m, ts in members.items() if topic in ts)
        held: dict[str, list[int]] = {m: [] for m in eligible}
        for p in range(n):
            owner = previous.get(TopicPartition(topic, p))
            if owner in held:
                held[owner].append(p)
        base, extra = divmod(n, len(eligible))
        # The members that held the most get the extra partitions: fewest moves.
        ranked = sorted(eligible, key=lambda m: (-len(held[m]), m))
        quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(ranked)}
        free: list[int] = []
        taken: set[int] = set()
        for m in eligible:
            for p in held[m][: quota[m]]:
                owners[TopicPartition(topic, p)] = m
                taken.add(p)
            quota[m] -= min(quota[m], len(held[m]))
        free = [p for p in range(n) if p not in taken]
        it = iter(free)
        for m in eligible:
            for _ in range(quota[m]):
                owners[TopicPartition(topic, next(it))] = m
    return owners


def next_since(
    owners: Mapping[TopicPartition, str],
    previous: Mapping[TopicPartition, str],
    previous_since: Mapping[TopicPartition, int],
    generation: int,
) -> dict[TopicPartition, int]:
    """For each assigned partition, the generation since which its owner holds it: unchanged
    when the owner kept it, ``generation`` when it moved (the fencing rule of the contract)."""
    return {
        tp: (previous_since.get(tp, generation) if previous.get(tp) == owner else generation)
        for tp, owner in owners.items()
    }


def by_member(owners: Mapping[TopicPartition, str]) -> dict[str, tuple[TopicPartition, ...]]:
    """The assignment per member, each sorted."""
    out: dict[str, list[TopicPartition]] = {}
    for tp, m in owners.items():
        out.setdefault(m, []).append(tp)
    return {m: tuple(sorted(tps)) for m, tps in out.items()}
