"""Processors: a handler per record, keyed state, outputs and dead letters, committed together.

Theory of operation
-------------------
A :class:`Processor` is a member of a consumer group (see ``_consumer``). It takes a batch of
records of one partition and, for each record: decodes it, runs the handler, which reads and
changes keyed state (:class:`StateStore`) and emits records (:meth:`ProcessorContext.emit`).
Then ONE :class:`~._backends.base.Transaction` carries the batch's input offset, its state
changes and its outputs. On SQLite that is one database transaction: after a crash either the
whole batch is applied or none of it, and an unapplied batch is simply processed again —
*exactly once* for state and outputs. Outputs carry deterministic ids (group, input position,
index), so a backend that deduplicates stores a replayed output once (*effectively once*).

A record whose decoding fails, or whose handler raises :class:`BadInput`, goes to the
dead-letter topic with the reason and its source position; a handler that raises anything
else is retried ``max_attempts`` times with backoff, then dead-lettered too. A record never
stops its partition; its failed handler's state changes and outputs are dropped.

The consumer's ``sync_lock`` is held while a batch is processed, so a rebalance re-sync (which
re-reads committed offsets) never interleaves with a transaction. When the generation changes
or a transaction is fenced, the cached state is dropped and reloaded from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from garrison.core import InvalidInput

from ._backends.base import (
    LogBackend,
    OutputRecord,
    Record,
    StoredRecord,
    TopicPartition,
    TopicSpec,
    Transaction,
    partition_for,
    validate_name,
)
from ._consumer import Consumer
from ._errors import Fenced
from ._state import PartitionState, StateStore, check_store_name

__all__ = ["BadInput", "Processor", "ProcessorContext"]

log = logging.getLogger("garrison.streams")
Handler = Callable[["ProcessorContext", Any], Awaitable[None] | None]
BatchHook = Callable[["ProcessorContext"], Awaitable[None] | None]
_json = msgspec.json.Encoder()


class BadInput(InvalidInput):
    """Raise it from a handler: the record is malformed; it goes to the dead-letter topic with
    this message as the reason, and processing goes on."""


class ProcessorContext:
    """What a handler sees: the record being handled, its partition's state, and ``emit``."""

    def __init__(self, proc: Processor, tp: TopicPartition) -> None:
        self._proc = proc
        self.topic = tp.topic
        self.partition = tp.partition
        self.record: StoredRecord | None = None
        """The input record being handled (None in a batch hook)."""
        self._outputs: list[OutputRecord] = []
        self._rec_outputs: list[OutputRecord] = []
        self._n = 0
        self._anchor = -1

    @property
    def key(self) -> bytes | None:
        """The input record's key."""
        return None if self.record is None else self.record.key

    @property
    def load_epoch(self) -> int:
        """Changes whenever cached state must be rebuilt from the log (rebalance, fencing)."""
        return self._proc._load_epoch

    def state(self, name: str) -> StateStore:
        """The state store ``name`` (declared in ``stores=``) of this record's partition."""
        return StateStore(self._proc._part_state(name, self.partition))

    def emit(
        self,
        topic: str,
        value: Any,
        *,
        key: bytes | str | Literal[False] | None = False,
        headers: Mapping[str, str] | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Send a record to ``topic`` when the batch commits (and only then). ``value`` bytes
        go as they are, anything else as JSON; ``key`` defaults to the input record's key
        (so a key keeps its partition), ``timestamp`` to the input's."""
        if key is False:
            key = self.key
        elif isinstance(key, str):
            key = key.encode()
        if key is not None and not isinstance(key, bytes):
            raise InvalidInput(f"emit: key must be bytes, str or None, got {type(key).__name__}")
        data = value if isinstance(value, bytes) else _json.encode(value)
        n = self._proc._partitions_of(topic)
        p = partition_for(key, n) if key is not None else self.partition % n
        # Deterministic: the same input position and emit order give the same id on a replay;
        # a batch hook's outputs are anchored at the batch's last offset ("<offset>b").
        pos = str(self.record.offset) if self.record is not None else f"{self._anchor}b"
        rid = f"{self._proc.group}:{self.topic}:{self.partition}:{pos}:{self._n}"
        self._n += 1
        ts = timestamp if timestamp is not None else (self.record.timestamp if self.record else 0)
        rec = Record(value=data, key=key, headers=dict(headers or {}), timestamp=ts, id=rid)
        self._rec_outputs.append(OutputRecord(topic, p, rec))

    def _begin(self, record: StoredRecord | None) -> None:
        self.record = record
        self._n = 0
        self._rec_outputs = []

    def _end(self, ok: bool) -> None:
        if ok:
            self._outputs.extend(self._rec_outputs)
        self._rec_outputs = []


class Processor:
    """Runs ``handler`` over the records of ``topics`` as a member of ``group``.

    ``stores`` maps each state store name to its value type (msgpack-decoded to it);
    ``decode`` turns a record's value into what the handler gets (default: the raw
    :class:`StoredRecord`); ``dlq`` names the dead-letter topic (default ``<topic>-dlq``,
    created with one partition if missing; ``None``: dead letters are only logged).
    ``outputs`` lists the topics the handler emits to (checked at start).
    """

    def __init__(
        self,
        log: LogBackend,
        topics: str | Sequence[str],
        handler: Handler,
        *,
        group: str,
        stores: Mapping[str, Any] | None = None,
        decode: Callable[[bytes], Any] | None = None,
        outputs: Sequence[str] = (),
        dlq: str | Literal[False] | None = False,
        max_records: int = 500,
        lease: float = 10.0,
        max_attempts: int = 3,
        retry_backoff: float = 0.05,
        member: str | None = None,
        after_batch: BatchHook | None = None,
        start_from: Literal["earliest", "latest"] = "earliest",
    ) -> None:
        self.topics = (topics,) if isinstance(topics, str) else tuple(topics)
        if not self.topics:
            raise InvalidInput("a processor needs at least one input topic")
        for t in self.topics:
            validate_name("topic", t)
        self.group = validate_name("group", group)
        if not callable(handler):
            raise InvalidInput(f"handler must be callable, got {handler!r}")
        self.handler = handler
        self.stores = {check_store_name(n): t for n, t in (stores or {}).items()}
        self.decode = decode
        self.outputs = tuple(validate_name("topic", t) for t in outputs)
        self.dlq = f"{self.topics[0]}-dlq" if dlq is False else dlq
        if self.dlq is not None:
            validate_name("topic", self.dlq)
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise InvalidInput(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.after_batch = after_batch
        self.log = log
        self.consumer = Consumer(
            log,
            self.group,
            self.topics,
            member=member,
            lease=lease,
            max_records=max_records,
            start_from=start_from,
        )
        self._parts: dict[tuple[str, int], PartitionState] = {}
        self._partition_counts: dict[str, int] = {}
        self._load_epoch = 0
        self._seen_generation = 0
        self._task: asyncio.Task[None] | None = None
        self.processed = 0
        """Input records handled and committed by this instance."""
        self.dead_letters = 0
        """Records sent to the dead-letter topic by this instance."""
        self.fenced = 0
        """Batches rejected by fencing (re-processed by the partition's new owner)."""

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check topics, create the dead-letter topic if needed, join the group, run."""
        for t in (*self.topics, *self.outputs):
            self._partition_counts[t] = (await self.log.describe_topic(t)).partitions
        if self.dlq is not None:
            info = await self.log.create_topic(TopicSpec(name=self.dlq, partitions=1))
            self._partition_counts[self.dlq] = info.partitions
        await self.consumer.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish the batch in progress, stop, and leave the group."""
        if self._task is not None:
            async with self.consumer.sync_lock:  # not in the middle of a batch
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.consumer.stop()

    async def __aenter__(self) -> Processor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        """Start, run until cancelled, stop."""
        await self.start()
        try:
            assert self._task is not None
            await self._task
        finally:
            await self.stop()

    async def _run(self) -> None:
        dirty = False
        while True:
            try:
                if dirty:  # after a failure: current membership, then re-read what failed
                    await self.consumer.heartbeat()
                    await self.consumer.rewind()
                    dirty = False
                batches = await self.consumer.poll(timeout=1.0)
                generation = self.consumer.generation
                for tp, recs in batches.items():
                    await self._process(tp, recs, generation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the log failed: back off, re-read, go on
                log.warning("streams processor %s: %r; retrying", self.group, exc)
                self._drop_state()
                dirty = True
                await asyncio.sleep(0.5)

    # -- state -----------------------------------------------------------------------------------

    def _drop_state(self) -> None:
        self._parts.clear()
        self._load_epoch += 1

    def _part_state(self, name: str, partition: int) -> PartitionState:
        part = self._parts.get((name, partition))
        if part is None:
            raise InvalidInput(
                f"state store {name!r} is not declared (stores={sorted(self.stores)})"
            )
        return part

    async def _load(self, partition: int) -> None:
        for name, vt in self.stores.items():
            if (name, partition) not in self._parts:
                part = PartitionState(name, partition, vt)
                part.load(await self.log.load_state(self.group, name, partition))
                self._parts[(name, partition)] = part

    def _partitions_of(self, topic: str) -> int:
        n = self._partition_counts.get(topic)
        if n is None:
            raise InvalidInput(
                f"emit to {topic!r}: declare it in outputs= so the processor checks it at start"
            )
        return n

    # -- a batch ---------------------------------------------------------------------------------

    async def _process(self, tp: TopicPartition, recs: list[StoredRecord], gen: int) -> None:
        async with self.consumer.sync_lock:
            if gen != self.consumer.generation:
                return  # a re-sync happened meanwhile: these records come again
            if gen != self._seen_generation:
                self._drop_state()
                self._seen_generation = gen
            await self._load(tp.partition)
            ctx = ProcessorContext(self, tp)
            dead = 0
            for rec in recs:
                reason = await self._handle(ctx, rec)
                if reason is not None:
                    dead += 1
                    self._dead_letter(ctx, rec, reason)
            if self.after_batch is not None:
                ctx._begin(None)
                ctx._anchor = recs[-1].offset
                result = self.after_batch(ctx)
                if inspect.isawaitable(result):
                    await result
                ctx._end(True)
                for part in self._parts.values():
                    if part.partition == tp.partition:
                        part.end_record(True)
            parts = [p for p in self._parts.values() if p.partition == tp.partition]
            tx = Transaction(
                group=self.group,
                member=self.consumer.member,
                generation=gen,
                offsets={tp: recs[-1].offset + 1},
                state=[c for p in parts for c in p.changes()],
                outputs=ctx._outputs,
            )
            failed: BaseException | None = None
            try:
                await self.log.transact(tx)
            except Exception as exc:
                failed = exc
                for p in parts:
                    p.end_batch(False)
                self._drop_state()
            else:
                for p in parts:
                    p.end_batch(True)
                self.processed += len(recs)
                self.dead_letters += dead
        if failed is not None:
            # Nothing of the batch was applied, and the consumer has moved past it: it must be
            # read again from the committed offset once the membership is current.
            if not isinstance(failed, Fenced):
                raise failed  # _run re-reads every partition after backing off
            self.fenced += 1
            await self.consumer.heartbeat()
            await self.consumer.rewind([tp])

    async def _handle(self, ctx: ProcessorContext, rec: StoredRecord) -> str | None:
        """Run the handler on one record; the dead-letter reason, or None when it succeeded."""
        parts = [p for p in self._parts.values() if p.partition == ctx.partition]
        try:
            value: Any = rec if self.decode is None else self.decode(rec.value)
        except Exception as exc:
            return f"decode error: {type(exc).__name__}: {exc}"
        for attempt in range(1, self.max_attempts + 1):
            ctx._begin(rec)
            try:
                result = self.handler(ctx, value)
                if inspect.isawaitable(result):
                    await result
            except BadInput as exc:
                self._end(ctx, parts, False)
                return f"bad input: {exc}"
            except Exception as exc:
                self._end(ctx, parts, False)
                if attempt == self.max_attempts:
                    return f"handler failed {attempt} time(s): {type(exc).__name__}: {exc}"
                await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1))
            else:
                self._end(ctx, parts, True)
                return None
        return None  # pragma: no cover (the loop always returns)

    @staticmethod
    def _end(ctx: ProcessorContext, parts: list[PartitionState], ok: bool) -> None:
        ctx._end(ok)
        for p in parts:
            p.end_record(ok)

    def _dead_letter(self, ctx: ProcessorContext, rec: StoredRecord, reason: str) -> None:
        log.warning(
            "streams processor %s: %s[%d]@%d dead-lettered: %s",
            self.group, rec.topic, rec.partition, rec.offset, reason,
        )  # fmt: skip
        if self.dlq is None:
            return
        headers = dict(rec.headers)
        headers.update(
            {
                "dlq-reason": reason[:2000],
                "dlq-topic": rec.topic,
                "dlq-partition": str(rec.partition),
                "dlq-offset": str(rec.offset),
                "dlq-group": self.group,
            }
        )
        rid = f"{self.group}:{rec.topic}:{rec.partition}:{rec.offset}:dlq"
        record = Record(
            value=rec.value, key=rec.key, headers=headers, timestamp=rec.timestamp, id=rid
        )
        ctx._outputs.append(OutputRecord(self.dlq, 0, record))
