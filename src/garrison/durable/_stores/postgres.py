"""The PostgreSQL store: several worker processes (and machines) on one database, via asyncpg.

Theory of operation
-------------------
Every method is one transaction on a pooled connection (READ COMMITTED). Durability is
PostgreSQL's own: each session runs with ``synchronous_commit = on``, so a method returns only
after its commit record is flushed to the WAL, whatever the database's default.

Claiming: ``UPDATE wf_instances SET owner, lease_until, epoch = epoch + 1 WHERE id IN (SELECT id
... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING``. Rows another claimer (or a committing owner) has
locked are skipped, not waited for, and a row whose lock was released re-checks the claim
conditions on its newest version before it is taken, so two workers never claim one instance.

Fencing: a write about an instance first takes its row lock (``SELECT ... FOR UPDATE``) and then
compares the epoch it carries with the stored one. Every claim and termination bumps the epoch
under that same lock, so once a lease has expired and another worker claimed the instance, the
old owner's next write fails with :class:`LeaseLost` (never overwrites).

Lost wake-ups: a parent that starts a child locks (and rewrites) the child's row before it
decides between "already ended, post the outcome now" and "add a waiter row"; a child that ends
holds its own row lock while it reads its waiters. One of the two always sees the other's write.
Posts lock the target row before checking it is still running. Such lock orders can form a
cycle (parent -> child, child -> parent); PostgreSQL detects the deadlock and aborts one side,
which this store retries as a whole (each transaction's effects are all in the database, so a
retry is safe).

Round trips: the commonest writes (a step's transition without children, the end of a run
nobody waits for, a start claimed by its own worker, claims, renewals, releases) are single
statements run in autocommit (see the fast paths below), so a workflow step costs one round
trip, not five.

Wake-ups: a write that makes work ready for *another* process (an unowned start, an event or a
child's outcome posted, leases released, a schedule fired) also sends ``NOTIFY`` on the
schema's channel, delivered when it commits. A worker's store LISTENs (from its first claim on)
and calls the callbacks given to :meth:`PostgresStore.on_work`, which kick the engine's poller.
It is only a hint that saves waiting for the next poll: a lost notification (the listening
connection dropped) costs at most ``poll_interval``, never correctness.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # this module is imported only when used

from garrison.core import ConfigError, TransportError, UsageError
from garrison.durable._errors import FailureInfo, LeaseLost, WorkflowNotFound

from . import _redacted
from ._rows import INFO_COLS, fenc, info_from_row, schedule_from_row
from .base import (
    TERMINAL,
    Claim,
    CommitResult,
    CreateResult,
    InboxItem,
    ListFilter,
    Loaded,
    NewInstance,
    Schedule,
    Status,
    StoreStats,
    Transition,
    WorkflowInfo,
    child_outcome,
)
from .postgres_schema import check_schema_name, migrate

__all__ = ["PostgresStore"]

log = logging.getLogger("garrison.durable")
T = TypeVar("T")
Conn = Any  # an asyncpg connection (asyncpg ships no type information)
_RETRIES = 8
"""Attempts of one transaction aborted by a deadlock or serialization failure."""


# -- write operations (inside a transaction) -----------------------------------------------------


async def _insert(conn: Conn, new: NewInstance) -> bool:
    got = await conn.fetchval(
        "INSERT INTO wf_instances (id, workflow, status, run_id, runs, args, created_at, "
        "updated_at, ready_at, owner, lease_until, epoch, parent_id) "
        "VALUES ($1, $2, 'running', $3, 1, $4, $5, $5, $5, $6, $7, $8, $9) "
        "ON CONFLICT (id) DO NOTHING RETURNING 1",
        new.id,
        new.workflow,
        new.run_id,
        new.args,
        new.now,
        new.owner,
        new.lease_until,
        1 if new.owner else 0,
        new.parent_id,
    )
    return got is not None


async def _get(conn: Conn, wid: str) -> WorkflowInfo | None:
    row = await conn.fetchrow(f"SELECT {INFO_COLS} FROM wf_instances WHERE id = $1", wid)
    return None if row is None else info_from_row(row)


async def _post(
    conn: Conn, wid: str, kind: str, name: str, payload: bytes, step: int, now: float
) -> InboxItem:
    """Add an inbox row to a running instance whose row lock the caller holds (or that the
    UPDATE here takes: the caller has checked it is running under that lock)."""
    seq, version = await conn.fetchrow(
        "WITH ins AS (INSERT INTO wf_inbox (workflow_id, kind, name, step, payload, at) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING seq), "
        "upd AS (UPDATE wf_instances SET inbox_version = inbox_version + 1, ready_at = $6 "
        "WHERE id = $1 RETURNING inbox_version) "
        "SELECT (SELECT seq FROM ins), (SELECT inbox_version FROM upd)",
        wid,
        kind,
        name,
        step,
        payload,
        now,
    )
    return InboxItem(
        seq=seq, workflow_id=wid, kind=kind, name=name, payload=payload, step=step, version=version
    )


async def _notify(
    conn: Conn,
    wid: str,
    workflow: str,
    status: str,
    result: bytes | None,
    failure: FailureInfo | None,
    now: float,
    waiters: Sequence[Sequence[Any]] | None = None,
) -> list[InboxItem]:
    """Post ``wid``'s outcome to its waiters (the caller holds ``wid``'s row lock), given as
    deleted ``(waiter_id, waiter_step)`` rows or deleted here."""
    if waiters is None:
        waiters = await conn.fetch(
            "DELETE FROM wf_waiters WHERE target_id = $1 RETURNING waiter_id, waiter_step", wid
        )
    posted = []
    for waiter_id, step in sorted((r[0], r[1]) for r in waiters):
        state = await conn.fetchval(
            "SELECT status FROM wf_instances WHERE id = $1 FOR UPDATE", waiter_id
        )
        if state == Status.RUNNING:
            payload = child_outcome(step, workflow, wid, status, result, failure)
            posted.append(await _post(conn, waiter_id, "child", workflow, payload, step, now))
    return posted


_HISTORY_AND_CONSUMED = """
    hist AS (
        INSERT INTO wf_history (workflow_id, seq, data)
        SELECT $1, $2 + b.ord - 1, b.data FROM unnest($3::bytea[]) WITH ORDINALITY AS b(data, ord)
    ), consumed AS (
        DELETE FROM wf_inbox WHERE workflow_id = $1 AND seq = ANY($4::bigint[])
    )"""


async def _commit(conn: Conn, t: Transition) -> CommitResult:
    """The general commit: the row lock first (its own statement, so that what follows reads
    with a snapshot taken after every writer that held the lock before us committed)."""
    wid = t.workflow_id
    row = await conn.fetchrow(
        "SELECT epoch, status, history_len, workflow FROM wf_instances WHERE id = $1 FOR UPDATE",
        wid,
    )
    if row is None:
        raise WorkflowNotFound(f"no workflow instance {wid!r}")
    epoch, status, history_len, workflow = row
    if epoch != t.epoch or status != Status.RUNNING:
        _reject(t, epoch, status, history_len)
    if t.new_run is not None:
        await conn.execute("DELETE FROM wf_history WHERE workflow_id = $1", wid)
        history_len = 0
    if t.first_seq != history_len:
        _reject(t, epoch, status, history_len)
    posted: list[InboxItem] = []
    created: list[str] = []
    for ch in t.children:
        new = ch.instance
        if await _insert(conn, new):
            created.append(new.id)
        # Lock the child's row and write it (a no-op change, but a new row version): a child
        # ending right now is waited for, so its outcome is seen here; a child ending later
        # reads the waiter row added here, and its one-statement end (_FAST_END) sees that its
        # row changed since its snapshot and takes the slow path. Never neither.
        row = await conn.fetchrow(
            f"UPDATE wf_instances SET updated_at = updated_at WHERE id = $1 RETURNING {INFO_COLS}",
            new.id,
        )
        assert row is not None  # inserted above, or there already
        child = info_from_row(row)
        if child.status in TERMINAL:
            payload = child_outcome(
                ch.step, child.workflow, child.id, child.status, child.result, child.failure
            )
            posted.append(await _post(conn, wid, "child", child.workflow, payload, ch.step, t.now))
        else:
            await conn.execute(
                "INSERT INTO wf_waiters (target_id, waiter_id, waiter_step) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING",
                new.id,
                wid,
                ch.step,
            )
    # $1..$4 are the history and consumed rows' (see _HISTORY_AND_CONSUMED)
    params: list[Any] = [wid, history_len, t.batches, t.consumed]
    length = history_len + len(t.batches)
    if t.status != Status.RUNNING:
        params += [
            str(t.status),
            t.result,
            None if t.failure is None else fenc.encode(t.failure),
            t.now,
            t.steps,
            length,
        ]
        waiters = await conn.fetch(
            f"WITH {_HISTORY_AND_CONSUMED}, upd AS ("
            "UPDATE wf_instances SET status = $5, result = $6, failure = $7, updated_at = $8, "
            "closed_at = $8, ready_at = NULL, owner = NULL, lease_until = NULL, steps = $9, "
            "history_len = $10, blocked = NULL WHERE id = $1"
            "), inbox AS (DELETE FROM wf_inbox WHERE workflow_id = $1) "
            "DELETE FROM wf_waiters WHERE target_id = $1 RETURNING waiter_id, waiter_step",
            *params,
        )
        posted.extend(
            await _notify(conn, wid, workflow, t.status, t.result, t.failure, t.now, waiters)
        )
        return CommitResult(posted, created)
    params += [t.now, t.steps, length, t.blocked]
    sets = ["updated_at = $5", "steps = $6", "history_len = $7", "blocked = $8"]
    if t.new_run is not None:
        params += [t.new_run[0], t.new_run[1]]
        sets += [f"run_id = ${len(params) - 1}", f"args = ${len(params)}", "runs = runs + 1"]
    if t.release:
        params += [t.seen_inbox, t.wake_at]
        n = len(params)
        sets += [
            f"ready_at = CASE WHEN inbox_version > ${n - 1} THEN $5::float8 ELSE ${n}::float8 END",
            "owner = NULL",
            "lease_until = NULL",
        ]
    else:
        sets.append("ready_at = $5")
    await conn.execute(
        f"WITH {_HISTORY_AND_CONSUMED} UPDATE wf_instances SET {', '.join(sets)} WHERE id = $1",
        *params,
    )
    return CommitResult(posted, created)


# The fast paths: the commonest writes as ONE statement each, run in autocommit (a statement is
# its own transaction), so a workflow step costs one round trip instead of five. They are used
# only where one statement keeps the slow path's guarantees: no children (whose waiter handshake
# needs a lock taken in an earlier statement, hence a fresher snapshot) and no end (which reads
# the waiters, likewise); in a data-modifying CTE, ``cur``'s FOR UPDATE returns the newest
# version of the row once it holds the lock, so the epoch check sees every committed claim.

_FAST_COMMIT = """
WITH cur AS (
    SELECT epoch, status, history_len FROM wf_instances WHERE id = $1 FOR UPDATE
), upd AS (
    UPDATE wf_instances w SET
        updated_at = $2, steps = $3, blocked = $4,
        history_len = cur.history_len + cardinality($5::bytea[]),
        ready_at = CASE WHEN NOT $6::bool OR w.inbox_version > $7 THEN $2 ELSE $8::float8 END,
        owner = CASE WHEN $6::bool THEN NULL ELSE w.owner END,
        lease_until = CASE WHEN $6::bool THEN NULL ELSE w.lease_until END
    FROM cur
    WHERE w.id = $1 AND cur.epoch = $9 AND cur.status = 'running' AND cur.history_len = $10
    RETURNING 1
), hist AS (
    INSERT INTO wf_history (workflow_id, seq, data)
    SELECT $1, $10 + b.ord - 1, b.data FROM upd, unnest($5::bytea[]) WITH ORDINALITY AS b(data, ord)
), consumed AS (
    DELETE FROM wf_inbox
    WHERE workflow_id = $1 AND seq = ANY($11::bigint[]) AND EXISTS (SELECT 1 FROM upd)
)
SELECT cur.epoch, cur.status, cur.history_len, EXISTS (SELECT 1 FROM upd) FROM cur
"""

_FAST_CREATE = """
WITH ins AS (
    INSERT INTO wf_instances (id, workflow, status, run_id, runs, args, created_at, updated_at,
        ready_at, owner, lease_until, epoch, parent_id, steps, history_len, blocked)
    VALUES ($1, $2, 'running', $3, 1, $4, $5, $6, $7, $8, $9, $10, $11, $12,
        cardinality($13::bytea[]), $14)
    ON CONFLICT (id) DO NOTHING RETURNING 1
), hist AS (
    INSERT INTO wf_history (workflow_id, seq, data)
    SELECT $1, b.ord - 1, b.data FROM ins, unnest($13::bytea[]) WITH ORDINALITY AS b(data, ord)
)
SELECT count(*) FROM ins
"""


_FAST_END = """
WITH snap AS (
    SELECT xmin AS v FROM wf_instances WHERE id = $1
), cur AS (
    SELECT xmin AS v, epoch, status, history_len FROM wf_instances WHERE id = $1 FOR UPDATE
), ok AS (
    SELECT 1 FROM cur, snap
    WHERE cur.v = snap.v AND cur.epoch = $2 AND cur.status = 'running' AND cur.history_len = $3
        AND NOT EXISTS (SELECT 1 FROM wf_waiters WHERE target_id = $1)
), upd AS (
    UPDATE wf_instances SET
        status = $4, result = $5, failure = $6, updated_at = $7, closed_at = $7,
        ready_at = NULL, owner = NULL, lease_until = NULL, steps = $8,
        history_len = $3 + cardinality($9::bytea[]), blocked = NULL
    WHERE id = $1 AND EXISTS (SELECT 1 FROM ok)
    RETURNING 1
), hist AS (
    INSERT INTO wf_history (workflow_id, seq, data)
    SELECT $1, $3 + b.ord - 1, b.data FROM upd, unnest($9::bytea[]) WITH ORDINALITY AS b(data, ord)
), inbox AS (
    DELETE FROM wf_inbox WHERE workflow_id = $1 AND EXISTS (SELECT 1 FROM upd)
)
SELECT cur.epoch, cur.status, cur.history_len, EXISTS (SELECT 1 FROM upd) FROM cur
"""
"""The end of a run nobody waits for, in one statement. The statement's snapshot may predate
the row lock it waits for, so it applies only if the locked row is the very version of its
snapshot (same ``xmin``): then no post, no parent adding a waiter (which rewrites this row, see
``_commit``), no claim came in between, and the snapshot's waiters (none) and inbox rows (all
deleted) are the current ones. Otherwise it changes nothing and the slow path runs."""


def _simple(t: Transition) -> bool:
    """Whether ``t`` can be written by a fast path."""
    return t.status == Status.RUNNING and not t.children and t.new_run is None


async def _fast_commit(conn: Conn, t: Transition) -> CommitResult:
    row = await conn.fetchrow(
        _FAST_COMMIT,
        t.workflow_id,
        t.now,
        t.steps,
        t.blocked,
        t.batches,
        t.release,
        t.seen_inbox,
        t.wake_at,
        t.epoch,
        t.first_seq,
        t.consumed,
    )
    if row is None:
        raise WorkflowNotFound(f"no workflow instance {t.workflow_id!r}")
    epoch, status, history_len, done = row
    if not done:
        _reject(t, epoch, status, history_len)
    return CommitResult()


async def _fast_end(conn: Conn, t: Transition) -> bool:
    """Whether the end was written here (else the caller takes the slow path)."""
    row = await conn.fetchrow(
        _FAST_END,
        t.workflow_id,
        t.epoch,
        t.first_seq,
        str(t.status),
        t.result,
        None if t.failure is None else fenc.encode(t.failure),
        t.now,
        t.steps,
        t.batches,
    )
    if row is None:
        raise WorkflowNotFound(f"no workflow instance {t.workflow_id!r}")
    epoch, status, history_len, done = row
    if not done and (epoch != t.epoch or status != Status.RUNNING or history_len != t.first_seq):
        _reject(t, epoch, status, history_len)
    return bool(done)


def _reject(t: Transition, epoch: int, status: str, history_len: int) -> None:
    wid = t.workflow_id
    if epoch != t.epoch:
        raise LeaseLost(f"workflow {wid}: the write of epoch {t.epoch} is stale (epoch is {epoch})")
    if status != Status.RUNNING:
        raise LeaseLost(f"workflow {wid} has ended ({status}): the write is rejected")
    raise LeaseLost(
        f"workflow {wid}: the writer's history ({t.first_seq} batches) is out of date "
        f"({history_len} stored)"
    )


async def _fast_create(conn: Conn, new: NewInstance, t: Transition) -> CreateResult:
    owner, lease = (None, None) if t.release else (new.owner, new.lease_until)
    inserted = await conn.fetchval(
        _FAST_CREATE,
        new.id,
        new.workflow,
        new.run_id,
        new.args,
        new.now,
        t.now,
        t.wake_at if t.release else t.now,  # a new instance's inbox is empty
        owner,
        lease,
        1 if new.owner else 0,
        new.parent_id,
        t.steps,
        t.batches,
        t.blocked,
    )
    if inserted:
        return CreateResult(True)
    return CreateResult(False, await _get(conn, new.id))


async def _create(conn: Conn, new: NewInstance, first: Transition | None) -> CreateResult:
    if not await _insert(conn, new):
        return CreateResult(False, await _get(conn, new.id))
    if first is None:
        return CreateResult(True)
    return CreateResult(True, None, await _commit(conn, first))


async def _do_post(
    conn: Conn, wid: str, kind: str, name: str, payload: bytes, now: float
) -> InboxItem | None:
    status = await conn.fetchval("SELECT status FROM wf_instances WHERE id = $1 FOR UPDATE", wid)
    if status is None:
        raise WorkflowNotFound(f"no workflow instance {wid!r}")
    if status != Status.RUNNING:
        return None
    return await _post(conn, wid, kind, name, payload, 0, now)


async def _terminate(conn: Conn, wid: str, failure: FailureInfo, now: float) -> CommitResult | None:
    row = await conn.fetchrow(
        "SELECT status, workflow FROM wf_instances WHERE id = $1 FOR UPDATE", wid
    )
    if row is None:
        raise WorkflowNotFound(f"no workflow instance {wid!r}")
    if row[0] != Status.RUNNING:
        return None
    await conn.execute(
        "UPDATE wf_instances SET status = 'terminated', failure = $1, updated_at = $2, "
        "closed_at = $2, ready_at = NULL, owner = NULL, lease_until = NULL, epoch = epoch + 1 "
        "WHERE id = $3",
        fenc.encode(failure),
        now,
        wid,
    )
    await conn.execute("DELETE FROM wf_inbox WHERE workflow_id = $1", wid)
    return CommitResult(await _notify(conn, wid, row[1], Status.TERMINATED, None, failure, now))


async def _claim(
    conn: Conn,
    worker: str,
    workflows: list[str],
    now: float,
    until: float,
    limit: int,
    ids: list[str] | None,
) -> list[Claim]:
    where = (
        "ready_at <= $3 AND status = 'running' AND (owner IS NULL OR lease_until < $3) "
        "AND workflow = ANY($4::text[])"
    )
    params: list[Any] = [worker, until, now, workflows, limit]
    if ids is not None:
        where += " AND id = ANY($6::text[])"
        params.append(ids)
    rows = await conn.fetch(
        "UPDATE wf_instances SET owner = $1, lease_until = $2, epoch = epoch + 1 WHERE id IN "
        f"(SELECT id FROM wf_instances WHERE {where} ORDER BY ready_at LIMIT $5 "
        "FOR UPDATE SKIP LOCKED) RETURNING id, workflow, epoch, ready_at",
        *params,
    )
    rows = sorted(rows, key=lambda r: (r[3], r[0]))  # RETURNING keeps no order: oldest first
    return [Claim(id=r[0], workflow=r[1], epoch=r[2]) for r in rows]


async def _fire(conn: Conn, name: str, fired_at: float, next_at: float, new: NewInstance) -> bool:
    done = await conn.fetchval(
        "UPDATE wf_schedules SET next_at = $1, last_at = $2 WHERE name = $3 AND next_at = $2 "
        "RETURNING 1",
        next_at,
        fired_at,
        name,
    )
    if done is None:
        return False
    await _insert(conn, new)
    return True


async def _load(conn: Conn, wid: str) -> Loaded | None:
    row = await conn.fetchrow(
        f"SELECT {INFO_COLS}, inbox_version FROM wf_instances WHERE id = $1", wid
    )
    if row is None:
        return None
    version = row[17]
    batches = [
        r[0]
        for r in await conn.fetch(
            "SELECT data FROM wf_history WHERE workflow_id = $1 ORDER BY seq", wid
        )
    ]
    inbox = [
        InboxItem(
            seq=r[0],
            workflow_id=wid,
            kind=r[1],
            name=r[2],
            step=r[3],
            payload=r[4],
            version=version,
        )
        for r in await conn.fetch(
            "SELECT seq, kind, name, step, payload FROM wf_inbox WHERE workflow_id = $1 "
            "ORDER BY seq",
            wid,
        )
    ]
    return Loaded(info=info_from_row(row), batches=batches, inbox=inbox, inbox_version=version)


# -- the store ----------------------------------------------------------------------------------


class PostgresStore:
    """The durable store in a PostgreSQL schema (``postgresql://user@host:port/db?schema=name``).
    See the module docstring."""

    def __init__(self, dsn: str, *, schema: str = "public", pool_size: int = 10) -> None:
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ConfigError(
                f"pool_size must be an integer >= 1, got {pool_size!r}", key="durable.store"
            )
        self.dsn = dsn
        """The connection URL (without garrison's own options)."""
        self.schema = check_schema_name(schema)
        """The PostgreSQL schema holding the tables (created if missing)."""
        self.pool_size = pool_size
        """Most connections the store opens."""
        self.stats = StoreStats()
        """One commit per write operation (PostgreSQL groups WAL flushes on its own)."""
        self._pool: Any = None  # asyncpg.Pool
        self._channel = f"garrison_{self.schema}"[:63]
        self._wakeups: list[Callable[[], None]] = []
        self._listener: Any = None  # the LISTENing asyncpg connection, or False if it failed

    def on_work(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) when another process may have made work ready:
        the engine's hook to kick its poller. Listening starts with this store's first claim."""
        self._wakeups.append(callback)

    async def _notify(self, conn: Conn) -> None:
        await conn.execute("SELECT pg_notify($1, '')", self._channel)

    def _heard(self, *_: object) -> None:
        for callback in self._wakeups:
            callback()

    async def _listen(self) -> None:
        self._listener = False  # at most one attempt, even from concurrent claims
        conn = None
        try:
            conn = await asyncpg.connect(self.dsn)
            await conn.add_listener(self._channel, self._heard)
            # a dropped connection is replaced at the next claim (polling covers the gap)
            conn.add_termination_listener(self._lost_listener)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            if conn is not None:
                conn.terminate()
            log.warning("durable store: LISTEN failed, relying on polling alone: %r", exc)
            return
        except BaseException:  # cancelled (the engine is closing): leave no connection behind
            if conn is not None:
                conn.terminate()
            raise
        if self._pool is None:  # closed meanwhile
            await conn.close()
            return
        self._listener = conn

    def _lost_listener(self, conn: Any) -> None:
        if self._listener is conn:
            self._listener = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create the schema if needed and migrate it, then open the pool."""
        where = f"PostgreSQL at {_redacted(self.dsn)}"
        try:
            conn = await asyncpg.connect(self.dsn)
        except (
            asyncpg.InvalidCatalogNameError,
            asyncpg.InvalidPasswordError,
            asyncpg.InvalidAuthorizationSpecificationError,
        ) as exc:
            raise ConfigError(f"{where}: {exc}", key="durable.store") from None
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise TransportError(f"cannot connect to {where}: {exc!r}") from exc
        try:
            await migrate(conn, self.schema)
        finally:
            await conn.close()
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            server_settings={"search_path": f'"{self.schema}"', "synchronous_commit": "on"},
        )

    async def close(self) -> None:
        """Wait for the running transactions and disconnect."""
        listener, self._listener = self._listener, None
        if listener:
            await listener.close()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def _tx(
        self,
        op: Callable[[Conn], Awaitable[T]],
        *,
        write: bool = True,
        statement: bool = False,
        snapshot: bool = False,
    ) -> T:
        """Run ``op`` in one transaction, retried whole when PostgreSQL aborts it for a
        deadlock or a serialization failure. With ``statement``, ``op`` runs one statement,
        which is its own transaction (autocommit): two round trips fewer."""
        if self._pool is None:
            raise UsageError("the PostgreSQL store is not open")
        pool = self._pool
        for attempt in range(_RETRIES):
            try:
                async with pool.acquire() as conn:
                    if statement or (not write and not snapshot):
                        result = await op(conn)
                    else:
                        isolation = "repeatable_read" if snapshot else "read_committed"
                        async with conn.transaction(isolation=isolation, readonly=not write):
                            result = await op(conn)
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == _RETRIES - 1:
                    raise
                await asyncio.sleep(random.uniform(0.0, 0.01 * 2**attempt))
                continue
            if write:
                self.stats.commits += 1
                self.stats.writes += 1
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writes ----------------------------------------------------------------------------------

    async def create(self, new: NewInstance, first: Transition | None = None) -> CreateResult:
        """See :meth:`Store.create`."""
        if (
            first is not None
            and new.owner is not None
            and _simple(first)
            and not first.consumed
            and first.first_seq == 0
            and first.epoch == (1 if new.owner else 0)
        ):
            return await self._tx(lambda c: _fast_create(c, new, first), statement=True)

        async def op(c: Conn) -> CreateResult:
            res = await _create(c, new, first)
            if res.created and (new.owner is None or res.commit.posted):
                await self._notify(c)  # work for any worker
            return res

        return await self._tx(op)

    async def commit(self, t: Transition) -> CommitResult:
        """See :meth:`Store.commit`."""
        if _simple(t):
            return await self._tx(lambda c: _fast_commit(c, t), statement=True)
        # an end (that nobody waits for, the common case) in one statement, else the slow path
        if (
            not t.children
            and t.new_run is None
            and await self._tx(lambda c: _fast_end(c, t), statement=True)
        ):
            return CommitResult()

        async def op(c: Conn) -> CommitResult:
            res = await _commit(c, t)
            if res.posted:
                await self._notify(c)  # a child's outcome: its parent may be held elsewhere
            return res

        return await self._tx(op)

    async def post(
        self, workflow_id: str, kind: str, name: str, payload: bytes, now: float
    ) -> InboxItem | None:
        """See :meth:`Store.post`."""

        async def op(c: Conn) -> InboxItem | None:
            item = await _do_post(c, workflow_id, kind, name, payload, now)
            if item is not None:
                await self._notify(c)
            return item

        return await self._tx(op)

    async def terminate(
        self, workflow_id: str, failure: FailureInfo, now: float
    ) -> CommitResult | None:
        """See :meth:`Store.terminate`."""

        async def op(c: Conn) -> CommitResult | None:
            res = await _terminate(c, workflow_id, failure, now)
            if res is not None and res.posted:
                await self._notify(c)
            return res

        return await self._tx(op)

    async def claim(
        self,
        worker: str,
        workflows: list[str],
        now: float,
        lease_until: float,
        limit: int,
        ids: list[str] | None = None,
    ) -> list[Claim]:
        """See :meth:`Store.claim`."""
        if not workflows or limit <= 0 or ids == []:
            return []
        if self._wakeups and self._listener is None and self._pool is not None:
            await self._listen()
        return await self._tx(
            lambda c: _claim(c, worker, workflows, now, lease_until, limit, ids), statement=True
        )

    async def renew(self, worker: str, lease_until: float) -> int:
        """See :meth:`Store.renew`."""

        async def op(c: Conn) -> int:
            rows = await c.fetch(
                "UPDATE wf_instances SET lease_until = $1 WHERE owner = $2 RETURNING 1",
                lease_until,
                worker,
            )
            return len(rows)

        return await self._tx(op, statement=True)

    async def release(self, worker: str, now: float, ids: list[str] | None = None) -> int:
        """See :meth:`Store.release`."""
        if ids == []:
            return 0
        sql = (
            "UPDATE wf_instances SET owner = NULL, lease_until = NULL, ready_at = $1 "
            "WHERE owner = $2"
        )
        params: list[Any] = [now, worker]
        if ids is not None:
            sql += " AND id = ANY($3::text[])"
            params.append(ids)

        async def op(c: Conn) -> int:
            released = len(await c.fetch(sql + " RETURNING 1", *params))
            if released:
                await self._notify(c)  # another worker may take them now
            return released

        return await self._tx(op)

    async def put_schedule(self, schedule: Schedule) -> None:
        """See :meth:`Store.put_schedule`."""
        s = schedule
        await self._tx(
            lambda c: c.execute(
                "INSERT INTO wf_schedules (name, cron, tz, workflow, args, next_at, last_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET "
                "cron = excluded.cron, tz = excluded.tz, workflow = excluded.workflow, "
                "args = excluded.args, next_at = excluded.next_at, last_at = excluded.last_at",
                s.name,
                s.cron,
                s.tz,
                s.workflow,
                s.args,
                s.next_at,
                s.last_at,
            ),
            statement=True,
        )

    async def delete_schedule(self, name: str) -> bool:
        """See :meth:`Store.delete_schedule`."""

        async def op(c: Conn) -> bool:
            gone = await c.fetchval("DELETE FROM wf_schedules WHERE name = $1 RETURNING 1", name)
            return gone is not None

        return await self._tx(op, statement=True)

    async def fire_schedule(
        self, name: str, fired_at: float, next_at: float, new: NewInstance
    ) -> bool:
        """See :meth:`Store.fire_schedule`."""

        async def op(c: Conn) -> bool:
            fired = await _fire(c, name, fired_at, next_at, new)
            if fired:
                await self._notify(c)
            return fired

        return await self._tx(op)

    # -- reads -----------------------------------------------------------------------------------

    async def get(self, workflow_id: str) -> WorkflowInfo | None:
        """See :meth:`Store.get`."""
        return await self._tx(lambda c: _get(c, workflow_id), write=False)

    async def query(self, f: ListFilter) -> list[WorkflowInfo]:
        """See :meth:`Store.query`."""
        where: list[str] = []
        params: list[Any] = []
        for cond, value in (
            ("status = ${}", None if f.status is None else str(f.status)),
            ("workflow = ${}", f.workflow),
            ("created_at >= ${}", f.created_after),
            ("created_at < ${}", f.created_before),
            ("parent_id = ${}", f.parent_id),
            ("starts_with(id, ${})", f.id_prefix or None),
        ):
            if value is not None:
                params.append(value)
                where.append(cond.format(len(params)))
        sql = f"SELECT {INFO_COLS} FROM wf_instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        params += [f.limit, f.offset]
        n = len(params)
        sql += f" ORDER BY created_at DESC, id DESC LIMIT ${n - 1} OFFSET ${n}"

        async def op(c: Conn) -> list[WorkflowInfo]:
            return [info_from_row(r) for r in await c.fetch(sql, *params)]

        return await self._tx(op, write=False)

    async def load(self, workflow_id: str) -> Loaded | None:
        """See :meth:`Store.load` (one snapshot for the three reads)."""
        return await self._tx(lambda c: _load(c, workflow_id), write=False, snapshot=True)

    async def owned_inbox(self, worker: str) -> list[InboxItem]:
        """See :meth:`Store.owned_inbox`."""

        async def op(c: Conn) -> list[InboxItem]:
            rows = await c.fetch(
                "SELECT i.seq, i.workflow_id, i.kind, i.name, i.step, i.payload, w.inbox_version "
                "FROM wf_instances w JOIN wf_inbox i ON i.workflow_id = w.id WHERE w.owner = $1 "
                "ORDER BY i.seq",
                worker,
            )
            return [
                InboxItem(
                    seq=r[0],
                    workflow_id=r[1],
                    kind=r[2],
                    name=r[3],
                    step=r[4],
                    payload=r[5],
                    version=r[6],
                )
                for r in rows
            ]

        return await self._tx(op, write=False)

    async def next_wake(self, workflows: list[str], now: float) -> float | None:
        """See :meth:`Store.next_wake`."""
        if not workflows:
            return None

        async def op(c: Conn) -> float | None:
            value = await c.fetchval(
                "SELECT MIN(ready_at) FROM wf_instances WHERE ready_at IS NOT NULL AND "
                "(owner IS NULL OR lease_until < $1) AND workflow = ANY($2::text[])",
                now,
                workflows,
            )
            return None if value is None else float(value)

        return await self._tx(op, write=False)

    async def schedules(self) -> list[Schedule]:
        """See :meth:`Store.schedules`."""

        async def op(c: Conn) -> list[Schedule]:
            rows = await c.fetch(
                "SELECT name, cron, tz, workflow, args, next_at, last_at FROM wf_schedules "
                "ORDER BY name"
            )
            return [schedule_from_row(r) for r in rows]

        return await self._tx(op, write=False)
