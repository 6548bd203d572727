"""The log contract: what producers, consumer groups and processors need from an event log.

Model
-----
A *topic* has ``N`` *partitions* (fixed at creation, 1..``MAX_PARTITIONS``). A partition is an
append-only sequence of *records*; each stored record has an *offset*: a non-negative integer,
strictly increasing within its partition, in append order. Offsets need not be dense (a backend
may leave gaps: JetStream sequence numbers shared by a stream's subjects, deduplicated
publishes); SQLite's are dense and start at 0. Per partition:

* ``begin`` — the offset of the first retained record (``== end`` when the partition is empty);
* ``end`` — one past the offset of the last record: the next record gets an offset ``>= end``.

A *record* is a key (bytes, or None), a value (bytes), headers (``str -> str``), a timestamp
(integer milliseconds since the epoch; 0 = "unset": the backend stamps the append time) and an
optional ``id`` (see delivery below). The *producer* chooses the partition:
:func:`partition_for` (a stable hash of the key) for keyed records, round robin for unkeyed
ones. So order is kept per key, because order is kept per partition.

*Retention*, per topic, by age (``retention_ms``, measured from the append time) and by size
(``retention_bytes``, per partition, counting key + value + headers). Records are removed only
from the beginning of a partition (a record goes only with every older one), in whole records,
by the backend on its own schedule; :meth:`LogBackend.apply_retention` runs a pass now.

A *consumer group* is a named set of *members* sharing the partitions of the topics they
subscribe to. Each member holds a *lease* (``lease`` seconds from its last join/heartbeat, on
the backend's clock). The group has a *generation* (an integer, starting at 1 with the first
member), bumped by every change of the member set (a new member joins, a member leaves, an
expired member is removed) and by :meth:`LogBackend.reset_offsets`. At each change the backend
recomputes the *assignment* with :func:`garrison.streams._assign.assign_partitions` (the same
sticky algorithm on every backend) and records, for each assigned partition, the generation in
which its current owner got it (``since``). Expired members are removed by the next
join/heartbeat/leave of any member of the group. A member whose lease has expired counts as
gone even before anyone removed it.

*Committed offsets*, per (group, topic, partition): the offset of the next record to process
(Kafka's convention). A commit is *fenced*: it carries the member and the generation the member
last learned; it is accepted only if, at the moment it is applied, the member is live, each
partition it names is assigned to that member, and has been continuously so since a generation
``<= `` the one given (its ``since``). Otherwise :class:`~garrison.streams._errors.Fenced`
(or :class:`~garrison.streams._errors.NotAMember`) and NOTHING of it is applied. So a member
that lost a partition, even for a moment, can never again commit for it with what it knew
before; a member that kept a partition across rebalances is not disturbed.

Atomicity (each method below is atomic: all of it happens or none)
-------------------------------------------------------------------
``create_topic``  the topic with all its partitions, or nothing (exists: see ``exist_ok``).
``append``       all records of the call, in the call's order, contiguous in the partition
                 (``capabilities.atomic_append``; False on JetStream, which has no atomic
                 multi-message publish: a connection lost mid-call may leave a prefix stored,
                 and the call raises — retried with ``Record.id`` set, the rest is stored once).
                 Calls made in order by one task on one partition are stored in that order even
                 when the caller does not await one before making the next (pipelining).
``join`` / ``heartbeat`` / ``leave``  the membership change, the expiry of dead members, the new
                 generation and assignment, together.
``commit``       the fencing check and every offset of the call.
``reset_offsets`` the offsets and the generation bump (fences every live member).
``transact``     see delivery below.

Durability: a write returns only once it is durable (SQLite: its transaction committed with
``synchronous=FULL`` by default; JetStream: the server acknowledged it from its stream
storage). Nothing a backend acknowledged is lost by a process crash.

Reads (``read``, ``offsets``, ``describe_*``, ``committed``, ``get_state``, ``load_state``) see
acknowledged writes and never block writers. ``read(topic, p, offset)`` returns records with
offsets ``>= offset`` in order: when ``offset < begin`` (retention removed them) it starts at
``begin`` (the caller sees the gap in the first record's offset); with nothing to return it waits
up to ``timeout`` seconds for new records without busy polling (SQLite: notified by its own
writer, with a bounded-interval check for appends by other processes; JetStream: a fetch with
expiry), then returns what it has (possibly ``[]``).

Delivery for processors (``transact``)
--------------------------------------
A processor consumes input records, changes keyed *state* (``(group, store, partition, key) ->
bytes``, where ``partition`` is the INPUT partition the state belongs to: it moves with the
partition on a rebalance) and produces output records. :meth:`LogBackend.transact` takes one
:class:`Transaction` (input offsets to commit, state changes, outputs), fenced like ``commit``:

* ``capabilities.exactly_once`` True (SQLite): ONE database transaction commits the input offsets,
  the state changes and the outputs: after a crash either all are visible or none. Exactly once.
* False (JetStream): *effectively once*. Every output carries a ``Record.id`` set by the
  processor, deterministic from (group, input topic, partition, input offset, index), which the
  backend uses as the dedupe id (``Nats-Msg-Id``), so a replayed output within the server's
  dedupe window is stored once. The state and the input offsets of one (group, topic, partition)
  must still be observed together: after a crash, ``committed`` and ``get_state``/``load_state``
  must reflect the same last applied transaction (e.g. write the whole transaction as one KV
  value first — the commit point, recording the last sequence applied —, then apply it; any
  read of that partition's offsets or state first finishes an applied-but-unfinished
  transaction; re-applying is harmless: state values are absolute and outputs deduplicated).
  ``capabilities.max_transaction_bytes`` bounds the encoded size of one transaction there.

Errors: bad names, partitions, offsets or sizes -> :class:`~garrison.core.InvalidInput`
(:class:`~garrison.streams._errors.RecordTooLarge`); an unknown topic ->
:class:`~garrison.streams._errors.TopicNotFound`; an unknown group in ``describe_group`` ->
:class:`~garrison.streams._errors.GroupNotFound`; stale writes ->
:class:`~garrison.streams._errors.Fenced` / ``NotAMember``; a closed log ->
:class:`~garrison.streams._errors.LogClosed`. Backend I/O failures surface as
:class:`~garrison.core.RemoteError` subclasses (e.g. ``TransportError``), never raw driver errors.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import msgspec

from garrison.core import InvalidInput

__all__ = [
    "MAX_PARTITIONS",
    "MAX_RECORD_BYTES",
    "Assignment",
    "Capabilities",
    "GroupInfo",
    "LogBackend",
    "MemberInfo",
    "OutputRecord",
    "PartitionOffsets",
    "Record",
    "StateChange",
    "StoredRecord",
    "TopicInfo",
    "TopicPartition",
    "TopicSpec",
    "Transaction",
    "partition_for",
    "record_size",
    "validate_member",
    "validate_name",
    "validate_partition",
]

MAX_PARTITIONS = 1024
"""Most partitions a topic may have."""
MAX_RECORD_BYTES = 1_000_000
"""Largest record (key + value + header names and values), so it fits NATS' default payload."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
_MEMBER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def validate_name(kind: str, name: object) -> str:
    """Check a topic, group or state store name: 1-100 of ``A-Z a-z 0-9 _ -``, starting with a
    letter or digit (portable: a JetStream stream name, a subject token and a KV key)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid {kind} name {name!r}: expected 1-100 characters of A-Z a-z 0-9 _ -, "
            "starting with a letter or digit",
            [{"loc": [kind], "msg": "invalid name"}],
        )
    return name


def validate_member(member: object) -> str:
    """Check a member id: 1-200 of ``A-Z a-z 0-9 _ . -``, starting with a letter or digit."""
    if not isinstance(member, str) or not _MEMBER.fullmatch(member):
        raise InvalidInput(
            f"invalid member id {member!r}: expected 1-200 characters of A-Z a-z 0-9 _ . -",
            [{"loc": ["member"], "msg": "invalid member id"}],
        )
    return member


def validate_partition(topic: str, partition: object, partitions: int) -> int:
    """Check that ``partition`` is an int in ``0..partitions-1``."""
    if (
        not isinstance(partition, int)
        or isinstance(partition, bool)
        or not 0 <= partition < partitions
    ):
        raise InvalidInput(
            f"partition {partition!r} out of range for topic {topic!r} "
            f"(it has {partitions} partition(s): 0..{partitions - 1})",
            [{"loc": ["partition"], "msg": "out of range"}],
        )
    return partition


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: CRC-32 of the key bytes, modulo.

    Stable across processes, machines and Python versions (unlike ``hash()``), and the same on
    every backend, so a key's records always land in the same partition.
    """
    return zlib.crc32(key) % partitions


class TopicPartition(msgspec.Struct, frozen=True, order=True):
    """One partition of one topic (hashable, ordered by topic then partition)."""

    topic: str
    partition: int


class TopicSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What to create: a topic's name, partition count and retention."""

    name: str
    """The topic name (see :func:`validate_name`)."""
    partitions: int = 1
    """How many partitions (1..``MAX_PARTITIONS``); fixed for the topic's life."""
    retention_ms: int | None = None
    """Remove records appended longer ago than this (None: keep by age forever)."""
    retention_bytes: int | None = None
    """Per partition: remove the oldest records while the partition is larger (None: no limit)."""

    def validate(self) -> TopicSpec:
        """Raise :class:`InvalidInput` naming the first bad field; return self."""
        validate_name("topic", self.name)
        if (
            not isinstance(self.partitions, int)
            or isinstance(self.partitions, bool)
            or not 1 <= self.partitions <= MAX_PARTITIONS
        ):
            raise InvalidInput(
                f"topic {self.name!r}: partitions must be an int in 1..{MAX_PARTITIONS}, "
                f"got {self.partitions!r}",
                [{"loc": ["partitions"], "msg": "out of range"}],
            )
        for field in ("retention_ms", "retention_bytes"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise InvalidInput(
                    f"topic {self.name!r}: {field} must be a positive int or None, got {v!r}",
                    [{"loc": [field], "msg": "must be positive"}],
                )
        return self


class PartitionOffsets(msgspec.Struct, frozen=True):
    """The retained range of one partition: offsets ``begin <= o < end``."""

    partition: int
    begin: int
    end: int


class TopicInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A topic as it is now: its spec and each partition's offsets."""

    spec: TopicSpec
    offsets: tuple[PartitionOffsets, ...]
    """One entry per partition, in partition order."""
    created_at: float = 0.0
    """When it was created (epoch seconds), 0.0 if the backend does not know."""

    @property
    def name(self) -> str:
        """The topic name."""
        return self.spec.name

    @property
    def partitions(self) -> int:
        """The partition count."""
        return self.spec.partitions


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A record to append."""

    value: bytes
    """The payload."""
    key: bytes | None = None
    """The key (None: unkeyed, placed round robin by the producer)."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Metadata. Names must not start with ``Nats-`` or ``garrison-`` (reserved)."""
    timestamp: int = 0
    """Milliseconds since the epoch; 0: the backend stamps the append time."""
    id: str | None = None
    """A deduplication id: a backend that dedupes (``capabilities.deduplicates``) stores at
    most one record per id within its window. Processors set it on their outputs."""


def record_size(r: Record) -> int:
    """The size counted against ``MAX_RECORD_BYTES`` and ``retention_bytes``."""
    n = len(r.value) + (len(r.key) if r.key is not None else 0)
    for k, v in r.headers.items():
        n += len(k) + len(v)
    return n


class StoredRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A record read from the log, with its position."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    timestamp: int = 0
    """Milliseconds since the epoch (the producer's, or the append time if it gave none)."""


class MemberInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One live member of a consumer group."""

    member: str
    topics: tuple[str, ...]
    """The topics it subscribed to."""
    lease_until: float
    """When its lease runs out (epoch seconds, backend clock) unless it heartbeats."""
    partitions: tuple[TopicPartition, ...]
    """What it is assigned in the current generation."""


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    """What a member learns from join/heartbeat: its partitions in the current generation."""

    group: str
    member: str
    generation: int
    partitions: tuple[TopicPartition, ...]
    """Sorted."""
    lease_until: float
    """When its lease runs out unless it heartbeats again."""


class GroupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A consumer group as it is now."""

    name: str
    generation: int
    members: tuple[MemberInfo, ...]
    """Live members, sorted by id (expired ones not yet removed are left out)."""


class StateChange(msgspec.Struct, frozen=True):
    """Set (or, with ``value=None``, delete) one key of a state store of an input partition."""

    store: str
    partition: int
    key: bytes
    value: bytes | None


class OutputRecord(msgspec.Struct, frozen=True):
    """A record a processor emits, with its destination."""

    topic: str
    partition: int
    record: Record


class Transaction(msgspec.Struct, frozen=True, kw_only=True):
    """What a processor commits after handling a batch: see the module docstring."""

    group: str
    member: str
    generation: int
    offsets: Mapping[TopicPartition, int]
    """Input offsets to commit (next offset to process), fenced like ``commit``."""
    state: Sequence[StateChange] = ()
    """State changes, applied in order (a later change of a key wins); each one's partition
    must be the partition of one of ``offsets`` (state belongs to an owned input partition)."""
    outputs: Sequence[OutputRecord] = ()
    """Records to append, in order per destination partition."""


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What a backend guarantees (the processor and the docs read these)."""

    exactly_once: bool
    """``transact`` is one atomic transaction (offsets + state + outputs)."""
    deduplicates: bool
    """Appends with a ``Record.id`` already stored (within ``dedupe_window_s``) are dropped."""
    dedupe_window_s: float | None = None
    """How long ids are remembered (None: not applicable)."""
    max_transaction_bytes: int | None = None
    """Largest encoded :class:`Transaction` ``transact`` accepts (None: no limit)."""
    atomic_append: bool = True
    """One ``append`` call is stored entirely or not at all (see the atomicity table)."""


class LogBackend(Protocol):
    """An event log: topics, records, consumer groups, offsets and processor state."""

    capabilities: Capabilities

    async def open(self) -> None:
        """Connect / create files and bring the schema up to date."""
        ...

    async def close(self) -> None:
        """Finish acknowledged writes and disconnect; later calls raise ``LogClosed``."""
        ...

    # -- topics --------------------------------------------------------------------------------

    async def create_topic(self, spec: TopicSpec, *, exist_ok: bool = True) -> TopicInfo:
        """Create the topic; if it exists: return it unchanged (``exist_ok``) or raise
        ``TopicExists``. Invalid specs -> ``InvalidInput``."""
        ...

    async def describe_topic(self, topic: str) -> TopicInfo:
        """The topic's spec and offsets; ``TopicNotFound``."""
        ...

    async def list_topics(self) -> list[str]:
        """Every topic name, sorted."""
        ...

    async def delete_topic(self, topic: str) -> bool:
        """Delete the topic, its records, and committed offsets on it; whether it existed."""
        ...

    async def apply_retention(self) -> int:
        """Run a retention pass over every topic now; how many records were removed (a backend
        that enforces retention natively may return 0: tests then poll ``offsets``)."""
        ...

    # -- records -------------------------------------------------------------------------------

    async def append(self, topic: str, partition: int, records: Sequence[Record]) -> list[int]:
        """Append ``records`` (durably, atomically, in order) and return their offsets, one per
        record; for a record dropped as a duplicate id, the offset of the stored one.
        ``TopicNotFound``; ``InvalidInput`` for a bad partition or header name;
        ``RecordTooLarge``."""
        ...

    async def read(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        max_records: int = 1000,
        timeout: float = 0.0,
    ) -> list[StoredRecord]:
        """Up to ``max_records`` records with offsets ``>= offset``, in order; if there are none
        yet, wait up to ``timeout`` seconds for some. ``TopicNotFound``; ``InvalidInput`` for a
        bad partition, a negative offset or ``max_records < 1``."""
        ...

    async def offsets(self, topic: str) -> list[PartitionOffsets]:
        """Begin/end offsets of every partition, in partition order; ``TopicNotFound``."""
        ...

    # -- consumer groups -------------------------------------------------------------------------

    async def join(
        self, group: str, member: str, topics: Sequence[str], *, lease: float
    ) -> Assignment:
        """Add ``member`` (subscribed to ``topics``, which must exist) or renew it and update its
        topics; remove expired members; rebalance if the member set or subscriptions changed."""
        ...

    async def heartbeat(self, group: str, member: str, *, lease: float) -> Assignment:
        """Renew ``member``'s lease, remove expired members (rebalancing if any), and return its
        current assignment. ``NotAMember`` if it is not (or no longer) a live member."""
        ...

    async def leave(self, group: str, member: str) -> None:
        """Remove ``member`` (if present) and rebalance; its partitions go to the others."""
        ...

    async def describe_group(self, group: str) -> GroupInfo:
        """Generation and live members with their assignment; ``GroupNotFound`` for a group
        that has neither members nor committed offsets."""
        ...

    async def list_groups(self) -> list[str]:
        """Every group with members or committed offsets, sorted."""
        ...

    # -- offsets ---------------------------------------------------------------------------------

    async def commit(
        self, group: str, member: str, generation: int, offsets: Mapping[TopicPartition, int]
    ) -> None:
        """Store the next offsets to process, fenced (see the module docstring)."""
        ...

    async def committed(self, group: str, topic: str | None = None) -> dict[TopicPartition, int]:
        """Committed offsets of ``group`` (on ``topic`` only, if given); partitions never
        committed are absent."""
        ...

    async def reset_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> int:
        """Operator override: set committed offsets unfenced, bump the generation (so every live
        member is fenced and re-reads) and return the new generation. ``TopicNotFound``,
        ``InvalidInput`` for bad partitions or negative offsets."""
        ...

    # -- processors ------------------------------------------------------------------------------

    async def transact(self, tx: Transaction) -> None:
        """Commit a processor's input offsets, state changes and outputs (see the module
        docstring for what is atomic per backend); fenced like ``commit``."""
        ...

    async def get_state(self, group: str, store: str, partition: int, key: bytes) -> bytes | None:
        """One key of a state store of an input partition, as of the last transaction."""
        ...

    async def load_state(self, group: str, store: str, partition: int) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a state store of an input partition, sorted by key (restore
        after a crash or a rebalance)."""
        ...
