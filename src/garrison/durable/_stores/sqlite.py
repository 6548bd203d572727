"""The embedded SQLite store: WAL, one group-committing writer thread, readers off the loop.

Durability: ``synchronous=FULL`` by default. In WAL mode that fsyncs the WAL at every commit, so
a commit that returned survives a power loss, not only a process crash; with group commit one
fsync covers every operation of the transaction, so its cost per workflow step shrinks as the
load grows. ``synchronous=normal`` (WAL) skips that fsync and syncs at checkpoints only: still
safe against a process crash (the WAL is in the OS cache), but a power loss or kernel panic can
lose the last transactions, which garrison would already have acknowledged. It is offered for
tests and throwaway data, not as the default.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from garrison.core import ConfigError, GroupCommitWriter, UsageError
from garrison.durable._errors import FailureInfo, LeaseLost, WorkflowNotFound

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
from .sqlite_schema import migrate

__all__ = ["SqliteStore"]

T = TypeVar("T")


def _marks(n: int) -> str:
    return ",".join("?" * n)


# -- write operations (run on the writer thread, inside a transaction) --------------------------


def _insert(conn: sqlite3.Connection, new: NewInstance) -> bool:
    cur = conn.execute(
        "INSERT INTO wf_instances (id, workflow, status, run_id, runs, args, created_at, "
        "updated_at, ready_at, owner, lease_until, epoch, parent_id) "
        "VALUES (?, ?, 'running', ?, 1, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            new.id,
            new.workflow,
            new.run_id,
            new.args,
            new.now,
            new.now,
            new.now,
            new.owner,
            new.lease_until,
            1 if new.owner else 0,
            new.parent_id,
        ),
    )
    return cur.rowcount == 1


def _get(conn: sqlite3.Connection, workflow_id: str) -> WorkflowInfo | None:
    row = conn.execute(
        f"SELECT {INFO_COLS} FROM wf_instances WHERE id = ?", (workflow_id,)
    ).fetchone()
    return None if row is None else info_from_row(row)


def _post(
    conn: sqlite3.Connection, wid: str, kind: str, name: str, payload: bytes, step: int, now: float
) -> InboxItem:
    cur = conn.execute(
        "INSERT INTO wf_inbox (workflow_id, kind, name, step, payload, at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (wid, kind, name, step, payload, now),
    )
    seq = cur.lastrowid
    row = conn.execute(
        "UPDATE wf_instances SET inbox_version = inbox_version + 1, ready_at = ? "
        "WHERE id = ? RETURNING inbox_version",
        (now, wid),
    ).fetchone()
    assert seq is not None
    assert row is not None
    return InboxItem(
        seq=seq, workflow_id=wid, kind=kind, name=name, payload=payload, step=step, version=row[0]
    )


def _notify(
    conn: sqlite3.Connection,
    wid: str,
    workflow: str,
    status: str,
    result: bytes | None,
    failure: FailureInfo | None,
    now: float,
) -> list[InboxItem]:
    waiters = conn.execute(
        "SELECT waiter_id, waiter_step FROM wf_waiters WHERE target_id = ?", (wid,)
    ).fetchall()
    posted = []
    for waiter_id, step in waiters:
        state = conn.execute(
            "SELECT status FROM wf_instances WHERE id = ?", (waiter_id,)
        ).fetchone()
        if state is not None and state[0] == Status.RUNNING:
            payload = child_outcome(step, workflow, wid, status, result, failure)
            posted.append(_post(conn, waiter_id, "child", workflow, payload, step, now))
    if waiters:
        conn.execute("DELETE FROM wf_waiters WHERE target_id = ?", (wid,))
    return posted


def _commit(conn: sqlite3.Connection, t: Transition) -> CommitResult:
    wid = t.workflow_id
    row = conn.execute(
        "SELECT epoch, status, history_len, workflow FROM wf_instances WHERE id = ?", (wid,)
    ).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow instance {wid!r}")
    epoch, status, history_len, workflow = row
    if epoch != t.epoch:
        raise LeaseLost(f"workflow {wid}: the write of epoch {t.epoch} is stale (epoch is {epoch})")
    if status != Status.RUNNING:
        raise LeaseLost(f"workflow {wid} has ended ({status}): the write is rejected")
    if t.new_run is not None:
        conn.execute("DELETE FROM wf_history WHERE workflow_id = ?", (wid,))
        history_len = 0
    if t.first_seq != history_len:
        raise LeaseLost(
            f"workflow {wid}: the writer's history ({t.first_seq} batches) is out of date "
            f"({history_len} stored)"
        )
    if t.batches:
        conn.executemany(
            "INSERT INTO wf_history (workflow_id, seq, data) VALUES (?, ?, ?)",
            [(wid, history_len + i, b) for i, b in enumerate(t.batches)],
        )
    if t.consumed:
        conn.executemany(
            "DELETE FROM wf_inbox WHERE seq = ? AND workflow_id = ?", [(s, wid) for s in t.consumed]
        )
    posted: list[InboxItem] = []
    created: list[str] = []
    for ch in t.children:
        new = ch.instance
        if _insert(conn, new):
            created.append(new.id)
        child = _get(conn, new.id)
        assert child is not None
        if child.status in TERMINAL:
            payload = child_outcome(
                ch.step, child.workflow, child.id, child.status, child.result, child.failure
            )
            posted.append(_post(conn, wid, "child", child.workflow, payload, ch.step, t.now))
        else:
            conn.execute(
                "INSERT OR IGNORE INTO wf_waiters (target_id, waiter_id, waiter_step) "
                "VALUES (?, ?, ?)",
                (new.id, wid, ch.step),
            )
    length = history_len + len(t.batches)
    if t.status != Status.RUNNING:
        conn.execute(
            "UPDATE wf_instances SET status = ?, result = ?, failure = ?, updated_at = ?, "
            "closed_at = ?, ready_at = NULL, owner = NULL, lease_until = NULL, steps = ?, "
            "history_len = ?, blocked = NULL WHERE id = ?",
            (
                str(t.status),
                t.result,
                None if t.failure is None else fenc.encode(t.failure),
                t.now,
                t.now,
                t.steps,
                length,
                wid,
            ),
        )
        conn.execute("DELETE FROM wf_inbox WHERE workflow_id = ?", (wid,))
        posted.extend(_notify(conn, wid, workflow, t.status, t.result, t.failure, t.now))
        return CommitResult(posted, created)
    sets = ["updated_at = ?", "steps = ?", "history_len = ?", "blocked = ?"]
    params: list[Any] = [t.now, t.steps, length, t.blocked]
    if t.new_run is not None:
        sets += ["run_id = ?", "args = ?", "runs = runs + 1"]
        params += [t.new_run[0], t.new_run[1]]
    if t.release:
        sets += [
            "ready_at = CASE WHEN inbox_version > ? THEN ? ELSE ? END",
            "owner = NULL",
            "lease_until = NULL",
        ]
        params += [t.seen_inbox, t.now, t.wake_at]
    else:
        sets.append("ready_at = ?")
        params.append(t.now)
    conn.execute(f"UPDATE wf_instances SET {', '.join(sets)} WHERE id = ?", (*params, wid))
    return CommitResult(posted, created)


def _create(conn: sqlite3.Connection, new: NewInstance, first: Transition | None) -> CreateResult:
    if not _insert(conn, new):
        return CreateResult(False, _get(conn, new.id))
    if first is None:
        return CreateResult(True)
    return CreateResult(True, None, _commit(conn, first))


def _do_post(
    conn: sqlite3.Connection, wid: str, kind: str, name: str, payload: bytes, now: float
) -> InboxItem | None:
    row = conn.execute("SELECT status FROM wf_instances WHERE id = ?", (wid,)).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow instance {wid!r}")
    if row[0] != Status.RUNNING:
        return None
    return _post(conn, wid, kind, name, payload, 0, now)


def _terminate(
    conn: sqlite3.Connection, wid: str, failure: FailureInfo, now: float
) -> CommitResult | None:
    row = conn.execute("SELECT status, workflow FROM wf_instances WHERE id = ?", (wid,)).fetchone()
    if row is None:
        raise WorkflowNotFound(f"no workflow instance {wid!r}")
    if row[0] != Status.RUNNING:
        return None
    conn.execute(
        "UPDATE wf_instances SET status = 'terminated', failure = ?, updated_at = ?, "
        "closed_at = ?, ready_at = NULL, owner = NULL, lease_until = NULL, epoch = epoch + 1 "
        "WHERE id = ?",
        (fenc.encode(failure), now, now, wid),
    )
    conn.execute("DELETE FROM wf_inbox WHERE workflow_id = ?", (wid,))
    return CommitResult(_notify(conn, wid, row[1], Status.TERMINATED, None, failure, now))


def _claim(
    conn: sqlite3.Connection,
    worker: str,
    workflows: list[str],
    now: float,
    until: float,
    limit: int,
    ids: list[str] | None,
) -> list[Claim]:
    if not workflows or limit <= 0:
        return []
    where = (
        "ready_at <= ? AND status = 'running' AND (owner IS NULL OR lease_until < ?) "
        f"AND workflow IN ({_marks(len(workflows))})"
    )
    params: list[Any] = [now, now, *workflows]
    if ids is not None:
        if not ids:
            return []
        where += f" AND id IN ({_marks(len(ids))})"
        params += ids
    rows = conn.execute(
        "UPDATE wf_instances SET owner = ?, lease_until = ?, epoch = epoch + 1 WHERE id IN "
        f"(SELECT id FROM wf_instances WHERE {where} ORDER BY ready_at LIMIT ?) "
        "RETURNING id, workflow, epoch",
        (worker, until, *params, limit),
    ).fetchall()
    return [Claim(id=r[0], workflow=r[1], epoch=r[2]) for r in rows]


def _fire(
    conn: sqlite3.Connection, name: str, fired_at: float, next_at: float, new: NewInstance
) -> bool:
    cur = conn.execute(
        "UPDATE wf_schedules SET next_at = ?, last_at = ? WHERE name = ? AND next_at = ?",
        (next_at, fired_at, name, fired_at),
    )
    if cur.rowcount != 1:
        return False
    _insert(conn, new)
    return True


# -- the store ----------------------------------------------------------------------------------


class SqliteStore:
    """The durable store in one SQLite file (``sqlite:///path``). See the module docstring."""

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        sync = synchronous.upper()
        if sync not in ("FULL", "NORMAL", "EXTRA"):
            raise ConfigError(
                f"synchronous must be full, normal or extra, got {synchronous!r}",
                key="durable.store",
            )
        self.path = os.fspath(path)
        self.synchronous = sync
        self.stats = StoreStats()
        """Transactions and operations written (group commit: commits << writes)."""
        self._writer = GroupCommitWriter(self._connect_writer, self.stats, what="the SQLite store")
        self._readers: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        return self._connect()

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the file if needed, switch it to WAL, migrate, start the writer and readers."""
        if os.path.dirname(self.path):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)

        def setup() -> None:
            conn = self._connect()
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise ConfigError(
                        f"{self.path}: SQLite could not switch to WAL mode (got {mode})",
                        key="durable.store",
                    )
                migrate(conn)
            finally:
                conn.close()

        await asyncio.to_thread(setup)
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="garrison-sqlite-read")
        self._writer.start()

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection."""
        await asyncio.to_thread(self._writer.stop)
        if self._readers is not None:
            self._readers.shutdown(wait=True)
            self._readers = None
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        return await self._writer.submit(op)

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._readers is None:
            raise UsageError("the SQLite store is not open")

        def run() -> T:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._connect()
                conn.execute("PRAGMA query_only = 1")
                with self._lock:
                    self._reader_conns.append(conn)
            return op(conn)

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    # -- writes ----------------------------------------------------------------------------------

    async def create(self, new: NewInstance, first: Transition | None = None) -> CreateResult:
        """See :meth:`Store.create`."""
        return await self._write(lambda c: _create(c, new, first))

    async def commit(self, t: Transition) -> CommitResult:
        """See :meth:`Store.commit`."""
        return await self._write(lambda c: _commit(c, t))

    async def post(
        self, workflow_id: str, kind: str, name: str, payload: bytes, now: float
    ) -> InboxItem | None:
        """See :meth:`Store.post`."""
        return await self._write(lambda c: _do_post(c, workflow_id, kind, name, payload, now))

    async def terminate(
        self, workflow_id: str, failure: FailureInfo, now: float
    ) -> CommitResult | None:
        """See :meth:`Store.terminate`."""
        return await self._write(lambda c: _terminate(c, workflow_id, failure, now))

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
        return await self._write(
            lambda c: _claim(c, worker, workflows, now, lease_until, limit, ids)
        )

    async def renew(self, worker: str, lease_until: float) -> int:
        """See :meth:`Store.renew`."""
        return await self._write(
            lambda c: (
                c.execute(
                    "UPDATE wf_instances SET lease_until = ? WHERE owner = ?", (lease_until, worker)
                ).rowcount
            )
        )

    async def release(self, worker: str, now: float, ids: list[str] | None = None) -> int:
        """See :meth:`Store.release`."""
        sql = (
            "UPDATE wf_instances SET owner = NULL, lease_until = NULL, ready_at = ? WHERE owner = ?"
        )
        params: list[Any] = [now, worker]
        if ids is not None:
            if not ids:
                return 0
            sql += f" AND id IN ({_marks(len(ids))})"
            params += ids
        return await self._write(lambda c: c.execute(sql, params).rowcount)

    async def put_schedule(self, schedule: Schedule) -> None:
        """See :meth:`Store.put_schedule`."""
        s = schedule
        await self._write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO wf_schedules (name, cron, tz, workflow, args, next_at, "
                "last_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (s.name, s.cron, s.tz, s.workflow, s.args, s.next_at, s.last_at),
            )
        )

    async def delete_schedule(self, name: str) -> bool:
        """See :meth:`Store.delete_schedule`."""
        return await self._write(
            lambda c: c.execute("DELETE FROM wf_schedules WHERE name = ?", (name,)).rowcount == 1
        )

    async def fire_schedule(
        self, name: str, fired_at: float, next_at: float, new: NewInstance
    ) -> bool:
        """See :meth:`Store.fire_schedule`."""
        return await self._write(lambda c: _fire(c, name, fired_at, next_at, new))

    # -- reads -----------------------------------------------------------------------------------

    async def get(self, workflow_id: str) -> WorkflowInfo | None:
        """See :meth:`Store.get`."""
        return await self._read(lambda c: _get(c, workflow_id))

    async def query(self, f: ListFilter) -> list[WorkflowInfo]:
        """See :meth:`Store.query`."""
        where: list[str] = []
        params: list[Any] = []
        for cond, value in (
            ("status = ?", None if f.status is None else str(f.status)),
            ("workflow = ?", f.workflow),
            ("created_at >= ?", f.created_after),
            ("created_at < ?", f.created_before),
            ("parent_id = ?", f.parent_id),
        ):
            if value is not None:
                where.append(cond)
                params.append(value)
        if f.id_prefix:
            where.append("substr(id, 1, ?) = ?")
            params += [len(f.id_prefix), f.id_prefix]
        sql = f"SELECT {INFO_COLS} FROM wf_instances"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?"
        params += [f.limit, f.offset]
        return await self._read(lambda c: [info_from_row(r) for r in c.execute(sql, params)])

    async def load(self, workflow_id: str) -> Loaded | None:
        """See :meth:`Store.load`."""

        def op(c: sqlite3.Connection) -> Loaded | None:
            c.execute("BEGIN")  # one snapshot for the three reads
            try:
                info = _get(c, workflow_id)
                if info is None:
                    return None
                version = c.execute(
                    "SELECT inbox_version FROM wf_instances WHERE id = ?", (workflow_id,)
                ).fetchone()[0]
                batches = [
                    r[0]
                    for r in c.execute(
                        "SELECT data FROM wf_history WHERE workflow_id = ? ORDER BY seq",
                        (workflow_id,),
                    )
                ]
                inbox = [
                    InboxItem(
                        seq=r[0],
                        workflow_id=workflow_id,
                        kind=r[1],
                        name=r[2],
                        step=r[3],
                        payload=r[4],
                        version=version,
                    )
                    for r in c.execute(
                        "SELECT seq, kind, name, step, payload FROM wf_inbox "
                        "WHERE workflow_id = ? ORDER BY seq",
                        (workflow_id,),
                    )
                ]
                return Loaded(info=info, batches=batches, inbox=inbox, inbox_version=version)
            finally:
                c.execute("COMMIT")

        return await self._read(op)

    async def owned_inbox(self, worker: str) -> list[InboxItem]:
        """See :meth:`Store.owned_inbox`."""
        sql = (
            "SELECT i.seq, i.workflow_id, i.kind, i.name, i.step, i.payload, w.inbox_version "
            "FROM wf_instances w JOIN wf_inbox i ON i.workflow_id = w.id WHERE w.owner = ? "
            "ORDER BY i.seq"
        )
        return await self._read(
            lambda c: [
                InboxItem(
                    seq=r[0],
                    workflow_id=r[1],
                    kind=r[2],
                    name=r[3],
                    step=r[4],
                    payload=r[5],
                    version=r[6],
                )
                for r in c.execute(sql, (worker,))
            ]
        )

    async def next_wake(self, workflows: list[str], now: float) -> float | None:
        """See :meth:`Store.next_wake`."""
        if not workflows:
            return None
        sql = (
            "SELECT MIN(ready_at) FROM wf_instances WHERE ready_at IS NOT NULL AND "
            f"(owner IS NULL OR lease_until < ?) AND workflow IN ({_marks(len(workflows))})"
        )
        value = await self._read(lambda c: c.execute(sql, (now, *workflows)).fetchone()[0])
        return None if value is None else float(value)

    async def schedules(self) -> list[Schedule]:
        """See :meth:`Store.schedules`."""
        return await self._read(
            lambda c: [
                schedule_from_row(r)
                for r in c.execute(
                    "SELECT name, cron, tz, workflow, args, next_at, last_at FROM wf_schedules "
                    "ORDER BY name"
                )
            ]
        )
