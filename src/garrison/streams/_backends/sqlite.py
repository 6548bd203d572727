"""The embedded SQLite log: WAL, one group-committing writer thread, readers off the loop.

Layout: one table ``log_<n>`` per topic, clustered by ``(partition, offset)`` (``WITHOUT
ROWID``): an append is a run of inserts at the end of a partition's range, a read a range scan,
deleting a topic a ``DROP TABLE``. There is no index by key: the log is read by position only
(keyed lookups are the state stores' job). ``log_partitions`` keeps each partition's
``begin``/``end``/``bytes``, read and updated in the appending transaction, so several processes
may append to one file (``BEGIN IMMEDIATE`` serializes them) and offsets stay dense.

Durability: ``synchronous=FULL`` (default) fsyncs the WAL at every commit, and an append is
acknowledged only after the commit that carries it: with group commit one fsync covers every
append queued meanwhile. ``synchronous=normal`` survives a process crash but may lose the last
acknowledged commits on a power loss.

Waiting readers are woken by this process's appends; appends by other processes are noticed by
re-reading at most every ``poll_interval`` seconds while a reader waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import msgspec

from garrison.core import Clock, ConfigError, GroupCommitWriter, InvalidInput, SystemClock
from garrison.streams._assign import by_member
from garrison.streams._errors import (
    GroupNotFound,
    LogClosed,
    TopicExists,
    TopicNotFound,
)

from ._sqlite_ops import (
    SCHEMA,
    SCHEMA_VERSION,
    Topic,
    append_rows,
    bump,
    check_change,
    check_lease,
    check_records,
    fence,
    load_topic,
    membership,
    owners,
    retain,
    store_offsets,
    tdec,
    topic_row,
)
from .base import (
    Assignment,
    Capabilities,
    GroupInfo,
    MemberInfo,
    OutputRecord,
    PartitionOffsets,
    Record,
    StoredRecord,
    TopicInfo,
    TopicPartition,
    TopicSpec,
    Transaction,
    validate_member,
    validate_name,
    validate_partition,
)

__all__ = ["SCHEMA_VERSION", "SqliteLog"]

T = TypeVar("T")
_hdec = msgspec.msgpack.Decoder(dict[str, str])


class _Readers:
    """A few read connections used from worker threads (WAL: readers never block the writer)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], size: int = 4) -> None:
        self._connect = connect
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._size = size

    def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            if len(self._all) < self._size:
                conn = self._connect()
                self._all.append(conn)
            else:
                conn = self._pool.get()
        try:
            return fn(conn)
        finally:
            self._pool.put(conn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(self._run, fn)

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()


class SqliteLog:
    """The embedded SQLite log backend (see the module docstring and ``base.py``)."""

    capabilities = Capabilities(exactly_once=True, deduplicates=False)

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "full",
        clock: Clock | None = None,
        poll_interval: float = 0.05,
        retention_interval: float = 30.0,
    ) -> None:
        self._tmpdir: str | None = None
        self._memory = path == ":memory:"
        if self._memory:
            synchronous = "off"
        self.path = path
        self._sync = synchronous
        self._clock = clock or SystemClock()
        self._poll = poll_interval
        self._retention_interval = retention_interval
        self._writer = GroupCommitWriter(self._connect, max_batch=4096, what="the SQLite log")
        self._readers = _Readers(self._connect)
        self._topics: dict[str, Topic] = {}
        self._events: dict[tuple[str, int], asyncio.Event] = {}
        self._retention_task: asyncio.Task[None] | None = None
        self._open = False
        self._closed = False

    # -- plumbing --------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync.upper()}")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _check_open(self) -> None:
        if not self._open:
            raise LogClosed(
                "the SQLite log is closed" if self._closed else "the SQLite log is not open"
            )

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()
        return await self._writer.submit(op)

    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    def _notify(self, topic: str, partition: int) -> None:
        ev = self._events.pop((topic, partition), None)
        if ev is not None:
            ev.set()

    async def open(self) -> None:
        """Create the file and tables (or check an existing file's schema version)."""
        if self._open:
            return
        if self._closed:
            raise LogClosed("the SQLite log was closed; open a new one")
        await asyncio.to_thread(self._migrate)
        self._writer.start()
        self._open = True
        self._retention_task = asyncio.get_running_loop().create_task(self._retention_loop())

    def _migrate(self) -> None:
        if self._memory and self._tmpdir is None:
            # Several connections must see one database: a private temporary file, removed on
            # close, stands in for ``:memory:`` (which is per connection).
            self._tmpdir = tempfile.mkdtemp(prefix="garrison-log-")
            self.path = os.path.join(self._tmpdir, "log.db")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise ConfigError(
                f"directory {parent!r} of the log file does not exist", key="streams.url"
            )
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the log file {self.path!r}: {exc}", key="streams.url"
            ) from exc
        try:
            conn.execute("BEGIN IMMEDIATE")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            row = conn.execute("SELECT value FROM log_meta WHERE key = 'schema'").fetchone()
            if row is None:
                conn.execute("INSERT INTO log_meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise ConfigError(
                    f"the log file {self.path!r} has schema version {row[0]}, newer than this "
                    f"garrison's ({SCHEMA_VERSION}): upgrade garrison",
                    key="streams.url",
                )
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise ConfigError(
                f"{self.path!r} is not a usable SQLite log: {exc}", key="streams.url"
            ) from exc
        finally:
            conn.close()

    async def close(self) -> None:
        """Commit queued writes, stop the writer and close every connection."""
        if not self._open:
            return
        self._open = False
        self._closed = True
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
        await asyncio.to_thread(self._writer.stop)
        self._readers.close()
        for ev in self._events.values():
            ev.set()
        self._events.clear()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    async def __aenter__(self) -> SqliteLog:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def writer_stats(self) -> tuple[int, int]:
        """(transactions committed, operations they carried): group commit at work."""
        return self._writer.stats.commits, self._writer.stats.writes

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retention_interval)
            with contextlib.suppress(Exception):  # a failed pass is retried at the next tick
                await self.apply_retention()

    async def _topic(self, name: str) -> Topic:
        validate_name("topic", name)
        t = self._topics.get(name)
        if t is None:
            self._check_open()
            t = await self._readers.run(lambda c: load_topic(c, name))
            if t is None:
                raise TopicNotFound(name)
            self._topics[name] = t
        return t

    # -- topics ----------------------------------------------------------------------------------

    async def create_topic(self, spec: TopicSpec, *, exist_ok: bool = True) -> TopicInfo:
        """Create the topic (see the contract)."""
        if not isinstance(spec, TopicSpec):
            raise InvalidInput(f"expected a TopicSpec, got {type(spec).__name__}")
        spec.validate()
        now = self._clock.time()

        def op(conn: sqlite3.Connection) -> bool:
            if load_topic(conn, spec.name) is not None:
                if not exist_ok:
                    raise TopicExists(f"topic {spec.name!r} exists already")
                return False
            tid = conn.execute("SELECT coalesce(max(tid), 0) + 1 FROM log_topics").fetchone()[0]
            conn.execute(
                "INSERT INTO log_topics VALUES (?, ?, ?, ?, ?, ?)",
                (spec.name, tid, spec.partitions, spec.retention_ms, spec.retention_bytes, now),
            )
            conn.execute(
                f"CREATE TABLE log_{tid} (p INTEGER NOT NULL, o INTEGER NOT NULL, "
                "ts INTEGER NOT NULL, at INTEGER NOT NULL, k BLOB, v BLOB NOT NULL, h BLOB, "
                "n INTEGER NOT NULL, PRIMARY KEY (p, o)) WITHOUT ROWID"
            )
            conn.executemany(
                "INSERT INTO log_partitions VALUES (?, ?, 0, 0, 0)",
                [(tid, p) for p in range(spec.partitions)],
            )
            return True

        await self._write(op)
        self._topics.pop(spec.name, None)
        return await self.describe_topic(spec.name)

    async def describe_topic(self, topic: str) -> TopicInfo:
        """The topic's spec and offsets."""
        t = await self._topic(topic)
        return TopicInfo(
            spec=t.spec, offsets=tuple(await self.offsets(topic)), created_at=t.created_at
        )

    async def list_topics(self) -> list[str]:
        """Every topic name, sorted."""
        self._check_open()
        rows = await self._readers.run(
            lambda c: c.execute("SELECT name FROM log_topics ORDER BY name").fetchall()
        )
        return [r[0] for r in rows]

    async def delete_topic(self, topic: str) -> bool:
        """Drop the topic's table, partitions, offsets and assignments."""
        validate_name("topic", topic)

        def op(conn: sqlite3.Connection) -> bool:
            t = load_topic(conn, topic)
            if t is None:
                return False
            conn.execute(f"DROP TABLE IF EXISTS log_{t.tid}")
            conn.execute("DELETE FROM log_partitions WHERE tid = ?", (t.tid,))
            conn.execute("DELETE FROM log_topics WHERE name = ?", (topic,))
            conn.execute("DELETE FROM log_offsets WHERE topic = ?", (topic,))
            conn.execute("DELETE FROM log_assignment WHERE topic = ?", (topic,))
            return True

        existed = await self._write(op)
        self._topics.pop(topic, None)
        return existed

    async def apply_retention(self) -> int:
        """Remove records past each topic's age or size limit; how many."""
        now_ms = self._now_ms()

        def op(conn: sqlite3.Connection) -> int:
            removed = 0
            topics = conn.execute(
                "SELECT name, tid, partitions, retention_ms, retention_bytes, created_at "
                "FROM log_topics WHERE retention_ms IS NOT NULL OR retention_bytes IS NOT NULL"
            ).fetchall()
            for row in topics:
                t = topic_row(row)
                for p in range(t.spec.partitions):
                    removed += retain(conn, t, p, now_ms)
            return removed

        return await self._write(op)

    # -- records ---------------------------------------------------------------------------------

    async def append(self, topic: str, partition: int, records: Sequence[Record]) -> list[int]:
        """Append records durably (see the contract)."""
        t = await self._topic(topic)
        validate_partition(topic, partition, t.spec.partitions)
        if not records:
            return []
        check_records(topic, records)
        now_ms = self._now_ms()
        tid = t.tid
        try:
            offs = await self._write(
                lambda c: append_rows(c, topic, tid, partition, records, now_ms)
            )
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                self._topics.pop(topic, None)
                raise TopicNotFound(topic) from exc
            raise
        self._notify(topic, partition)
        return offs

    async def read(
        self,
        topic: str,
        partition: int,
        offset: int,
        *,
        max_records: int = 1000,
        timeout: float = 0.0,
    ) -> list[StoredRecord]:
        """Records from ``offset`` on; waits up to ``timeout`` s for some if there are none."""
        t = await self._topic(topic)
        validate_partition(topic, partition, t.spec.partitions)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise InvalidInput(
                f"offset must be an int >= 0, got {offset!r}",
                [{"loc": ["offset"], "msg": "invalid offset"}],
            )
        if not isinstance(max_records, int) or max_records < 1:
            raise InvalidInput(
                f"max_records must be an int >= 1, got {max_records!r}",
                [{"loc": ["max_records"], "msg": "invalid"}],
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        sql = f"SELECT o, ts, k, v, h FROM log_{t.tid} WHERE p = ? AND o >= ? ORDER BY o LIMIT ?"
        args = (partition, offset, max_records)

        def fetch(conn: sqlite3.Connection) -> list[StoredRecord]:
            return [
                StoredRecord(
                    topic=topic,
                    partition=partition,
                    offset=o,
                    timestamp=ts,
                    key=k,
                    value=v,
                    headers={} if h is None else _hdec.decode(h),
                )
                for o, ts, k, v, h in conn.execute(sql, args)
            ]

        while True:
            self._check_open()
            # Take the wake-up event BEFORE reading: an append after the read still wakes us.
            ev = self._events.get((topic, partition))
            if ev is None:
                ev = self._events[(topic, partition)] = asyncio.Event()
            try:
                got = await self._readers.run(fetch)
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    self._topics.pop(topic, None)
                    raise TopicNotFound(topic) from exc
                raise
            left = deadline - loop.time()
            if got or left <= 0:
                return got
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), min(left, self._poll))

    async def offsets(self, topic: str) -> list[PartitionOffsets]:
        """Begin/end offsets per partition."""
        t = await self._topic(topic)
        rows = await self._readers.run(
            lambda c: c.execute(
                "SELECT p, begin_, end_ FROM log_partitions WHERE tid = ? ORDER BY p", (t.tid,)
            ).fetchall()
        )
        if not rows:
            self._topics.pop(topic, None)
            raise TopicNotFound(topic)
        return [PartitionOffsets(p, b, e) for p, b, e in rows]

    # -- consumer groups -------------------------------------------------------------------------

    async def join(
        self, group: str, member: str, topics: Sequence[str], *, lease: float
    ) -> Assignment:
        """Add or renew ``member`` with its topics, and rebalance if anything changed."""
        validate_name("group", group)
        validate_member(member)
        check_lease(lease)
        if isinstance(topics, str) or not topics:
            raise InvalidInput(
                f"topics must be a non-empty list of names, got {topics!r}",
                [{"loc": ["topics"], "msg": "invalid"}],
            )
        subs = sorted({validate_name("topic", t) for t in topics})
        for name in subs:
            await self._topic(name)
        now = self._clock.time()
        return await self._write(lambda c: membership(c, group, member, now, lease, subs))

    async def heartbeat(self, group: str, member: str, *, lease: float) -> Assignment:
        """Renew the lease; the current assignment."""
        validate_name("group", group)
        validate_member(member)
        check_lease(lease)
        now = self._clock.time()
        return await self._write(lambda c: membership(c, group, member, now, lease, None))

    async def leave(self, group: str, member: str) -> None:
        """Remove ``member`` and rebalance."""
        validate_name("group", group)
        validate_member(member)
        now = self._clock.time()

        def op(conn: sqlite3.Connection) -> None:
            membership(conn, group, member, now, 0.0, None, leave=True)

        await self._write(op)

    async def describe_group(self, group: str) -> GroupInfo:
        """Generation and live members."""
        validate_name("group", group)
        self._check_open()
        now = self._clock.time()

        def q(conn: sqlite3.Connection) -> GroupInfo | None:
            g = conn.execute(
                "SELECT generation FROM log_groups WHERE name = ?", (group,)
            ).fetchone()
            has_offsets = conn.execute(
                "SELECT 1 FROM log_offsets WHERE grp = ? LIMIT 1", (group,)
            ).fetchone()
            if g is None and has_offsets is None:
                return None
            owned = by_member(owners(conn, group))
            members = tuple(
                MemberInfo(
                    member=m,
                    topics=tuple(tdec.decode(ts)),
                    lease_until=lu,
                    partitions=owned.get(m, ()),
                )
                for m, ts, lu in conn.execute(
                    "SELECT member, topics, lease_until FROM log_members WHERE grp = ? "
                    "ORDER BY member",
                    (group,),
                )
                if lu >= now
            )
            return GroupInfo(name=group, generation=g[0] if g else 0, members=members)

        info = await self._readers.run(q)
        if info is None:
            raise GroupNotFound(group)
        return info

    async def list_groups(self) -> list[str]:
        """Groups with members or committed offsets."""
        self._check_open()
        rows = await self._readers.run(
            lambda c: c.execute(
                "SELECT grp FROM log_members UNION SELECT grp FROM log_offsets ORDER BY 1"
            ).fetchall()
        )
        return [r[0] for r in rows]

    # -- offsets ---------------------------------------------------------------------------------

    async def commit(
        self, group: str, member: str, generation: int, offsets: Mapping[TopicPartition, int]
    ) -> None:
        """Fenced commit of next offsets."""
        validate_name("group", group)
        validate_member(member)
        rows = await self._offset_rows(offsets)
        now = self._clock.time()

        def op(conn: sqlite3.Connection) -> None:
            fence(conn, group, member, generation, offsets.keys(), now)
            store_offsets(conn, group, rows)

        await self._write(op)

    async def committed(self, group: str, topic: str | None = None) -> dict[TopicPartition, int]:
        """Committed offsets of ``group``."""
        validate_name("group", group)
        self._check_open()
        if topic is not None:
            validate_name("topic", topic)
        sql = "SELECT topic, p, off FROM log_offsets WHERE grp = ? AND topic LIKE ?"
        args = (group, "%" if topic is None else topic.replace("_", r"\_"))
        sql += r" ESCAPE '\'"
        rows = await self._readers.run(lambda c: c.execute(sql, args).fetchall())
        return {TopicPartition(t, p): o for t, p, o in rows}

    async def reset_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> int:
        """Operator override; fences every live member."""
        validate_name("group", group)
        rows = await self._offset_rows(offsets)

        def op(conn: sqlite3.Connection) -> int:
            store_offsets(conn, group, rows)
            gen = bump(conn, group)
            conn.execute("UPDATE log_assignment SET since = ? WHERE grp = ?", (gen, group))
            return gen

        return await self._write(op)

    async def _offset_rows(
        self, offsets: Mapping[TopicPartition, int]
    ) -> list[tuple[str, int, int]]:
        if not isinstance(offsets, Mapping):
            raise InvalidInput(f"offsets must be a mapping, got {type(offsets).__name__}")
        rows = []
        for tp, off in offsets.items():
            if not isinstance(tp, TopicPartition):
                raise InvalidInput(f"offsets keys must be TopicPartition, got {tp!r}")
            t = await self._topic(tp.topic)
            validate_partition(tp.topic, tp.partition, t.spec.partitions)
            if not isinstance(off, int) or isinstance(off, bool) or off < 0:
                raise InvalidInput(
                    f"offset for {tp.topic}[{tp.partition}] must be an int >= 0, got {off!r}",
                    [{"loc": ["offsets", tp.topic, tp.partition], "msg": "invalid offset"}],
                )
            rows.append((tp.topic, tp.partition, off))
        return rows

    # -- processors ------------------------------------------------------------------------------

    async def transact(self, tx: Transaction) -> None:
        """One transaction: fence check, input offsets, state changes, outputs."""
        validate_name("group", tx.group)
        validate_member(tx.member)
        rows = await self._offset_rows(tx.offsets)
        outs: list[tuple[str, int, int, list[Record]]] = []
        by_dest: dict[tuple[str, int], list[Record]] = {}
        for o in tx.outputs:
            if not isinstance(o, OutputRecord):
                raise InvalidInput(f"outputs must be OutputRecord, got {type(o).__name__}")
            by_dest.setdefault((o.topic, o.partition), []).append(o.record)
        for (name, p), recs in by_dest.items():
            t = await self._topic(name)
            validate_partition(name, p, t.spec.partitions)
            check_records(name, recs)
            outs.append((name, t.tid, p, recs))
        state = [check_change(c) for c in tx.state]
        owned = {tp.partition for tp in tx.offsets}
        for store, p, _, _ in state:
            if p not in owned:
                raise InvalidInput(
                    f"state change of store {store!r} is for partition {p}, which is not among "
                    f"the transaction's input partitions {sorted(owned)}"
                )
        now = self._clock.time()
        now_ms = int(now * 1000)

        def op(conn: sqlite3.Connection) -> None:
            fence(conn, tx.group, tx.member, tx.generation, tx.offsets.keys(), now)
            store_offsets(conn, tx.group, rows)
            # The last change of each key wins; then one statement per kind of change.
            final = {(store, p, k): v for store, p, k, v in state}
            conn.executemany(
                "DELETE FROM log_state WHERE grp = ? AND store = ? AND p = ? AND k = ?",
                [(tx.group, *sk) for sk, v in final.items() if v is None],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO log_state VALUES (?, ?, ?, ?, ?)",
                [(tx.group, *sk, v) for sk, v in final.items() if v is not None],
            )
            for name, tid, p, recs in outs:
                append_rows(conn, name, tid, p, recs, now_ms)

        await self._write(op)
        for name, _, p, _ in outs:
            self._notify(name, p)

    async def get_state(self, group: str, store: str, partition: int, key: bytes) -> bytes | None:
        """One state value."""
        validate_name("group", group)
        validate_name("store", store)
        _check_state_partition(partition)
        if not isinstance(key, bytes):
            raise InvalidInput(f"state keys are bytes, got {type(key).__name__}")
        self._check_open()
        row = await self._readers.run(
            lambda c: c.execute(
                "SELECT v FROM log_state WHERE grp = ? AND store = ? AND p = ? AND k = ?",
                (group, store, partition, key),
            ).fetchone()
        )
        return None if row is None else bytes(row[0])

    async def load_state(self, group: str, store: str, partition: int) -> list[tuple[bytes, bytes]]:
        """Every (key, value) of one store partition, by key."""
        validate_name("group", group)
        validate_name("store", store)
        _check_state_partition(partition)
        self._check_open()
        rows = await self._readers.run(
            lambda c: c.execute(
                "SELECT k, v FROM log_state WHERE grp = ? AND store = ? AND p = ? ORDER BY k",
                (group, store, partition),
            ).fetchall()
        )
        return [(bytes(k), bytes(v)) for k, v in rows]


def _check_state_partition(partition: object) -> None:
    if not isinstance(partition, int) or isinstance(partition, bool) or partition < 0:
        raise InvalidInput(f"partition must be an int >= 0, got {partition!r}")
