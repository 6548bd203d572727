"""The NATS JetStream log backend: ``nats://host:port[,host:port...][?options]``.

Mapping (the contract is in :mod:`.base`)
-----------------------------------------
* **One stream per partition**: topic ``t``, partition ``p`` is the stream ``<prefix>_t_p``
  with the one subject ``<prefix>.t.<t>.<p>``. A record's offset is its stream sequence
  minus one, so offsets are dense from 0 like SQLite's, ``end`` is the stream's last sequence
  and the lag of a group is exact arithmetic. Retention maps natively: ``retention_ms`` is the
  stream's ``max_age``, ``retention_bytes`` its ``max_bytes`` (per partition, as the contract
  says; JetStream counts its own per-message overhead too). One stream per topic with a subject
  per partition was measured as fast to publish into (the client is the bottleneck), but would
  give sparse offsets, per-topic byte limits and lag only by counting per subject.
* **Records** are a msgpack envelope ``[key, value, headers, timestamp]`` as the message data
  (binary keys and any header value survive; no NATS header parsing on the hot path). A
  ``Record.id`` becomes ``Nats-Msg-Id``: JetStream stores one message per id within the
  stream's ``duplicate_window`` (option ``dedupe_window``) and acknowledges a duplicate with
  the original's sequence. A timestamp of 0 reads back as the server's append time.
* **Appends** are pipelined async publishes (acknowledgements awaited together); those of one
  call are sent under a per-partition lock, so calls made in order stay in order and
  contiguous. JetStream (2.9) has no multi-message atomic publish: if the connection fails in
  the middle of a call, a prefix of it may be stored. A retried call with ids stores the rest
  once; without ids it may store the prefix twice (at least once).
* **Topics, groups, offsets** live in the KV bucket ``<prefix>_meta``: ``topic.<name>`` (the
  spec; its creation is the commit point of ``create_topic``, after the streams) and
  ``group.<name>`` (see :mod:`._jetstream_group`: membership, leases, generation, assignment,
  offsets, each change one revision-checked compare-and-set).
* **Processor delivery** (effectively once): see :meth:`JetStreamLog.transact`. Keyed state
  lives in the KV bucket ``<prefix>_state``, each value stamped with the transaction that wrote
  it; committed transactions go to the stream ``<prefix>_txlog`` (its last 16 per
  partition are kept, a week at most: a pending one is always among them).

Leases are measured on the members' clocks (``clock.time()``): hosts must keep their clocks
in step (NTP) to well within a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, StorageType, StreamConfig

from garrison.core import (
    Clock,
    GarrisonError,
    InvalidInput,
    NotFound,
    SystemClock,
    TransportError,
    get_logger,
)
from garrison.streams._errors import (
    GroupNotFound,
    LogClosed,
    TopicExists,
    TopicNotFound,
)

from ._jetstream_checks import check_lease, check_offset, check_records
from ._jetstream_config import JetStreamOptions, parse_url
from ._jetstream_conn import connect
from ._jetstream_group import GroupState, tp_key, tp_of
from ._jetstream_pull import Cursor, CursorPool, scan
from ._jetstream_tx import Delivery, TxLog, dec_state
from .base import (
    Assignment,
    Capabilities,
    GroupInfo,
    OutputRecord,
    PartitionOffsets,
    Record,
    StateChange,
    StoredRecord,
    TopicInfo,
    TopicPartition,
    TopicSpec,
    Transaction,
    validate_member,
    validate_name,
    validate_partition,
)

__all__ = ["JetStreamLog", "JetStreamOptions", "open_jetstream"]

log = get_logger("streams.jetstream")
T = TypeVar("T")

_STREAM_EXISTS = 10058
_HANDLED = (nats.js.errors.NotFoundError, nats.js.errors.KeyWrongLastSequenceError)
_MAX_TX_BYTES = 900_000
"""A transaction is one message of the transaction log: NATS' 1 MiB payload, with room."""
_TXLOG_PER_PARTITION = 16
"""Transactions kept per subject (group and first input partition) of the transaction log."""


def open_jetstream(url: str, *, clock: Clock | None = None) -> JetStreamLog:
    """The JetStream log named by ``url`` (not yet opened); ``ConfigError`` for a bad URL."""
    servers, opts = parse_url(url)
    return JetStreamLog(servers, opts, clock=clock)


# -- stored shapes ------------------------------------------------------------------------------


class _TopicMeta(msgspec.Struct):
    spec: TopicSpec
    created_at: float
    deleting: bool = False
    """Set first by ``delete_topic``: the topic is gone for everyone, and whoever sees this
    (a later delete or create) finishes removing its streams before going on."""


_Envelope = tuple[bytes | None, bytes, dict[str, str] | None, int]
_enc = msgspec.msgpack.Encoder()
_dec_env = msgspec.msgpack.Decoder(_Envelope)
_dec_meta = msgspec.msgpack.Decoder(_TopicMeta)
_dec_group = msgspec.msgpack.Decoder(GroupState)


class JetStreamLog:
    """The :class:`~garrison.streams._backends.base.LogBackend` on NATS JetStream."""

    def __init__(
        self, servers: list[str], options: JetStreamOptions, *, clock: Clock | None = None
    ) -> None:
        self.servers = servers
        self.options = options
        self.capabilities = Capabilities(
            exactly_once=False,
            deduplicates=True,
            dedupe_window_s=options.dedupe_window,
            max_transaction_bytes=_MAX_TX_BYTES,
            atomic_append=False,
        )
        self._clock: Clock = clock or SystemClock()
        self._nc: Any = None
        self._js: Any = None
        self._meta: Any = None
        self._state: Any = None
        self._closed = False
        self._opened = False
        self._specs: dict[str, TopicSpec] = {}
        self._send_locks: dict[str, asyncio.Lock] = {}
        self._pool = CursorPool(self._new_cursor)
        self._delivery: Delivery
        p = options.prefix
        self._meta_bucket = f"{p}_meta"
        self._state_bucket = f"{p}_state"
        self._txlog = f"{p}_txlog"

    def __repr__(self) -> str:
        return f"<JetStreamLog {','.join(self.servers)} prefix={self.options.prefix}>"

    # -- naming ---------------------------------------------------------------------------------

    def stream_name(self, topic: str, partition: int) -> str:
        """The stream holding one partition."""
        return f"{self.options.prefix}_{topic}_{partition}"

    def subject(self, topic: str, partition: int) -> str:
        """The subject records of one partition are published to."""
        return f"{self.options.prefix}.t.{topic}.{partition}"

    # -- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and create the KV buckets and the transaction log if missing."""
        if self._closed:
            raise LogClosed("the JetStream log is closed")
        if self._opened:
            return
        o = self.options

        self._nc, self._js = await connect(self.servers, o, lambda: self._opened, str(self))
        storage = StorageType.FILE if o.storage == "file" else StorageType.MEMORY
        try:
            self._meta = await self._io("open", self._bucket(self._meta_bucket, storage))
            self._state = await self._io("open", self._bucket(self._state_bucket, storage))
            txlog = self._ensure_stream(
                StreamConfig(
                    name=self._txlog,
                    subjects=[f"{o.prefix}.txlog.>"],
                    storage=storage,
                    num_replicas=o.replicas,
                    # A partition's pending transaction is always among the last few on its
                    # subject (a new one is written only after it was applied; a fenced
                    # member adds at most one stray): keep a few per partition, a week at most.
                    max_msgs_per_subject=_TXLOG_PER_PARTITION,
                    max_age=7 * 86400,
                    allow_direct=True,
                )
            )
            await self._io("open", txlog)
        except BaseException:
            await self._nc.close()
            raise
        self._delivery = Delivery(
            self._io, self._js, self._state, self._txlog, self.append, self._load_group
        )
        self._opened = True

    async def close(self) -> None:
        """Close the cursors and the connection (acknowledged writes are durable already)."""
        if self._closed:
            return
        self._closed = True
        nc, self._nc = self._nc, None
        if nc is None:
            return
        for c in self._pool.all():
            if not nc.is_closed:
                await c.close()
        with contextlib.suppress(Exception):
            await nc.close()

    async def destroy(self) -> list[str]:
        """Delete every stream and KV bucket of this log's prefix (all its topics, groups,
        offsets and state); the names deleted. For tests and decommissioning."""
        self._live()
        names = await self._stream_names(f"{self.options.prefix}.>")
        doomed = [n for n in names if n.startswith(f"{self.options.prefix}_")]
        doomed += [f"KV_{self._meta_bucket}", f"KV_{self._state_bucket}"]
        for c in self._pool.all():
            await c.close()
        for name in doomed:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._io("delete stream", self._js.delete_stream(name))
        self._specs.clear()
        return doomed

    async def _stream_names(self, subject: str) -> list[str]:
        """Names of the streams whose subjects overlap ``subject`` (every page)."""
        names: list[str] = []
        while True:
            body = json.dumps({"offset": len(names), "subject": subject}).encode()
            msg = await self._io(
                "list streams", self._nc.request("$JS.API.STREAM.NAMES", body, timeout=5.0)
            )
            resp = json.loads(msg.data)
            page = resp.get("streams") or []
            names += page
            if not page or len(names) >= resp.get("total", 0):
                return names

    async def _bucket(self, bucket: str, storage: StorageType) -> Any:
        try:
            return await self._js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            if not self.options.create:
                raise NotFound(
                    f"no JetStream log with prefix {self.options.prefix!r} at "
                    f"{', '.join(self.servers)} (its KV bucket {bucket!r} does not exist)"
                ) from None
        try:
            return await self._js.create_key_value(
                bucket=bucket, history=1, storage=storage, replicas=self.options.replicas
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise TransportError(f"cannot create KV bucket {bucket!r}: {exc}") from exc
            return await self._js.key_value(bucket)  # created meanwhile by another process

    async def _ensure_stream(self, config: StreamConfig) -> None:
        try:
            await self._js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _STREAM_EXISTS:
                raise
            # Left by a creation that failed half way, or retention changed: take ours.
            await self._js.update_stream(config)

    # -- I/O plumbing ---------------------------------------------------------------------------

    def _live(self) -> None:
        if self._closed:
            raise LogClosed("the JetStream log is closed")
        if not self._opened:
            raise LogClosed("the JetStream log is not open: await log.open() first")

    async def _io(self, what: str, aw: Awaitable[T]) -> T:
        """Await a nats-py call, turning its failures into garrison's errors."""
        try:
            return await aw
        except (GarrisonError, *_HANDLED):
            raise  # "not found" and "wrong last sequence" are answers the callers act on
        except nats.errors.ConnectionClosedError as exc:
            if self._closed:
                raise LogClosed("the JetStream log is closed") from exc
            raise TransportError(f"JetStream {what}: the connection is closed") from exc
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise TransportError(f"JetStream {what}: {type(exc).__name__}: {exc}") from exc

    def _new_cursor(self, stream: str, seq: int) -> Cursor:
        return Cursor(self._nc, self._js, stream, seq)

    # -- topics ---------------------------------------------------------------------------------

    async def _topic_entry(self, topic: str) -> tuple[_TopicMeta | None, int]:
        try:
            entry = await self._io("topic lookup", self._meta.get(f"topic.{topic}"))
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        return _dec_meta.decode(entry.value), int(entry.revision)

    async def _topic_meta(self, topic: str) -> _TopicMeta | None:
        """The topic's entry, None if it does not exist (or is being deleted)."""
        meta, _rev = await self._topic_entry(topic)
        return None if meta is None or meta.deleting else meta

    async def _spec(self, topic: str) -> TopicSpec:
        """The spec of ``topic`` (cached: partitions never change); ``TopicNotFound``."""
        spec = self._specs.get(topic)
        if spec is None:
            meta = await self._topic_meta(validate_name("topic", topic))
            if meta is None:
                raise TopicNotFound(topic)
            spec = self._specs[topic] = meta.spec
        return spec

    async def create_topic(self, spec: TopicSpec, *, exist_ok: bool = True) -> TopicInfo:
        """Create the partitions' streams, then the topic's KV entry (the commit point)."""
        self._live()
        if not isinstance(spec, TopicSpec):
            raise InvalidInput(f"expected a TopicSpec, got {type(spec).__name__}")
        spec.validate()
        existing, _rev = await self._topic_entry(spec.name)
        if existing is not None and existing.deleting:
            await self._remove_topic(existing)  # a delete that did not finish: finish it
        elif existing is not None:
            if not exist_ok:
                raise TopicExists(f"topic {spec.name!r} exists already")
            return await self.describe_topic(spec.name)
        o = self.options
        window = o.dedupe_window
        if spec.retention_ms is not None:
            window = min(window, spec.retention_ms / 1000)
        storage = StorageType.FILE if o.storage == "file" else StorageType.MEMORY
        for p in range(spec.partitions):
            config = StreamConfig(
                name=self.stream_name(spec.name, p),
                subjects=[self.subject(spec.name, p)],
                storage=storage,
                num_replicas=o.replicas,
                max_age=spec.retention_ms / 1000 if spec.retention_ms else None,
                max_bytes=spec.retention_bytes or -1,
                discard=DiscardPolicy.OLD,
                duplicate_window=window,
                allow_direct=True,
            )
            await self._io(f"create stream of {spec.name}[{p}]", self._ensure_stream(config))
        meta = _TopicMeta(spec, self._clock.time())
        try:
            await self._io(
                "create topic", self._meta.create(f"topic.{spec.name}", _enc.encode(meta))
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            if not exist_ok:
                raise TopicExists(f"topic {spec.name!r} exists already") from None
        self._specs.pop(spec.name, None)
        return await self.describe_topic(spec.name)

    async def describe_topic(self, topic: str) -> TopicInfo:
        """The topic's spec and offsets; ``TopicNotFound``."""
        self._live()
        meta = await self._topic_meta(validate_name("topic", topic))
        if meta is None:
            raise TopicNotFound(topic)
        self._specs[topic] = meta.spec
        offsets = await self._offsets(meta.spec)
        return TopicInfo(spec=meta.spec, offsets=tuple(offsets), created_at=meta.created_at)

    async def list_topics(self) -> list[str]:
        """Every topic name, sorted."""
        self._live()
        entries = await self._scan(f"KV_{self._meta_bucket}", f"$KV.{self._meta_bucket}.topic.>")
        return sorted(
            subject.rsplit(".", 1)[1]
            for subject, (_seq, data) in entries.items()
            if not _dec_meta.decode(data).deleting
        )

    async def delete_topic(self, topic: str) -> bool:
        """Remove the KV entry (from then on the topic does not exist), then its streams and
        the committed offsets on it."""
        self._live()
        validate_name("topic", topic)
        while True:
            meta, rev = await self._topic_entry(topic)
            if meta is None:
                return False
            if meta.deleting:  # an earlier delete stopped half way: finish it
                await self._remove_topic(meta)
                return False
            meta.deleting = True
            try:
                await self._io(
                    "delete topic", self._meta.update(f"topic.{topic}", _enc.encode(meta), rev)
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # changed meanwhile (deleted and created again?): look again
            break
        await self._remove_topic(meta)
        return True

    async def _remove_topic(self, meta: _TopicMeta) -> None:
        """Delete the streams of a topic marked ``deleting``, the offsets on it, its entry."""
        topic = meta.spec.name
        self._specs.pop(topic, None)
        for p in range(meta.spec.partitions):
            stream = self.stream_name(topic, p)
            for c in self._pool.drop_stream(stream):
                await c.close()
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await self._io("delete stream", self._js.delete_stream(stream))
        for group in await self._group_names():
            await self._update_group(group, lambda s, now, c: s.drop_topic(topic), create=False)
        await self._io("delete topic", self._meta.purge(f"topic.{topic}"))

    async def apply_retention(self) -> int:
        """JetStream applies ``max_age`` and ``max_bytes`` itself, continuously: returns 0."""
        self._live()
        return 0

    # -- records --------------------------------------------------------------------------------

    async def append(self, topic: str, partition: int, records: Sequence[Record]) -> list[int]:
        """Publish ``records`` in order (see the module docstring for what is atomic)."""
        self._live()
        spec = await self._spec(topic)
        validate_partition(topic, partition, spec.partitions)
        check_records(topic, records)
        if not records:
            return []
        subject = self.subject(topic, partition)
        lock = self._send_locks.get(subject)
        if lock is None:
            lock = self._send_locks[subject] = asyncio.Lock()
        publish = self._js.publish_async
        encode = _enc.encode
        futures: list[asyncio.Future[Any]] = []

        async def send_all() -> list[Any]:
            # Sent under the partition's lock (order and contiguity across pipelined calls);
            # acknowledged outside it, all together.
            async with lock:
                for r in records:
                    payload = encode((r.key, r.value, r.headers or None, r.timestamp))
                    headers = {"Nats-Msg-Id": r.id} if r.id is not None else None
                    futures.append(await publish(subject, payload, headers=headers))
            return await asyncio.wait_for(asyncio.gather(*futures), self.options.ack_timeout)

        try:
            acks = await self._io("publish", send_all())
        except TransportError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NoStreamResponseError):
                self._specs.pop(topic, None)
                raise TopicNotFound(topic) from None
            raise
        finally:
            for f in futures:
                f.cancel()  # no-op when acknowledged; else frees publish_async's window slot
        return [a.seq - 1 for a in acks]

    async def read(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        max_records: int = 1000,
        timeout: float = 0.0,
    ) -> list[StoredRecord]:
        """Records from ``offset`` on; waits up to ``timeout`` s on the server for new ones."""
        self._live()
        spec = await self._spec(topic)
        validate_partition(topic, partition, spec.partitions)
        check_offset(offset)
        if not isinstance(max_records, int) or isinstance(max_records, bool) or max_records < 1:
            raise InvalidInput(f"max_records must be an int >= 1, got {max_records!r}")
        if not isinstance(timeout, int | float) or timeout < 0:
            raise InvalidInput(f"timeout must be a number >= 0, got {timeout!r}")
        stream = self.stream_name(topic, partition)
        for attempt in range(2):
            cursor, new = self._pool.take(stream, offset + 1)
            try:
                async with cursor.lock:
                    if new:
                        config = Cursor.config_from(offset + 1, max(60.0, timeout * 2))
                        try:
                            await self._io("create consumer", cursor.start(config))
                        except nats.js.errors.NotFoundError:
                            self._specs.pop(topic, None)
                            raise TopicNotFound(topic) from None
                    got = await self._io("read", cursor.fetch(max_records, float(timeout)))
            except BaseException:
                cursor.broken = True
                raise
            finally:
                for c in self._pool.evict(stream):
                    await c.close()
            # A cursor the server stopped answering (a lost connection, a consumer it
            # removed) returns what it got; with nothing, ask once more on a new one.
            if got or not cursor.broken or attempt:
                break
        out = []
        for seq, ts_ns, _subject, data, _headers in got:
            key, value, headers, ts = _dec_env.decode(data)
            out.append(
                StoredRecord(
                    topic=topic,
                    partition=partition,
                    offset=seq - 1,
                    value=value,
                    key=key,
                    headers=headers or {},
                    timestamp=ts or ts_ns // 1_000_000,
                )
            )
        return out

    async def _offsets(self, spec: TopicSpec) -> list[PartitionOffsets]:
        async def one(p: int) -> PartitionOffsets:
            try:
                info = await self._io(
                    "stream info", self._js.stream_info(self.stream_name(spec.name, p))
                )
            except nats.js.errors.NotFoundError:
                self._specs.pop(spec.name, None)
                raise TopicNotFound(spec.name) from None
            st = info.state
            end = st.last_seq
            begin = st.first_seq - 1 if st.messages else end
            return PartitionOffsets(p, max(begin, 0), end)

        return list(await asyncio.gather(*(one(p) for p in range(spec.partitions))))

    async def offsets(self, topic: str) -> list[PartitionOffsets]:
        """Begin/end offsets of every partition."""
        self._live()
        return await self._offsets(await self._spec(topic))

    async def _scan(self, stream: str, subjects: str) -> dict[str, tuple[int, bytes]]:
        """The last live KV entry per subject matching ``subjects``: subject -> (seq, data)."""
        return await self._io("scan", scan(self._nc, self._js, stream, subjects))

    # -- consumer groups ------------------------------------------------------------------------

    async def _load_group(self, group: str) -> tuple[GroupState, int]:
        try:
            entry = await self._io("group lookup", self._meta.get(f"group.{group}"))
        except nats.js.errors.KeyNotFoundError:
            return GroupState(), 0
        return _dec_group.decode(entry.value), int(entry.revision)

    async def _partitions(self, topics: Sequence[str]) -> dict[str, int]:
        """Partition counts of the topics that still exist."""
        out = {}
        for t in sorted(set(topics)):
            with contextlib.suppress(TopicNotFound):
                out[t] = (await self._spec(t)).partitions
        return out

    async def _update_group(
        self,
        group: str,
        change: Callable[[GroupState, float, dict[str, int]], T],
        *,
        create: bool = True,
        topics: Sequence[str] = (),
    ) -> T:
        """Read the group, apply ``change``, write it back with compare-and-set; retry on a
        concurrent change. ``change`` raises to abort (nothing written)."""
        for attempt in range(1000):
            state, rev = await self._load_group(group)
            # Rebalances need the partition counts of every subscribed topic.
            all_topics = {t for m in state.members.values() for t in m.topics} | set(topics)
            counts = await self._partitions(sorted(all_topics))
            if rev == 0 and not create:
                return change(state, self._clock.time(), counts)
            result = change(state, self._clock.time(), counts)
            try:
                await self._io(
                    "group update",
                    self._meta.update(f"group.{group}", _enc.encode(state), last=rev),
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                await asyncio.sleep(min(0.001 * attempt, 0.05))
                continue
            return result
        raise TransportError(f"group {group!r}: too much contention updating its state")

    async def join(
        self, group: str, member: str, topics: Sequence[str], *, lease: float
    ) -> Assignment:
        """Add or renew ``member``; rebalance when the member set or subscriptions change."""
        self._live()
        validate_name("group", group)
        validate_member(member)
        check_lease(lease)
        if isinstance(topics, str) or not topics:
            raise InvalidInput(f"topics must be a non-empty list of topic names, got {topics!r}")
        for t in topics:
            await self._spec(t)

        def change(s: GroupState, now: float, counts: dict[str, int]) -> Assignment:
            s.join(member, topics, now + lease, now, counts)
            return s.assignment(group, member)

        return await self._update_group(group, change, topics=topics)

    async def heartbeat(self, group: str, member: str, *, lease: float) -> Assignment:
        """Renew ``member``'s lease and return its assignment; ``NotAMember``."""
        self._live()
        validate_name("group", group)
        validate_member(member)
        check_lease(lease)

        def change(s: GroupState, now: float, counts: dict[str, int]) -> Assignment:
            s.heartbeat(member, now + lease, now, counts)
            return s.assignment(group, member)

        return await self._update_group(group, change)

    async def leave(self, group: str, member: str) -> None:
        """Remove ``member`` and rebalance."""
        self._live()
        validate_name("group", group)
        validate_member(member)
        await self._update_group(
            group, lambda s, now, counts: s.leave(member, now, counts), create=False
        )

    async def describe_group(self, group: str) -> GroupInfo:
        """The group's generation and live members; ``GroupNotFound``."""
        self._live()
        validate_name("group", group)
        state, rev = await self._load_group(group)
        if rev == 0 or state.empty():
            raise GroupNotFound(group)
        return state.info(group, self._clock.time())

    async def _group_names(self) -> list[str]:
        entries = await self._scan(f"KV_{self._meta_bucket}", f"$KV.{self._meta_bucket}.group.>")
        return sorted(subject.rsplit(".", 1)[1] for subject in entries)

    async def list_groups(self) -> list[str]:
        """Every group with members or committed offsets."""
        self._live()
        entries = await self._scan(f"KV_{self._meta_bucket}", f"$KV.{self._meta_bucket}.group.>")
        return sorted(
            subject.rsplit(".", 1)[1]
            for subject, (_seq, data) in entries.items()
            if not _dec_group.decode(data).empty()
        )

    # -- offsets --------------------------------------------------------------------------------

    async def _check_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not isinstance(offsets, Mapping):
            raise InvalidInput(f"offsets must be a mapping, got {type(offsets).__name__}")
        for tp, off in offsets.items():
            if not isinstance(tp, TopicPartition):
                raise InvalidInput(f"offsets keys must be TopicPartition, got {tp!r}")
            spec = await self._spec(tp.topic)
            validate_partition(tp.topic, tp.partition, spec.partitions)
            check_offset(off)

    async def commit(
        self, group: str, member: str, generation: int, offsets: Mapping[TopicPartition, int]
    ) -> None:
        """Store the next offsets to process, fenced; ``Fenced`` / ``NotAMember``."""
        self._live()
        validate_name("group", group)
        validate_member(member)
        await self._check_offsets(offsets)
        tps = sorted(offsets)

        def change(s: GroupState, now: float, counts: dict[str, int]) -> None:
            s.check_fence(group, member, generation, tps, now)
            for tp in tps:
                s.offsets[tp_key(tp)] = offsets[tp]

        await self._update_group(group, change)

    async def committed(self, group: str, topic: str | None = None) -> dict[TopicPartition, int]:
        """Committed offsets, after finishing any transaction committed but not yet applied."""
        self._live()
        validate_name("group", group)
        if topic is not None:
            validate_name("topic", topic)
        state = await self._delivery.finish(group, lambda tp: topic is None or tp.topic == topic)
        return {
            tp: off
            for tp, off in sorted((tp_of(k), v) for k, v in state.offsets.items())
            if topic is None or tp.topic == topic
        }

    async def reset_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> int:
        """Set committed offsets unfenced and bump the generation (fences every member)."""
        self._live()
        validate_name("group", group)
        await self._check_offsets(offsets)
        return await self._update_group(group, lambda s, now, c: s.reset(offsets))

    # -- processors -----------------------------------------------------------------------------

    async def transact(self, tx: Transaction) -> None:
        """Effectively once: (1) the transaction goes to the transaction log; (2) one
        compare-and-set of the group state checks the fence and records the offsets with the
        log sequence (the commit point); (3) it is applied: outputs published with their ids
        (deduplicated by JetStream), state values written stamped with the log sequence (a
        value stamped later is never overwritten, so a late or repeated apply changes nothing),
        and a per-partition "applied" mark. A crash between (2) and the mark is finished by the
        next ``committed`` / ``get_state`` / ``load_state`` of the partition, or ``transact``."""
        self._live()
        if not isinstance(tx, Transaction):
            raise InvalidInput(f"expected a Transaction, got {type(tx).__name__}")
        validate_name("group", tx.group)
        validate_member(tx.member)
        await self._check_offsets(tx.offsets)
        owned = {tp.partition for tp in tx.offsets}
        for sc in tx.state:
            if not isinstance(sc, StateChange):
                raise InvalidInput(f"state changes must be StateChange, got {type(sc).__name__}")
            validate_name("store", sc.store)
            if not isinstance(sc.key, bytes) or not (
                sc.value is None or isinstance(sc.value, bytes)
            ):
                raise InvalidInput("state keys and values must be bytes (value None deletes)")
            if sc.partition not in owned:
                raise InvalidInput(
                    f"state change of store {sc.store!r} is for partition {sc.partition}, which "
                    f"is not among the transaction's input partitions {sorted(owned)}"
                )
        for i, out in enumerate(tx.outputs):
            if not isinstance(out, OutputRecord):
                raise InvalidInput(f"outputs[{i}]: expected an OutputRecord")
            spec = await self._spec(out.topic)
            validate_partition(out.topic, out.partition, spec.partitions)
            check_records(out.topic, [out.record])
        tps = sorted(tx.offsets)
        body = TxLog(
            group=tx.group,
            offsets=[(tp.topic, tp.partition, tx.offsets[tp]) for tp in tps],
            state=list(tx.state),
            outputs=list(tx.outputs),
        )
        data = _enc.encode(body)
        if len(data) > _MAX_TX_BYTES:
            raise InvalidInput(
                f"transaction of {len(data)} bytes is larger than the JetStream backend's "
                f"{_MAX_TX_BYTES}: commit smaller batches"
            )
        # A transaction of an earlier life of this partition must be applied before this one.
        await self._delivery.finish(tx.group, lambda tp: tp in tx.offsets)
        first = f"{tps[0].topic}.{tps[0].partition}" if tps else "_"
        subject = f"{self.options.prefix}.txlog.{tx.group}.{first}"
        seq = 0
        for attempt in range(1000):
            state, rev = await self._load_group(tx.group)
            # Fence first: a stale member writes nothing, not even to the log.
            state.check_fence(tx.group, tx.member, tx.generation, tps, self._clock.time())
            # Written after reading the group, so log order follows commit order per partition.
            ack = await self._io("transaction log", self._js.publish(subject, data))
            seq = ack.seq
            for tp in tps:
                state.offsets[tp_key(tp)] = tx.offsets[tp]
                state.pending[tp_key(tp)] = seq
            try:
                await self._io(
                    "commit",
                    self._meta.update(f"group.{tx.group}", _enc.encode(state), last=rev),
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                await asyncio.sleep(min(0.001 * attempt, 0.05))
                continue
            break
        else:
            raise TransportError(f"group {tx.group!r}: too much contention to commit")
        await self._delivery.apply(seq, body)

    async def get_state(self, group: str, store: str, partition: int, key: bytes) -> bytes | None:
        """One state value of an input partition, as of the last committed transaction."""
        self._live()
        validate_name("group", group)
        validate_name("state store", store)
        check_offset(partition, "partition")
        await self._delivery.finish(group, lambda tp: tp.partition == partition)
        try:
            entry = await self._io(
                "state read", self._state.get(f"{group}.{store}.{partition}.k{bytes(key).hex()}")
            )
        except nats.js.errors.KeyNotFoundError:
            return None
        return dec_state.decode(entry.value)[1]

    async def load_state(self, group: str, store: str, partition: int) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of a state store of an input partition, sorted by key."""
        self._live()
        validate_name("group", group)
        validate_name("state store", store)
        check_offset(partition, "partition")
        await self._delivery.finish(group, lambda tp: tp.partition == partition)
        prefix = f"$KV.{self._state_bucket}.{group}.{store}.{partition}."
        entries = await self._scan(f"KV_{self._state_bucket}", prefix + ">")
        out = []
        for subject, (_seq, data) in entries.items():
            value = dec_state.decode(data)[1]
            if value is not None:
                out.append((bytes.fromhex(subject[len(prefix) + 1 :]), value))
        return sorted(out)
