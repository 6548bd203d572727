"""The actor store on SQLite: the actor tables in the workflow store's file, written by its one
group-committing writer, so actor turns and workflow transitions of a process share commits.

The tables are the ``actors`` component of ``garrison_schema`` (migrated at ``actor_open``, in a
write of the same writer: a database written by a newer garrison is refused).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from garrison.core import ConfigError
from garrison.durable._errors import LeaseLost, WorkflowNotFound

from .actors_base import (
    ActorLoad,
    ActorMessage,
    ActorRecord,
    NewMessage,
    PostResult,
    Reminder,
    Reply,
    Turn,
    TurnResult,
)
from .base import InboxItem, NewInstance
from .sqlite import SqliteStore, _do_post, _insert

__all__ = ["COMPONENT", "MIGRATIONS", "SqliteActorStore"]

COMPONENT = "actors"

_V1 = """
CREATE TABLE actor_rows (
    actor       TEXT NOT NULL,
    key         TEXT NOT NULL,
    state       BLOB,
    next_seq    INTEGER NOT NULL DEFAULT 0,
    done_seq    INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    lease_until REAL,
    epoch       INTEGER NOT NULL DEFAULT 0,
    wake_at     REAL,
    updated_at  REAL NOT NULL,
    PRIMARY KEY (actor, key)
);
CREATE INDEX actor_rows_owner ON actor_rows (owner) WHERE owner IS NOT NULL;
CREATE INDEX actor_rows_wake ON actor_rows (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX actor_rows_pending ON actor_rows (actor, key) WHERE next_seq > done_seq;

CREATE TABLE actor_inbox (
    actor   TEXT NOT NULL,
    key     TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    msg_id  TEXT NOT NULL UNIQUE,
    method  TEXT NOT NULL,
    args    BLOB NOT NULL,
    record  INTEGER NOT NULL,
    at      REAL NOT NULL,
    PRIMARY KEY (actor, key, seq)
);

CREATE TABLE actor_replies (
    msg_id TEXT PRIMARY KEY,
    ok     INTEGER NOT NULL,
    data   BLOB NOT NULL,
    at     REAL NOT NULL
);
CREATE INDEX actor_replies_at ON actor_replies (at);

CREATE TABLE actor_reminders (
    actor   TEXT NOT NULL,
    key     TEXT NOT NULL,
    name    TEXT NOT NULL,
    due_at  REAL NOT NULL,
    every   REAL,
    payload BLOB NOT NULL,
    PRIMARY KEY (actor, key, name)
);
"""

MIGRATIONS: list[str] = [_V1]
"""Migration ``i`` takes the actor schema from version ``i`` to ``i + 1``. Append, never edit."""

_INBOX_LOAD = 1000
"""Pending messages read with a claim; more are read as the actor works through them."""


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the actor tables to the newest version (inside the caller's transaction)."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS garrison_schema "
        "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    row = conn.execute(
        "SELECT version FROM garrison_schema WHERE component = ?", (COMPONENT,)
    ).fetchone()
    current = 0 if row is None else int(row[0])
    if current > len(MIGRATIONS):
        raise ConfigError(
            f"the database's {COMPONENT} schema is version {current}, newer than this "
            f"garrison knows ({len(MIGRATIONS)}): upgrade garrison",
            key="durable.store",
        )
    for script in MIGRATIONS[current:]:
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(
        "INSERT INTO garrison_schema (component, version) VALUES (?, ?) "
        "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
        (COMPONENT, len(MIGRATIONS)),
    )
    return len(MIGRATIONS)


# -- write operations (on the writer thread, inside its transaction) ----------------------------


def _post_one(conn: sqlite3.Connection, m: NewMessage) -> PostResult:
    row = conn.execute(
        "SELECT ok, data FROM actor_replies WHERE msg_id = ?", (m.msg_id,)
    ).fetchone()
    if row is not None:
        reply = Reply(bool(row[0]), row[1])
        return PostResult(actor=m.actor, key=m.key, msg_id=m.msg_id, reply=reply, duplicate=True)
    row = conn.execute(
        "SELECT actor, key, seq FROM actor_inbox WHERE msg_id = ?", (m.msg_id,)
    ).fetchone()
    if row is not None:
        return PostResult(actor=row[0], key=row[1], msg_id=m.msg_id, seq=row[2], duplicate=True)
    seq, owner, lease_until = conn.execute(
        "INSERT INTO actor_rows (actor, key, next_seq, updated_at) VALUES (?, ?, 1, ?) "
        "ON CONFLICT (actor, key) DO UPDATE SET next_seq = next_seq + 1 "
        "RETURNING next_seq, owner, lease_until",
        (m.actor, m.key, m.at),
    ).fetchone()
    conn.execute(
        "INSERT INTO actor_inbox (actor, key, seq, msg_id, method, args, record, at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (m.actor, m.key, seq, m.msg_id, m.method, m.args, int(m.record), m.at),
    )
    holder = (
        owner if owner is not None and lease_until is not None and lease_until >= m.at else None
    )
    return PostResult(actor=m.actor, key=m.key, msg_id=m.msg_id, seq=seq, owner=holder)


def _reminders(conn: sqlite3.Connection, actor: str, key: str) -> list[Reminder]:
    return [
        Reminder(name=r[0], due_at=r[1], every=r[2], payload=r[3])
        for r in conn.execute(
            "SELECT name, due_at, every, payload FROM actor_reminders "
            "WHERE actor = ? AND key = ? ORDER BY due_at, name",
            (actor, key),
        )
    ]


def _inbox(
    conn: sqlite3.Connection, actor: str, key: str, after: int, limit: int
) -> list[ActorMessage]:
    return [
        ActorMessage(seq=r[0], msg_id=r[1], method=r[2], args=r[3], record=bool(r[4]))
        for r in conn.execute(
            "SELECT seq, msg_id, method, args, record FROM actor_inbox "
            "WHERE actor = ? AND key = ? AND seq > ? ORDER BY seq LIMIT ?",
            (actor, key, after, limit),
        )
    ]


def _load(conn: sqlite3.Connection, row: Sequence[Any]) -> ActorLoad:
    actor, key, epoch, state, done_seq, next_seq = row
    return ActorLoad(
        actor=actor,
        key=key,
        epoch=epoch,
        state=state,
        done_seq=done_seq,
        next_seq=next_seq,
        reminders=_reminders(conn, actor, key),
        inbox=_inbox(conn, actor, key, done_seq, _INBOX_LOAD) if next_seq > done_seq else [],
    )


def _claim(
    conn: sqlite3.Connection, worker: str, actor: str, key: str, now: float, until: float
) -> ActorLoad | None:
    conn.execute(
        "INSERT INTO actor_rows (actor, key, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT (actor, key) DO NOTHING",
        (actor, key, now),
    )
    row = conn.execute(
        "UPDATE actor_rows SET owner = ?, lease_until = ?, epoch = epoch + 1 "
        "WHERE actor = ? AND key = ? AND (owner IS NULL OR owner = ? OR lease_until < ?) "
        "RETURNING actor, key, epoch, state, done_seq, next_seq",
        (worker, until, actor, key, worker, now),
    ).fetchone()
    return None if row is None else _load(conn, row)


def _claim_ready(
    conn: sqlite3.Connection,
    worker: str,
    actors: list[str],
    now: float,
    until: float,
    limit: int,
) -> list[ActorLoad]:
    if not actors or limit <= 0:
        return []
    marks = ",".join("?" * len(actors))
    free = "(owner IS NULL OR lease_until < ?)"
    # two index-friendly halves (pending messages; due reminders) rather than one OR
    rows = conn.execute(
        "UPDATE actor_rows SET owner = ?, lease_until = ?, epoch = epoch + 1 WHERE rowid IN ("
        f"SELECT rowid FROM actor_rows WHERE next_seq > done_seq AND actor IN ({marks}) "
        f"AND {free} UNION SELECT rowid FROM actor_rows WHERE wake_at <= ? "
        f"AND actor IN ({marks}) AND {free} LIMIT ?) "
        "RETURNING actor, key, epoch, state, done_seq, next_seq",
        (worker, until, *actors, now, now, *actors, now, limit),
    ).fetchall()
    return [_load(conn, r) for r in rows]


def _commit(conn: sqlite3.Connection, t: Turn) -> TurnResult:
    row = conn.execute(
        "SELECT epoch FROM actor_rows WHERE actor = ? AND key = ?", (t.actor, t.key)
    ).fetchone()
    if row is None or row[0] != t.epoch:
        held = None if row is None else row[0]
        raise LeaseLost(
            f"actor {t.actor}/{t.key}: the turn of epoch {t.epoch} is stale (epoch is {held})"
        )
    conn.execute(
        "DELETE FROM actor_inbox WHERE actor = ? AND key = ? AND seq <= ?",
        (t.actor, t.key, t.done_seq),
    )
    if t.replies:
        conn.executemany(
            "INSERT OR REPLACE INTO actor_replies (msg_id, ok, data, at) VALUES (?, ?, ?, ?)",
            [(mid, int(r.ok), r.data, t.now) for mid, r in t.replies],
        )
    reminders = bool(t.set_reminders or t.cancel_reminders)
    if t.cancel_reminders:
        conn.executemany(
            "DELETE FROM actor_reminders WHERE actor = ? AND key = ? AND name = ?",
            [(t.actor, t.key, n) for n in t.cancel_reminders],
        )
    if t.set_reminders:
        conn.executemany(
            "INSERT OR REPLACE INTO actor_reminders (actor, key, name, due_at, every, payload) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(t.actor, t.key, r.name, r.due_at, r.every, r.payload) for r in t.set_reminders],
        )
    sets = ["done_seq = ?", "updated_at = ?"]
    params: list[Any] = [t.done_seq, t.now]
    if t.state is not None:
        sets.append("state = ?")
        params.append(t.state)
    if reminders:
        sets.append(
            "wake_at = (SELECT MIN(due_at) FROM actor_reminders WHERE actor = ? AND key = ?)"
        )
        params += [t.actor, t.key]
    if t.release:
        sets += ["owner = NULL", "lease_until = NULL"]
    conn.execute(
        f"UPDATE actor_rows SET {', '.join(sets)} WHERE actor = ? AND key = ?",
        (*params, t.actor, t.key),
    )
    events: list[InboxItem] = []
    dropped: list[str] = []
    started: list[str] = []
    for w in t.workflow_starts:
        new = NewInstance(
            id=w.workflow_id, workflow=w.workflow, run_id=w.run_id, args=w.args, now=t.now
        )
        if _insert(conn, new):
            started.append(w.workflow_id)
    for e in t.workflow_events:
        try:
            item = _do_post(conn, e.workflow_id, "event", e.name, e.payload, t.now)
        except WorkflowNotFound:
            item = None
        if item is None:
            dropped.append(e.workflow_id)
        else:
            events.append(item)
    return TurnResult(
        posted=[_post_one(conn, m) for m in t.outbox],
        events=events,
        started=started,
        dropped=dropped,
    )


def _release(conn: sqlite3.Connection, worker: str, keys: list[tuple[str, str, int]] | None) -> int:
    if keys is None:
        return conn.execute(
            "UPDATE actor_rows SET owner = NULL, lease_until = NULL WHERE owner = ?", (worker,)
        ).rowcount
    n = 0
    for actor, key, epoch in keys:
        n += conn.execute(
            "UPDATE actor_rows SET owner = NULL, lease_until = NULL "
            "WHERE actor = ? AND key = ? AND owner = ? AND epoch = ?",
            (actor, key, worker, epoch),
        ).rowcount
    return n


class SqliteActorStore:
    """The actor contract on an (open) :class:`SqliteStore`, sharing its writer and readers."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def actor_open(self) -> None:
        """See :meth:`ActorStore.actor_open`."""
        await self.store._write(migrate)

    async def actor_post(self, msgs: list[NewMessage]) -> list[PostResult]:
        """See :meth:`ActorStore.actor_post`."""
        return await self.store._write(lambda c: [_post_one(c, m) for m in msgs])

    async def actor_claim(
        self, worker: str, actor: str, key: str, now: float, lease_until: float
    ) -> ActorLoad | None:
        """See :meth:`ActorStore.actor_claim`."""
        return await self.store._write(lambda c: _claim(c, worker, actor, key, now, lease_until))

    async def actor_claim_ready(
        self, worker: str, actors: list[str], now: float, lease_until: float, limit: int
    ) -> list[ActorLoad]:
        """See :meth:`ActorStore.actor_claim_ready`."""
        return await self.store._write(
            lambda c: _claim_ready(c, worker, actors, now, lease_until, limit)
        )

    async def actor_commit(self, turn: Turn) -> TurnResult:
        """See :meth:`ActorStore.actor_commit`."""
        return await self.store._write(lambda c: _commit(c, turn))

    async def actor_release(self, worker: str, keys: list[tuple[str, str, int]] | None) -> int:
        """See :meth:`ActorStore.actor_release`."""
        return await self.store._write(lambda c: _release(c, worker, keys))

    async def actor_renew(self, worker: str, lease_until: float) -> int:
        """See :meth:`ActorStore.actor_renew`."""
        return await self.store._write(
            lambda c: (
                c.execute(
                    "UPDATE actor_rows SET lease_until = ? WHERE owner = ?", (lease_until, worker)
                ).rowcount
            )
        )

    async def actor_prune(self, before: float) -> int:
        """See :meth:`ActorStore.actor_prune`."""
        return await self.store._write(
            lambda c: c.execute("DELETE FROM actor_replies WHERE at < ?", (before,)).rowcount
        )

    async def actor_get(self, actor: str, key: str) -> ActorRecord | None:
        """See :meth:`ActorStore.actor_get`."""

        def op(c: sqlite3.Connection) -> ActorRecord | None:
            c.execute("BEGIN")  # one snapshot for the two reads
            try:
                row = c.execute(
                    "SELECT state, done_seq, next_seq, owner, lease_until, epoch, wake_at "
                    "FROM actor_rows WHERE actor = ? AND key = ?",
                    (actor, key),
                ).fetchone()
                if row is None:
                    return None
                return ActorRecord(
                    actor=actor,
                    key=key,
                    state=row[0],
                    done_seq=row[1],
                    next_seq=row[2],
                    owner=row[3],
                    lease_until=row[4],
                    epoch=row[5],
                    wake_at=row[6],
                    reminders=_reminders(c, actor, key),
                )
            finally:
                c.execute("COMMIT")

        return await self.store._read(op)

    async def actor_inbox(
        self, actor: str, key: str, after_seq: int, limit: int
    ) -> list[ActorMessage]:
        """See :meth:`ActorStore.actor_inbox`."""
        return await self.store._read(lambda c: _inbox(c, actor, key, after_seq, limit))

    async def actor_reply(self, msg_id: str) -> Reply | None:
        """See :meth:`ActorStore.actor_reply`."""

        def op(c: sqlite3.Connection) -> Reply | None:
            row = c.execute(
                "SELECT ok, data FROM actor_replies WHERE msg_id = ?", (msg_id,)
            ).fetchone()
            return None if row is None else Reply(bool(row[0]), row[1])

        return await self.store._read(op)

    async def actor_owned_pending(self, worker: str) -> list[tuple[str, str, int]]:
        """See :meth:`ActorStore.actor_owned_pending`."""
        return await self.store._read(
            lambda c: [
                (r[0], r[1], r[2])
                for r in c.execute(
                    "SELECT actor, key, next_seq FROM actor_rows "
                    "WHERE owner = ? AND next_seq > done_seq",
                    (worker,),
                )
            ]
        )

    async def actor_next_wake(self, actors: list[str], now: float) -> float | None:
        """See :meth:`ActorStore.actor_next_wake`."""
        if not actors:
            return None
        marks = ",".join("?" * len(actors))
        sql = (
            "SELECT MIN(wake_at) FROM actor_rows WHERE wake_at IS NOT NULL AND "
            f"(owner IS NULL OR lease_until < ?) AND actor IN ({marks})"
        )
        value = await self.store._read(lambda c: c.execute(sql, (now, *actors)).fetchone()[0])
        return None if value is None else float(value)
