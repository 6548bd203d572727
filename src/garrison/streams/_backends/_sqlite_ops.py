"""The SQL of the SQLite log: schema and the operations run on its writer thread.

Each function here runs inside the writer's transaction (see
``garrison.core.GroupCommitWriter``), so a check and the writes it guards (fencing, then
offsets, state and outputs) are one atomic unit.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from garrison.core import InvalidInput
from garrison.streams._assign import assign_partitions, next_since
from garrison.streams._errors import Fenced, NotAMember, RecordTooLarge, TopicNotFound

from .base import (
    MAX_RECORD_BYTES,
    Assignment,
    Record,
    StateChange,
    TopicPartition,
    TopicSpec,
    record_size,
    validate_name,
)

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "append_rows",
    "bump",
    "check_change",
    "check_lease",
    "check_records",
    "fence",
    "load_topic",
    "membership",
    "owners",
    "retain",
    "store_offsets",
    "topic_row",
    "Topic",
]

SCHEMA_VERSION = 1
_henc = msgspec.msgpack.Encoder()
tenc = msgspec.json.Encoder()
tdec = msgspec.json.Decoder(list[str])
_RESERVED = ("nats-", "garrison-")

SCHEMA = """
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS log_topics (
    name TEXT PRIMARY KEY, tid INTEGER NOT NULL UNIQUE, partitions INTEGER NOT NULL,
    retention_ms INTEGER, retention_bytes INTEGER, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS log_partitions (
    tid INTEGER NOT NULL, p INTEGER NOT NULL, begin_ INTEGER NOT NULL, end_ INTEGER NOT NULL,
    bytes INTEGER NOT NULL, PRIMARY KEY (tid, p)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_groups (name TEXT PRIMARY KEY, generation INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log_members (
    grp TEXT NOT NULL, member TEXT NOT NULL, topics TEXT NOT NULL, lease_until REAL NOT NULL,
    PRIMARY KEY (grp, member)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_assignment (
    grp TEXT NOT NULL, topic TEXT NOT NULL, p INTEGER NOT NULL, member TEXT NOT NULL,
    since INTEGER NOT NULL, PRIMARY KEY (grp, topic, p)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_offsets (
    grp TEXT NOT NULL, topic TEXT NOT NULL, p INTEGER NOT NULL, off INTEGER NOT NULL,
    PRIMARY KEY (grp, topic, p)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log_state (
    grp TEXT NOT NULL, store TEXT NOT NULL, p INTEGER NOT NULL, k BLOB NOT NULL, v BLOB NOT NULL,
    PRIMARY KEY (grp, store, p, k)) WITHOUT ROWID;
"""


class Topic:
    __slots__ = ("created_at", "spec", "tid")

    def __init__(self, spec: TopicSpec, tid: int, created_at: float) -> None:
        self.spec = spec
        self.tid = tid
        self.created_at = created_at


def topic_row(row: Sequence[Any]) -> Topic:
    name, tid, partitions, rms, rbytes, created = row
    spec = TopicSpec(name=name, partitions=partitions, retention_ms=rms, retention_bytes=rbytes)
    return Topic(spec, tid, created)


def load_topic(conn: sqlite3.Connection, name: str) -> Topic | None:
    row = conn.execute(
        "SELECT name, tid, partitions, retention_ms, retention_bytes, created_at "
        "FROM log_topics WHERE name = ?",
        (name,),
    ).fetchone()
    return None if row is None else topic_row(row)


def _check_one(topic: str, i: int, r: object) -> None:
    loc: list[object] = ["records", i]
    if not isinstance(r, Record):
        raise InvalidInput(
            f"topic {topic!r}: record {i} is a {type(r).__name__}, expected Record",
            [{"loc": loc, "msg": "not a Record"}],
        )
    if not isinstance(r.value, bytes) or not (r.key is None or isinstance(r.key, bytes)):
        raise InvalidInput(
            f"topic {topic!r}: record {i}: value must be bytes and key bytes or None",
            [{"loc": loc, "msg": "not bytes"}],
        )
    for k, v in r.headers.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidInput(
                f"topic {topic!r}: record {i}: header names and values must be str",
                [{"loc": [*loc, "headers"], "msg": "not str"}],
            )
        if not k or k.lower().startswith(_RESERVED):
            raise InvalidInput(
                f"topic {topic!r}: record {i} has a reserved or empty header name {k!r}",
                [{"loc": [*loc, "headers", k], "msg": "reserved header"}],
            )
    n = record_size(r)
    if n > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"topic {topic!r}: record {i} is {n} bytes (limit {MAX_RECORD_BYTES})",
            [{"loc": loc, "msg": "too large"}],
        )


def check_records(topic: str, records: Sequence[Record]) -> None:
    """Validate records (types, header names, size) before anything is written."""
    limit = MAX_RECORD_BYTES
    for i, r in enumerate(records):
        # The common case (plain bytes, no headers, small) costs a few attribute reads.
        if (
            r.__class__ is not Record
            or r.headers
            or r.value.__class__ is not bytes
            or (r.key is not None and r.key.__class__ is not bytes)
            or len(r.value) + (0 if r.key is None else len(r.key)) > limit
        ):
            _check_one(topic, i, r)


def append_rows(
    conn: sqlite3.Connection,
    topic: str,
    tid: int,
    partition: int,
    records: Sequence[Record],
    now_ms: int,
) -> list[int]:
    """Insert ``records`` (already checked) at the end of the partition; their offsets."""
    got = conn.execute(
        "SELECT end_ FROM log_partitions WHERE tid = ? AND p = ?", (tid, partition)
    ).fetchone()
    if got is None:
        raise TopicNotFound(topic)
    start: int = got[0]
    total = 0
    data: list[tuple[int, int, int, int, bytes | None, bytes, bytes | None, int]] = []
    o = start
    enc = _henc.encode
    # One pass, no per-record calls beyond len(): this loop is the ingest hot path.
    for r in records:
        k = r.key
        v = r.value
        hd = r.headers
        n = len(v) if k is None else len(v) + len(k)
        if hd:
            n += sum(len(a) + len(b) for a, b in hd.items())
            data.append((partition, o, r.timestamp or now_ms, now_ms, k, v, enc(hd), n))
        else:
            data.append((partition, o, r.timestamp or now_ms, now_ms, k, v, None, n))
        total += n
        o += 1
    conn.executemany(f"INSERT INTO log_{tid} VALUES (?, ?, ?, ?, ?, ?, ?, ?)", data)
    conn.execute(
        "UPDATE log_partitions SET end_ = ?, bytes = bytes + ? WHERE tid = ? AND p = ?",
        (o, total, tid, partition),
    )
    return list(range(start, o))


def check_lease(lease: object) -> None:
    if not isinstance(lease, int | float) or isinstance(lease, bool) or not 0 < lease <= 3600:
        raise InvalidInput(
            f"lease must be a number of seconds in (0, 3600], got {lease!r}",
            [{"loc": ["lease"], "msg": "out of range"}],
        )


def check_change(c: StateChange) -> tuple[str, int, bytes, bytes | None]:
    if not isinstance(c, StateChange):
        raise InvalidInput(f"state changes must be StateChange, got {type(c).__name__}")
    validate_name("store", c.store)
    if not isinstance(c.key, bytes) or not (c.value is None or isinstance(c.value, bytes)):
        raise InvalidInput("state keys and values must be bytes (value None deletes)")
    return c.store, c.partition, c.key, c.value


def retain(conn: sqlite3.Connection, t: Topic, p: int, now_ms: int) -> int:
    begin, end, size = conn.execute(
        "SELECT begin_, end_, bytes FROM log_partitions WHERE tid = ? AND p = ?", (t.tid, p)
    ).fetchone()
    cut = begin
    if t.spec.retention_ms is not None:
        # Records are in append order, so the first young one ends the expired run.
        row = conn.execute(
            f"SELECT o FROM log_{t.tid} WHERE p = ? AND o >= ? AND at >= ? ORDER BY o LIMIT 1",
            (p, begin, now_ms - t.spec.retention_ms),
        ).fetchone()
        cut = end if row is None else row[0]
    freed = 0
    if cut > begin:
        freed = conn.execute(
            f"SELECT coalesce(sum(n), 0) FROM log_{t.tid} WHERE p = ? AND o < ?", (p, cut)
        ).fetchone()[0]
    if t.spec.retention_bytes is not None and size - freed > t.spec.retention_bytes:
        excess = size - freed - t.spec.retention_bytes
        for o, n in conn.execute(
            f"SELECT o, n FROM log_{t.tid} WHERE p = ? AND o >= ? ORDER BY o", (p, cut)
        ):
            if excess <= 0:
                break
            excess -= n
            freed += n
            cut = o + 1
    if cut <= begin:
        return 0
    removed = conn.execute(f"DELETE FROM log_{t.tid} WHERE p = ? AND o < ?", (p, cut)).rowcount
    conn.execute(
        "UPDATE log_partitions SET begin_ = ?, bytes = bytes - ? WHERE tid = ? AND p = ?",
        (cut, freed, t.tid, p),
    )
    return removed


def owners(conn: sqlite3.Connection, group: str) -> dict[TopicPartition, str]:
    return {
        TopicPartition(t, p): m
        for t, p, m in conn.execute(
            "SELECT topic, p, member FROM log_assignment WHERE grp = ?", (group,)
        )
    }


def bump(conn: sqlite3.Connection, group: str) -> int:
    row = conn.execute(
        "INSERT INTO log_groups VALUES (?, 1) ON CONFLICT (name) DO UPDATE "
        "SET generation = generation + 1 RETURNING generation",
        (group,),
    ).fetchone()
    gen: int = row[0]
    return gen


def membership(
    conn: sqlite3.Connection,
    group: str,
    member: str,
    now: float,
    lease: float,
    topics: list[str] | None,
    *,
    leave: bool = False,
) -> Assignment:
    """Join (``topics`` given), heartbeat (None) or leave; expire the dead; rebalance."""
    members = {
        m: (tdec.decode(ts), lu)
        for m, ts, lu in conn.execute(
            "SELECT member, topics, lease_until FROM log_members WHERE grp = ?", (group,)
        )
    }
    changed = False
    for m, (_, lu) in list(members.items()):
        if lu < now:
            del members[m]
            changed = True
    if leave:
        changed |= members.pop(member, None) is not None
    elif topics is not None:
        old = members.get(member)
        changed |= old is None or old[0] != topics
        members[member] = (topics, now + lease)
    elif member in members:
        members[member] = (members[member][0], now + lease)
    # Write back the member set (small: a group has few members).
    conn.execute("DELETE FROM log_members WHERE grp = ?", (group,))
    conn.executemany(
        "INSERT INTO log_members VALUES (?, ?, ?, ?)",
        [(group, m, tenc.encode(ts).decode(), lu) for m, (ts, lu) in members.items()],
    )
    g = conn.execute("SELECT generation FROM log_groups WHERE name = ?", (group,)).fetchone()
    gen: int = 0 if g is None else g[0]
    if changed or g is None:
        gen = bump(conn, group)
        previous = owners(conn, group)
        since = {
            TopicPartition(t, p): s
            for t, p, s in conn.execute(
                "SELECT topic, p, since FROM log_assignment WHERE grp = ?", (group,)
            )
        }
        counts = dict(conn.execute("SELECT name, partitions FROM log_topics").fetchall())
        owned = assign_partitions({m: ts for m, (ts, _) in members.items()}, counts, previous)
        new_since = next_since(owned, previous, since, gen)
        conn.execute("DELETE FROM log_assignment WHERE grp = ?", (group,))
        conn.executemany(
            "INSERT INTO log_assignment VALUES (?, ?, ?, ?, ?)",
            [(group, tp.topic, tp.partition, m, new_since[tp]) for tp, m in owned.items()],
        )
    if leave:
        return Assignment(
            group=group, member=member, generation=gen, partitions=(), lease_until=now
        )
    if member not in members:
        raise NotAMember(
            f"member {member!r} is not in group {group!r} (it left or its lease expired): "
            "join again"
        )
    mine = tuple(
        sorted(
            TopicPartition(t, p)
            for t, p in conn.execute(
                "SELECT topic, p FROM log_assignment WHERE grp = ? AND member = ?",
                (group, member),
            )
        )
    )
    return Assignment(
        group=group,
        member=member,
        generation=gen,
        partitions=mine,
        lease_until=members[member][1],
    )


def fence(
    conn: sqlite3.Connection,
    group: str,
    member: str,
    generation: int,
    tps: Any,
    now: float,
) -> None:
    row = conn.execute(
        "SELECT lease_until FROM log_members WHERE grp = ? AND member = ?", (group, member)
    ).fetchone()
    if row is None or row[0] < now:
        raise NotAMember(
            f"member {member!r} is not in group {group!r} (it left or its lease expired)"
        )
    g = conn.execute("SELECT generation FROM log_groups WHERE name = ?", (group,)).fetchone()
    if g is None or generation > g[0]:
        raise Fenced(f"group {group!r}: generation {generation} is unknown")
    for tp in tps:
        a = conn.execute(
            "SELECT member, since FROM log_assignment WHERE grp = ? AND topic = ? AND p = ?",
            (group, tp.topic, tp.partition),
        ).fetchone()
        if a is None or a[0] != member or a[1] > generation:
            raise Fenced(
                f"group {group!r}: {tp.topic}[{tp.partition}] is not assigned to {member!r} "
                f"since generation {generation} (stale write rejected)"
            )


def store_offsets(conn: sqlite3.Connection, group: str, rows: list[tuple[str, int, int]]) -> None:
    conn.executemany(
        "INSERT INTO log_offsets VALUES (?, ?, ?, ?) ON CONFLICT (grp, topic, p) "
        "DO UPDATE SET off = excluded.off",
        [(group, t, p, o) for t, p, o in rows],
    )
