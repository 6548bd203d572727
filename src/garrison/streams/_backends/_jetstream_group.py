"""A consumer group's state on JetStream, and its transitions (sans-I/O).

The whole state of one group (members with leases, generation, assignment, committed offsets,
the last committed processor transaction per partition) is ONE value in a JetStream KV bucket.
Every change reads it (value + revision), applies one of the pure transitions below and writes
it back with a revision-based compare-and-set (``Nats-Expected-Last-Subject-Sequence``): a
concurrent change makes the write fail and the caller retries from a fresh read. So a commit's
fencing check and its offsets are one atomic step, exactly as in the contract, and no member
can commit for a partition it lost, however stale its view.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from garrison.streams._assign import assign_partitions, by_member, next_since
from garrison.streams._errors import Fenced, NotAMember

from .base import Assignment, GroupInfo, MemberInfo, TopicPartition

__all__ = ["GroupState", "MemberState", "tp_key", "tp_of"]


def tp_key(tp: TopicPartition) -> str:
    """``topic/partition``: a map key msgpack keeps as a string (topic names have no ``/``)."""
    return f"{tp.topic}/{tp.partition}"


def tp_of(key: str) -> TopicPartition:
    """The inverse of :func:`tp_key`."""
    topic, _, p = key.rpartition("/")
    return TopicPartition(topic, int(p))


class MemberState(msgspec.Struct):
    """One member as stored: its subscriptions and its lease."""

    topics: tuple[str, ...]
    lease_until: float


class GroupState(msgspec.Struct):
    """The stored state of a group (see the module docstring)."""

    generation: int = 0
    members: dict[str, MemberState] = msgspec.field(default_factory=dict)
    owners: dict[str, str] = msgspec.field(default_factory=dict)
    """``tp_key`` -> the member that owns it in the current generation."""
    since: dict[str, int] = msgspec.field(default_factory=dict)
    """``tp_key`` -> the generation since which its owner holds it (the fencing token)."""
    offsets: dict[str, int] = msgspec.field(default_factory=dict)
    """``tp_key`` -> committed offset (the next one to process)."""
    pending: dict[str, int] = msgspec.field(default_factory=dict)
    """``tp_key`` -> transaction-log sequence of the last committed processor transaction."""

    # -- queries ---------------------------------------------------------------------------------

    def live(self, member: str, now: float) -> bool:
        """Whether ``member`` is in the group with a lease that has not run out."""
        m = self.members.get(member)
        return m is not None and m.lease_until > now

    def assignment(self, group: str, member: str) -> Assignment:
        """What ``member`` holds in the current generation."""
        mine = by_member({tp_of(k): m for k, m in self.owners.items()}).get(member, ())
        return Assignment(
            group=group,
            member=member,
            generation=self.generation,
            partitions=mine,
            lease_until=self.members[member].lease_until,
        )

    def info(self, group: str, now: float) -> GroupInfo:
        """The group as the contract describes it: live members only."""
        held = by_member({tp_of(k): m for k, m in self.owners.items()})
        members = tuple(
            MemberInfo(
                member=name,
                topics=m.topics,
                lease_until=m.lease_until,
                partitions=held.get(name, ()),
            )
            for name, m in sorted(self.members.items())
            if m.lease_until > now
        )
        return GroupInfo(name=group, generation=self.generation, members=members)

    def empty(self) -> bool:
        """A group with neither members nor committed offsets does not exist (contract)."""
        return not self.members and not self.offsets

    # -- transitions (each mutates self; the caller writes it back with compare-and-set) --------

    def expire(self, now: float) -> bool:
        """Remove members whose lease ran out; whether any was."""
        dead = [name for name, m in self.members.items() if m.lease_until <= now]
        for name in dead:
            del self.members[name]
        return bool(dead)

    def rebalance(self, partitions: Mapping[str, int]) -> None:
        """A new generation and a sticky assignment of ``partitions`` among the live members."""
        self.generation += 1
        previous = {tp_of(k): m for k, m in self.owners.items()}
        prev_since = {tp_of(k): g for k, g in self.since.items()}
        owners = assign_partitions(
            {name: m.topics for name, m in self.members.items()}, partitions, previous
        )
        since = next_since(owners, previous, prev_since, self.generation)
        self.owners = {tp_key(tp): m for tp, m in owners.items()}
        self.since = {tp_key(tp): g for tp, g in since.items()}

    def join(
        self,
        member: str,
        topics: Sequence[str],
        lease_until: float,
        now: float,
        partitions: Mapping[str, int],
    ) -> None:
        """Add or renew ``member``; rebalance if the member set or subscriptions changed."""
        changed = self.expire(now)
        subscribed = tuple(sorted(set(topics)))
        old = self.members.get(member)
        changed = changed or old is None or old.topics != subscribed
        self.members[member] = MemberState(subscribed, lease_until)
        if changed:
            self.rebalance(partitions)

    def heartbeat(
        self, member: str, lease_until: float, now: float, partitions: Mapping[str, int]
    ) -> None:
        """Renew ``member``'s lease; :class:`NotAMember` if it is gone (left or expired)."""
        if not self.live(member, now):
            raise NotAMember(f"{member!r} is not a live member of the group: it must join again")
        if self.expire(now):
            self.members[member].lease_until = lease_until
            self.rebalance(partitions)
        else:
            self.members[member].lease_until = lease_until

    def leave(self, member: str, now: float, partitions: Mapping[str, int]) -> bool:
        """Remove ``member`` and rebalance; whether anything changed."""
        changed = self.expire(now)
        if self.members.pop(member, None) is not None:
            changed = True
        if changed:
            self.rebalance(partitions)
        return changed

    def check_fence(
        self, group: str, member: str, generation: int, tps: Sequence[TopicPartition], now: float
    ) -> None:
        """Raise unless ``member`` is live and has held every one of ``tps`` continuously since
        a generation ``<= generation`` (the contract's fencing rule)."""
        if not self.live(member, now):
            raise NotAMember(
                f"{member!r} is not a live member of group {group!r}: it must join again"
            )
        if generation > self.generation:
            raise Fenced(f"group {group!r}: generation {generation} is unknown")
        for tp in tps:
            key = tp_key(tp)
            if self.owners.get(key) != member:
                raise Fenced(
                    f"group {group!r}: {tp.topic}[{tp.partition}] is not assigned to {member!r} "
                    f"in generation {self.generation}"
                )
            if self.since[key] > generation:
                raise Fenced(
                    f"group {group!r}: {member!r} committed with generation {generation}, but "
                    f"holds {tp.topic}[{tp.partition}] only since generation {self.since[key]}: "
                    "heartbeat and re-read from the committed offsets"
                )

    def reset(self, offsets: Mapping[TopicPartition, int]) -> int:
        """Operator override: set offsets, bump the generation and re-stamp every ``since`` so
        that every live member is fenced until it learns the new generation."""
        for tp, off in offsets.items():
            self.offsets[tp_key(tp)] = off
        self.generation += 1
        self.since = dict.fromkeys(self.since, self.generation)
        return self.generation

    def drop_topic(self, topic: str) -> bool:
        """Forget committed offsets and pending transactions on a deleted topic."""
        prefix = f"{topic}/"
        changed = False
        for table in (self.offsets, self.pending):
            for key in [k for k in table if k.startswith(prefix)]:
                del table[key]
                changed = True
        return changed
