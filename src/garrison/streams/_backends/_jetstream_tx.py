"""Processor delivery on JetStream, effectively once: applying committed transactions.

``JetStreamLog.transact`` writes a transaction to the transaction log and commits it with one
compare-and-set of the group state (which records its log sequence per input partition); then
:meth:`Delivery.apply` makes it visible:

1. outputs are appended with their ``Record.id`` as ``Nats-Msg-Id``: a second apply within the
   streams' dedupe window stores nothing new;
2. each state value is written stamped with the transaction's log sequence, by compare-and-set
   on its KV revision, and only over a value stamped earlier: a repeated or late apply (a
   stalled former owner) can never put an older value over a newer one;
3. a per-partition "applied" mark (``<group>._a.<topic>.<partition>``) records the sequence.

A crash between the commit and the mark leaves the transaction pending; :meth:`Delivery.finish`
(run by every read of that partition's offsets or state, and before the next transaction)
applies it again. What can still duplicate: outputs of a transaction finished later than the
dedupe window after its first, interrupted, apply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import nats.js.errors

from garrison.core import TransportError, get_logger
from garrison.streams._errors import TopicNotFound

from ._jetstream_group import GroupState, tp_of
from .base import OutputRecord, Record, StateChange, TopicPartition

__all__ = ["Delivery", "TxLog", "dec_state", "enc"]

log = get_logger("streams.jetstream")
T = TypeVar("T")


class TxLog(msgspec.Struct):
    """A committed transaction as stored in the transaction log."""

    group: str
    offsets: list[tuple[str, int, int]]
    state: list[StateChange]
    outputs: list[OutputRecord]


enc = msgspec.msgpack.Encoder()
dec_tx = msgspec.msgpack.Decoder(TxLog)
dec_state = msgspec.msgpack.Decoder(tuple[int, bytes | None])
"""A state value: (log sequence of the transaction that wrote it, value or None = deleted)."""
dec_int = msgspec.msgpack.Decoder(int)


class Delivery:
    """Applies committed transactions (see the module docstring)."""

    def __init__(
        self,
        io: Callable[[str, Awaitable[Any]], Awaitable[Any]],
        js: Any,
        state_kv: Any,
        txlog: str,
        append: Callable[[str, int, Sequence[Record]], Awaitable[list[int]]],
        load_group: Callable[[str], Awaitable[tuple[GroupState, int]]],
    ) -> None:
        self._io = io
        self._js = js
        self._state = state_kv
        self._txlog = txlog
        self._append = append
        self._load_group = load_group
        self._applied: dict[tuple[str, str], int] = {}
        """(group, tp_key) -> the last sequence known applied there (bounded: one entry per
        partition this process touched, not one per transaction)."""

    def _known_applied(self, group: str, key: str, seq: int) -> bool:
        return self._applied.get((group, key), -1) >= seq

    def _note_applied(self, group: str, key: str, seq: int) -> None:
        if self._applied.get((group, key), -1) < seq:
            self._applied[(group, key)] = seq

    async def apply(self, seq: int, tx: TxLog) -> None:
        by_dest: dict[tuple[str, int], list[Record]] = {}
        for out in tx.outputs:
            by_dest.setdefault((out.topic, out.partition), []).append(out.record)
        await asyncio.gather(*(self._output(t, p, rs) for (t, p), rs in by_dest.items()))
        latest: dict[str, bytes | None] = {}
        for sc in tx.state:
            latest[f"{tx.group}.{sc.store}.{sc.partition}.k{sc.key.hex()}"] = sc.value
        await asyncio.gather(*(self._put_versioned(k, seq, v) for k, v in latest.items()))
        await asyncio.gather(
            *(self._mark_applied(tx.group, topic, p, seq) for topic, p, _off in tx.offsets)
        )
        for topic, p, _off in tx.offsets:
            self._note_applied(tx.group, f"{topic}/{p}", seq)

    async def _put_versioned(self, key: str, version: int, value: bytes | None) -> None:
        """Write ``value`` unless the key holds a value of a later transaction."""
        data = enc.encode((version, value))
        for _ in range(1000):
            try:
                entry = await self._io("state read", self._state.get(key))
                current, rev = dec_state.decode(entry.value)[0], int(entry.revision)
            except nats.js.errors.KeyNotFoundError:
                current, rev = -1, 0
            if current >= version:
                return
            try:
                await self._io("state write", self._state.update(key, data, last=rev))
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        raise TransportError(f"state key {key!r}: too much contention")

    async def _mark_applied(self, group: str, topic: str, partition: int, seq: int) -> None:
        key = f"{group}._a.{topic}.{partition}"
        for _ in range(1000):
            try:
                entry = await self._io("applied mark", self._state.get(key))
                current, rev = dec_int.decode(entry.value), int(entry.revision)
            except nats.js.errors.KeyNotFoundError:
                current, rev = -1, 0
            if current >= seq:
                return
            try:
                await self._io("applied mark", self._state.update(key, enc.encode(seq), last=rev))
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                continue

    async def finish(self, group: str, which: Callable[[TopicPartition], bool]) -> GroupState:
        """Apply committed transactions of the chosen partitions that may not be applied yet
        (a crash after the commit point); the group's state."""
        state, _rev = await self._load_group(group)
        for key, seq in sorted(state.pending.items(), key=lambda kv: kv[1]):
            tp = tp_of(key)
            if not which(tp) or self._known_applied(group, key, seq):
                continue
            try:
                entry = await self._io(
                    "applied mark", self._state.get(f"{group}._a.{tp.topic}.{tp.partition}")
                )
                if dec_int.decode(entry.value) >= seq:
                    self._note_applied(group, key, seq)
                    continue
            except nats.js.errors.KeyNotFoundError:
                pass
            try:
                msg = await self._io("transaction log", self._js.get_msg(self._txlog, seq))
            except nats.js.errors.NotFoundError:
                log.warning("group %s: committed transaction %d is gone from the log", group, seq)
                continue
            log.info("group %s: finishing transaction %d of %s", group, seq, tp)
            await self.apply(seq, dec_tx.decode(msg.data))
        return state

    async def _output(self, topic: str, partition: int, records: list[Record]) -> None:
        try:
            await self._append(topic, partition, records)
        except TopicNotFound:
            # Deleted since: its outputs have nowhere to go, and must not block the partition.
            log.warning("outputs to deleted topic %s dropped", topic)
