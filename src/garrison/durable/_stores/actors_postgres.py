"""The actor store on PostgreSQL: the actor tables in the workflow store's schema, on its pool,
so several worker processes (and machines) host the actors of one database.

The tables are the ``actors`` component of ``garrison_schema`` (migrated at ``actor_open`` by
the same advisory-locked migration as the workflow tables: a schema written by a newer garrison
is refused). Every write is one READ COMMITTED transaction, durable before it returns
(``synchronous_commit = on``, as for the workflow store), retried whole on a deadlock.

Claims: ``UPDATE actor_rows ... WHERE (actor, key) IN (SELECT ... FOR UPDATE SKIP LOCKED)``,
so two workers never claim one key, and rows being committed are skipped, not waited for.

Fencing: a turn first takes its key's row lock (``SELECT epoch ... FOR UPDATE``) and compares
the epoch it carries with the stored one; claims bump the epoch under that same lock, so a
stale owner's turn fails with :class:`LeaseLost` and changes nothing.

Posting takes the target key's row lock too (the ``next_seq`` bump), so a key's sequence
numbers are gapless and in commit order, and a claim (which holds the lock while it reads the
inbox) sees every message below the ``next_seq`` it returns. Two posts of one ``msg_id`` racing
each other: the loser hits the unique ``msg_id`` and the whole transaction is retried, now
seeing the winner's row (or its reply), so an id is posted once.

Round trips: posting one message is one statement (the duplicate lookups, the seq bump and
the inbox row), and so is a turn that only consumes, changes state and records replies; both
run in autocommit. Other turns take the row lock first, in a transaction.

Outbox messages, workflow events and workflow starts of a turn are written in the turn's
transaction into the same schema's tables (the workflow store's own statements), with a
``NOTIFY`` on the workflow store's channel when a workflow has new work.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # this module is imported only when used

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
from .postgres import PostgresStore, _do_post, _insert
from .postgres_schema import migrate

__all__ = ["COMPONENT", "MIGRATIONS", "PostgresActorStore"]

T = TypeVar("T")
Conn = Any  # an asyncpg connection (asyncpg ships no type information)

COMPONENT = "actors"

_V1 = """
CREATE TABLE actor_rows (
    actor       text NOT NULL,
    key         text NOT NULL,
    state       bytea,
    next_seq    bigint NOT NULL DEFAULT 0,
    done_seq    bigint NOT NULL DEFAULT 0,
    owner       text,
    lease_until double precision,
    epoch       bigint NOT NULL DEFAULT 0,
    wake_at     double precision,
    updated_at  double precision NOT NULL,
    PRIMARY KEY (actor, key)
);
CREATE INDEX actor_rows_owner ON actor_rows (owner) WHERE owner IS NOT NULL;
CREATE INDEX actor_rows_wake ON actor_rows (wake_at) WHERE wake_at IS NOT NULL;
CREATE INDEX actor_rows_pending ON actor_rows (actor, key) WHERE next_seq > done_seq;

CREATE TABLE actor_inbox (
    actor   text NOT NULL,
    key     text NOT NULL,
    seq     bigint NOT NULL,
    msg_id  text NOT NULL UNIQUE,
    method  text NOT NULL,
    args    bytea NOT NULL,
    record  boolean NOT NULL,
    at      double precision NOT NULL,
    PRIMARY KEY (actor, key, seq)
);

CREATE TABLE actor_replies (
    msg_id text PRIMARY KEY,
    ok     boolean NOT NULL,
    data   bytea NOT NULL,
    at     double precision NOT NULL
);
CREATE INDEX actor_replies_at ON actor_replies (at);

CREATE TABLE actor_reminders (
    actor   text NOT NULL,
    key     text NOT NULL,
    name    text NOT NULL,
    due_at  double precision NOT NULL,
    every   double precision,
    payload bytea NOT NULL,
    PRIMARY KEY (actor, key, name)
);
"""

MIGRATIONS: list[str] = [_V1]
"""Migration ``i`` takes the actor schema from version ``i`` to ``i + 1``. Append, never edit."""

_INBOX_LOAD = 1000
"""Pending messages read with a claim; more are read as the actor works through them."""

_RETRIES = 8
"""Attempts of one write that lost a race on a unique ``msg_id``."""

_ROW = "actor, key, epoch, state, done_seq, next_seq"


# -- write operations (inside a transaction) -----------------------------------------------------


_POST = """
WITH r AS (
    INSERT INTO actor_rows (actor, key, next_seq, updated_at) VALUES ($1, $2, 1, $3)
    ON CONFLICT (actor, key) DO UPDATE SET next_seq = actor_rows.next_seq + 1
    RETURNING next_seq, owner, lease_until
), i AS (
    INSERT INTO actor_inbox (actor, key, seq, msg_id, method, args, record, at)
    SELECT $1, $2, r.next_seq, $4, $5, $6, $7, $3 FROM r
)
SELECT NULL::boolean, NULL::bytea, NULL, NULL, NULL::bigint, next_seq, owner, lease_until FROM r
"""
"""Post a message whose id cannot have been posted before: the seq bump (under the key's row
lock) and the inbox row."""

_POST_UNLESS_KNOWN = """
WITH rep AS (
    SELECT ok, data FROM actor_replies WHERE msg_id = $4
), dup AS (
    SELECT actor, key, seq FROM actor_inbox WHERE msg_id = $4
), r AS (
    INSERT INTO actor_rows (actor, key, next_seq, updated_at)
    SELECT $1, $2, 1, $3 WHERE NOT EXISTS (SELECT 1 FROM rep) AND NOT EXISTS (SELECT 1 FROM dup)
    ON CONFLICT (actor, key) DO UPDATE SET next_seq = actor_rows.next_seq + 1
    RETURNING next_seq, owner, lease_until
), i AS (
    INSERT INTO actor_inbox (actor, key, seq, msg_id, method, args, record, at)
    SELECT $1, $2, r.next_seq, $4, $5, $6, $7, $3 FROM r
)
SELECT (SELECT ok FROM rep), (SELECT data FROM rep), (SELECT actor FROM dup),
    (SELECT key FROM dup), (SELECT seq FROM dup),
    (SELECT next_seq FROM r), (SELECT owner FROM r), (SELECT lease_until FROM r)
"""
"""The same unless the id has a reply or a pending inbox row, in one statement (one snapshot:
an id posted concurrently and not yet visible hits the unique ``msg_id``, see the module
docstring)."""


async def _post_one(conn: Conn, m: NewMessage, lookup: bool) -> PostResult:
    ok, data, dup_actor, dup_key, dup_seq, seq, owner, lease_until = await conn.fetchrow(
        _POST_UNLESS_KNOWN if lookup else _POST,
        m.actor,
        m.key,
        m.at,
        m.msg_id,
        m.method,
        m.args,
        m.record,
    )
    if ok is not None:
        reply = Reply(ok, data)
        return PostResult(actor=m.actor, key=m.key, msg_id=m.msg_id, reply=reply, duplicate=True)
    if dup_seq is not None:
        return PostResult(
            actor=dup_actor, key=dup_key, msg_id=m.msg_id, seq=dup_seq, duplicate=True
        )
    holder = (
        owner if owner is not None and lease_until is not None and lease_until >= m.at else None
    )
    return PostResult(actor=m.actor, key=m.key, msg_id=m.msg_id, seq=seq, owner=holder)


async def _reminders(conn: Conn, actor: str, key: str) -> list[Reminder]:
    return [
        Reminder(name=r[0], due_at=r[1], every=r[2], payload=r[3])
        for r in await conn.fetch(
            "SELECT name, due_at, every, payload FROM actor_reminders "
            "WHERE actor = $1 AND key = $2 ORDER BY due_at, name",
            actor,
            key,
        )
    ]


async def _inbox(conn: Conn, actor: str, key: str, after: int, limit: int) -> list[ActorMessage]:
    return [
        ActorMessage(seq=r[0], msg_id=r[1], method=r[2], args=r[3], record=r[4])
        for r in await conn.fetch(
            "SELECT seq, msg_id, method, args, record FROM actor_inbox "
            "WHERE actor = $1 AND key = $2 AND seq > $3 ORDER BY seq LIMIT $4",
            actor,
            key,
            after,
            limit,
        )
    ]


async def _load(conn: Conn, row: Sequence[Any]) -> ActorLoad:
    """What a claim returns; the caller holds the key's row lock, so no post adds a message
    below ``next_seq`` that the inbox read here could miss."""
    actor, key, epoch, state, done_seq, next_seq = row
    return ActorLoad(
        actor=actor,
        key=key,
        epoch=epoch,
        state=state,
        done_seq=done_seq,
        next_seq=next_seq,
        reminders=await _reminders(conn, actor, key),
        inbox=await _inbox(conn, actor, key, done_seq, _INBOX_LOAD) if next_seq > done_seq else [],
    )


async def _claim(
    conn: Conn, worker: str, actor: str, key: str, now: float, until: float
) -> ActorLoad | None:
    await conn.execute(
        "INSERT INTO actor_rows (actor, key, updated_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (actor, key) DO NOTHING",
        actor,
        key,
        now,
    )
    # waits for a committing owner's lock, then re-checks the condition on the newest version
    row = await conn.fetchrow(
        "UPDATE actor_rows SET owner = $1, lease_until = $2, epoch = epoch + 1 "
        "WHERE actor = $3 AND key = $4 AND (owner IS NULL OR owner = $1 OR lease_until < $5) "
        f"RETURNING {_ROW}",
        worker,
        until,
        actor,
        key,
        now,
    )
    return None if row is None else await _load(conn, row)


async def _claim_ready(
    conn: Conn, worker: str, actors: list[str], now: float, until: float, limit: int
) -> list[ActorLoad]:
    rows = await conn.fetch(
        "UPDATE actor_rows SET owner = $1, lease_until = $2, epoch = epoch + 1 "
        "WHERE (actor, key) IN (SELECT actor, key FROM actor_rows "
        "WHERE (next_seq > done_seq OR wake_at <= $3) AND actor = ANY($4::text[]) "
        "AND (owner IS NULL OR lease_until < $3) ORDER BY updated_at LIMIT $5 "
        f"FOR UPDATE SKIP LOCKED) RETURNING {_ROW}",
        worker,
        until,
        now,
        actors,
        limit,
    )
    return [await _load(conn, r) for r in rows]


async def _commit(conn: Conn, t: Turn, lookup: bool) -> TurnResult:
    # the row lock first: a claim (epoch bump) is either before it (and we see its epoch) or
    # waits for this turn's commit
    epoch = await conn.fetchval(
        "SELECT epoch FROM actor_rows WHERE actor = $1 AND key = $2 FOR UPDATE", t.actor, t.key
    )
    if epoch != t.epoch:
        raise LeaseLost(
            f"actor {t.actor}/{t.key}: the turn of epoch {t.epoch} is stale (epoch is {epoch})"
        )
    await conn.execute(
        "DELETE FROM actor_inbox WHERE actor = $1 AND key = $2 AND seq <= $3",
        t.actor,
        t.key,
        t.done_seq,
    )
    if t.replies:
        await conn.executemany(
            "INSERT INTO actor_replies (msg_id, ok, data, at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (msg_id) DO UPDATE SET ok = excluded.ok, data = excluded.data, "
            "at = excluded.at",
            [(mid, r.ok, r.data, t.now) for mid, r in t.replies],
        )
    reminders = bool(t.set_reminders or t.cancel_reminders)
    if t.cancel_reminders:
        await conn.execute(
            "DELETE FROM actor_reminders WHERE actor = $1 AND key = $2 AND name = ANY($3::text[])",
            t.actor,
            t.key,
            t.cancel_reminders,
        )
    if t.set_reminders:
        await conn.executemany(
            "INSERT INTO actor_reminders (actor, key, name, due_at, every, payload) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (actor, key, name) DO UPDATE SET "
            "due_at = excluded.due_at, every = excluded.every, payload = excluded.payload",
            [(t.actor, t.key, r.name, r.due_at, r.every, r.payload) for r in t.set_reminders],
        )
    params: list[Any] = [t.actor, t.key, t.done_seq, t.now]
    sets = ["done_seq = $3", "updated_at = $4"]
    if t.state is not None:
        params.append(t.state)
        sets.append(f"state = ${len(params)}")
    if reminders:
        sets.append(
            "wake_at = (SELECT MIN(due_at) FROM actor_reminders WHERE actor = $1 AND key = $2)"
        )
    if t.release:
        sets += ["owner = NULL", "lease_until = NULL"]
    await conn.execute(
        f"UPDATE actor_rows SET {', '.join(sets)} WHERE actor = $1 AND key = $2", *params
    )
    events: list[InboxItem] = []
    dropped: list[str] = []
    started: list[str] = []
    for w in t.workflow_starts:
        new = NewInstance(
            id=w.workflow_id, workflow=w.workflow, run_id=w.run_id, args=w.args, now=t.now
        )
        if await _insert(conn, new):
            started.append(w.workflow_id)
    for e in t.workflow_events:
        try:
            item = await _do_post(conn, e.workflow_id, "event", e.name, e.payload, t.now)
        except WorkflowNotFound:
            item = None
        if item is None:
            dropped.append(e.workflow_id)
        else:
            events.append(item)
    posted = [await _post_one(conn, m, lookup or not m.fresh) for m in t.outbox]
    return TurnResult(posted=posted, events=events, started=started, dropped=dropped)


_FAST_COMMIT = """
WITH cur AS (
    SELECT epoch FROM actor_rows WHERE actor = $1 AND key = $2 FOR UPDATE
), upd AS (
    UPDATE actor_rows r SET done_seq = $3, updated_at = $4, state = COALESCE($5::bytea, r.state),
        owner = CASE WHEN $6::bool THEN NULL ELSE r.owner END,
        lease_until = CASE WHEN $6::bool THEN NULL ELSE r.lease_until END
    FROM cur WHERE r.actor = $1 AND r.key = $2 AND cur.epoch = $7
    RETURNING 1
), consumed AS (
    DELETE FROM actor_inbox
    WHERE actor = $1 AND key = $2 AND seq <= $3 AND EXISTS (SELECT 1 FROM upd)
), replies AS (
    INSERT INTO actor_replies (msg_id, ok, data, at)
    SELECT x.m, x.o, x.d, $4 FROM unnest($8::text[], $9::bool[], $10::bytea[]) AS x(m, o, d)
    WHERE EXISTS (SELECT 1 FROM upd)
    ON CONFLICT (msg_id) DO UPDATE SET ok = excluded.ok, data = excluded.data, at = excluded.at
)
SELECT (SELECT epoch FROM cur), EXISTS (SELECT 1 FROM upd)
"""
"""A turn that only consumes, changes state and records replies (the commonest), in ONE
statement run in autocommit. ``cur``'s FOR UPDATE returns the newest version of the row once it
holds the lock, so the epoch check sees every committed claim (as the workflow store's
``_FAST_COMMIT``); the inbox rows it deletes were read by the turn, so they are in the
statement's snapshot."""


def _simple(t: Turn) -> bool:
    """Whether ``t`` can be written by ``_FAST_COMMIT`` (reply ids distinct: one upsert each)."""
    return (
        not t.outbox
        and not t.workflow_events
        and not t.workflow_starts
        and not t.set_reminders
        and not t.cancel_reminders
        and len({mid for mid, _ in t.replies}) == len(t.replies)
    )


async def _fast_commit(conn: Conn, t: Turn) -> TurnResult:
    epoch, done = await conn.fetchrow(
        _FAST_COMMIT,
        t.actor,
        t.key,
        t.done_seq,
        t.now,
        t.state,
        t.release,
        t.epoch,
        [mid for mid, _ in t.replies],
        [r.ok for _, r in t.replies],
        [r.data for _, r in t.replies],
    )
    if not done:
        raise LeaseLost(
            f"actor {t.actor}/{t.key}: the turn of epoch {t.epoch} is stale (epoch is {epoch})"
        )
    return TurnResult()


async def _release(conn: Conn, worker: str, keys: list[tuple[str, str, int]] | None) -> int:
    if keys is None:
        rows = await conn.fetch(
            "UPDATE actor_rows SET owner = NULL, lease_until = NULL WHERE owner = $1 RETURNING 1",
            worker,
        )
        return len(rows)
    if not keys:
        return 0
    rows = await conn.fetch(
        "UPDATE actor_rows r SET owner = NULL, lease_until = NULL "
        "FROM unnest($2::text[], $3::text[], $4::bigint[]) AS k(actor, key, epoch) "
        "WHERE r.actor = k.actor AND r.key = k.key AND r.epoch = k.epoch AND r.owner = $1 "
        "RETURNING 1",
        worker,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
    )
    return len(rows)


def _bind(op: Callable[[Conn, bool], Awaitable[T]], lookup: bool) -> Callable[[Conn], Awaitable[T]]:
    return lambda c: op(c, lookup)


# -- the store ----------------------------------------------------------------------------------


class PostgresActorStore:
    """The actor contract on an (open) :class:`PostgresStore`, sharing its pool and schema."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    async def _write(self, op: Callable[[Conn, bool], Awaitable[T]], one: bool = False) -> T:
        """``op`` in one transaction (the store retries deadlocks); a race lost on a unique
        ``msg_id`` retries it whole with every duplicate lookup on (``op``'s second argument):
        the winner's row is committed by then, so the retry finds it. ``one``: ``op`` runs a
        single statement, so it runs in autocommit (a statement is its own transaction): two
        round trips fewer."""
        for attempt in range(_RETRIES):
            try:
                return await self.store._tx(_bind(op, attempt > 0), statement=one)
            except asyncpg.UniqueViolationError:
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(random.uniform(0.0, 0.01 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def actor_open(self) -> None:
        """See :meth:`ActorStore.actor_open`."""
        schema = self.store.schema
        await self.store._tx(
            lambda c: migrate(c, schema, COMPONENT, MIGRATIONS), write=False, statement=True
        )

    async def actor_post(self, msgs: list[NewMessage]) -> list[PostResult]:
        """See :meth:`ActorStore.actor_post`."""
        if not msgs:
            return []

        async def op(c: Conn, lookup: bool) -> list[PostResult]:
            return [await _post_one(c, m, lookup or not m.fresh) for m in msgs]

        # one message (the commonest post: a signal or a call) is one statement
        return await self._write(op, one=len(msgs) == 1)

    async def actor_claim(
        self, worker: str, actor: str, key: str, now: float, lease_until: float
    ) -> ActorLoad | None:
        """See :meth:`ActorStore.actor_claim`."""
        return await self.store._tx(lambda c: _claim(c, worker, actor, key, now, lease_until))

    async def actor_claim_ready(
        self, worker: str, actors: list[str], now: float, lease_until: float, limit: int
    ) -> list[ActorLoad]:
        """See :meth:`ActorStore.actor_claim_ready`."""
        if not actors or limit <= 0:
            return []
        return await self.store._tx(
            lambda c: _claim_ready(c, worker, actors, now, lease_until, limit)
        )

    async def actor_commit(self, turn: Turn) -> TurnResult:
        """See :meth:`ActorStore.actor_commit`."""
        if _simple(turn):
            return await self.store._tx(lambda c: _fast_commit(c, turn), statement=True)

        async def op(c: Conn, lookup: bool) -> TurnResult:
            res = await _commit(c, turn, lookup)
            if res.events or res.started:
                await self.store._notify(c)  # work for whichever worker runs the workflows
            return res

        return await self._write(op)

    async def actor_release(self, worker: str, keys: list[tuple[str, str, int]] | None) -> int:
        """See :meth:`ActorStore.actor_release`."""
        return await self.store._tx(lambda c: _release(c, worker, keys), statement=True)

    async def actor_renew(self, worker: str, lease_until: float) -> int:
        """See :meth:`ActorStore.actor_renew`."""

        async def op(c: Conn) -> int:
            rows = await c.fetch(
                "UPDATE actor_rows SET lease_until = $1 WHERE owner = $2 RETURNING 1",
                lease_until,
                worker,
            )
            return len(rows)

        return await self.store._tx(op, statement=True)

    async def actor_prune(self, before: float) -> int:
        """See :meth:`ActorStore.actor_prune`."""

        async def op(c: Conn) -> int:
            rows = await c.fetch("DELETE FROM actor_replies WHERE at < $1 RETURNING 1", before)
            return len(rows)

        return await self.store._tx(op, statement=True)

    async def actor_get(self, actor: str, key: str) -> ActorRecord | None:
        """See :meth:`ActorStore.actor_get` (one snapshot for the two reads)."""

        async def op(c: Conn) -> ActorRecord | None:
            row = await c.fetchrow(
                "SELECT state, done_seq, next_seq, owner, lease_until, epoch, wake_at "
                "FROM actor_rows WHERE actor = $1 AND key = $2",
                actor,
                key,
            )
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
                reminders=await _reminders(c, actor, key),
            )

        return await self.store._tx(op, write=False, snapshot=True)

    async def actor_inbox(
        self, actor: str, key: str, after_seq: int, limit: int
    ) -> list[ActorMessage]:
        """See :meth:`ActorStore.actor_inbox`."""
        return await self.store._tx(lambda c: _inbox(c, actor, key, after_seq, limit), write=False)

    async def actor_reply(self, msg_id: str) -> Reply | None:
        """See :meth:`ActorStore.actor_reply`."""

        async def op(c: Conn) -> Reply | None:
            row = await c.fetchrow("SELECT ok, data FROM actor_replies WHERE msg_id = $1", msg_id)
            return None if row is None else Reply(row[0], row[1])

        return await self.store._tx(op, write=False)

    async def actor_owned_pending(self, worker: str) -> list[tuple[str, str, int]]:
        """See :meth:`ActorStore.actor_owned_pending`."""

        async def op(c: Conn) -> list[tuple[str, str, int]]:
            rows = await c.fetch(
                "SELECT actor, key, next_seq FROM actor_rows "
                "WHERE owner = $1 AND next_seq > done_seq",
                worker,
            )
            return [(r[0], r[1], r[2]) for r in rows]

        return await self.store._tx(op, write=False)

    async def actor_next_wake(self, actors: list[str], now: float) -> float | None:
        """See :meth:`ActorStore.actor_next_wake`."""
        if not actors:
            return None

        async def op(c: Conn) -> float | None:
            value = await c.fetchval(
                "SELECT MIN(wake_at) FROM actor_rows WHERE wake_at IS NOT NULL AND "
                "(owner IS NULL OR lease_until < $1) AND actor = ANY($2::text[])",
                now,
                actors,
            )
            return None if value is None else float(value)

        return await self.store._tx(op, write=False)
