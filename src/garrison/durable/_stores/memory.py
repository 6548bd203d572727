"""The in-memory store (``memory://``): the store contract in plain dicts, for tests.

Every method runs without awaiting anything, so each one is atomic on its event loop, exactly as
the contract asks; nothing survives the process. It counts one commit per write (no grouping).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import msgspec

from garrison.durable._errors import FailureInfo, LeaseLost, WorkflowNotFound

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

__all__ = ["MemoryStore"]


@dataclass
class _Row:
    info: WorkflowInfo
    lease_until: float | None = None
    inbox_version: int = 0
    history: list[bytes] = field(default_factory=list)
    inbox: dict[int, InboxItem] = field(default_factory=dict)
    waiters: set[tuple[str, int]] = field(default_factory=set)


class MemoryStore:
    """The store contract in memory (``memory://``)."""

    def __init__(self) -> None:
        self.stats = StoreStats()
        """One commit per write operation."""
        self._rows: dict[str, _Row] = {}
        self._schedules: dict[str, Schedule] = {}
        self._seq = itertools.count(1)

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close (the data stays until the object is dropped)."""

    def _count(self) -> None:
        self.stats.commits += 1
        self.stats.writes += 1

    def _row(self, wid: str) -> _Row:
        row = self._rows.get(wid)
        if row is None:
            raise WorkflowNotFound(f"no workflow instance {wid!r}")
        return row

    def _insert(self, new: NewInstance) -> bool:
        if new.id in self._rows:
            return False
        self._rows[new.id] = _Row(
            WorkflowInfo(
                id=new.id,
                workflow=new.workflow,
                status=Status.RUNNING,
                run_id=new.run_id,
                runs=1,
                args=new.args,
                created_at=new.now,
                updated_at=new.now,
                ready_at=new.now,
                owner=new.owner,
                epoch=1 if new.owner else 0,
                parent_id=new.parent_id,
            ),
            lease_until=new.lease_until,
        )
        return True

    def _set(self, row: _Row, **changes: object) -> None:
        row.info = msgspec.structs.replace(row.info, **changes)

    def _post(
        self, wid: str, kind: str, name: str, payload: bytes, step: int, now: float
    ) -> InboxItem:
        row = self._rows[wid]
        row.inbox_version += 1
        item = InboxItem(
            seq=next(self._seq),
            workflow_id=wid,
            kind=kind,
            name=name,
            payload=payload,
            step=step,
            version=row.inbox_version,
        )
        row.inbox[item.seq] = item
        self._set(row, ready_at=now)
        return item

    def _notify(self, row: _Row, now: float) -> list[InboxItem]:
        info = row.info
        posted = []
        for waiter_id, step in sorted(row.waiters):
            waiter = self._rows.get(waiter_id)
            if waiter is not None and waiter.info.status == Status.RUNNING:
                payload = child_outcome(
                    step, info.workflow, info.id, info.status, info.result, info.failure
                )
                posted.append(self._post(waiter_id, "child", info.workflow, payload, step, now))
        row.waiters.clear()
        return posted

    def _commit(self, t: Transition) -> CommitResult:
        row = self._row(t.workflow_id)
        info = row.info
        if info.epoch != t.epoch:
            raise LeaseLost(
                f"workflow {info.id}: the write of epoch {t.epoch} is stale (epoch is {info.epoch})"
            )
        if info.status != Status.RUNNING:
            raise LeaseLost(f"workflow {info.id} has ended ({info.status}): the write is rejected")
        history = [] if t.new_run is not None else row.history
        if t.first_seq != len(history):
            raise LeaseLost(
                f"workflow {info.id}: the writer's history ({t.first_seq} batches) is out of "
                f"date ({len(history)} stored)"
            )
        # everything below is validated: apply
        row.history = history + list(t.batches)
        for s in t.consumed:
            row.inbox.pop(s, None)
        posted: list[InboxItem] = []
        created: list[str] = []
        for ch in t.children:
            if self._insert(ch.instance):
                created.append(ch.instance.id)
            child = self._rows[ch.instance.id]
            ci = child.info
            if ci.status in TERMINAL:
                payload = child_outcome(
                    ch.step, ci.workflow, ci.id, ci.status, ci.result, ci.failure
                )
                posted.append(self._post(info.id, "child", ci.workflow, payload, ch.step, t.now))
            else:
                child.waiters.add((info.id, ch.step))
        common: dict[str, object] = {"updated_at": t.now, "steps": t.steps}
        if t.status != Status.RUNNING:
            self._set(
                row,
                status=t.status,
                result=t.result,
                failure=t.failure,
                closed_at=t.now,
                ready_at=None,
                owner=None,
                blocked=None,
                **common,
            )
            row.lease_until = None
            row.inbox.clear()
            posted.extend(self._notify(row, t.now))
            return CommitResult(posted, created)
        common["blocked"] = t.blocked
        if t.new_run is not None:
            common.update(run_id=t.new_run[0], args=t.new_run[1], runs=row.info.runs + 1)
        if t.release:
            ready = t.now if row.inbox_version > t.seen_inbox else t.wake_at
            self._set(row, ready_at=ready, owner=None, **common)
            row.lease_until = None
        else:
            self._set(row, ready_at=t.now, **common)
        return CommitResult(posted, created)

    async def create(self, new: NewInstance, first: Transition | None = None) -> CreateResult:
        """See :meth:`Store.create`."""
        self._count()
        if not self._insert(new):
            return CreateResult(False, self._rows[new.id].info)
        if first is None:
            return CreateResult(True)
        try:
            return CreateResult(True, None, self._commit(first))
        except BaseException:
            del self._rows[new.id]
            raise

    async def commit(self, t: Transition) -> CommitResult:
        """See :meth:`Store.commit`."""
        self._count()
        return self._commit(t)

    async def post(
        self, workflow_id: str, kind: str, name: str, payload: bytes, now: float
    ) -> InboxItem | None:
        """See :meth:`Store.post`."""
        self._count()
        if self._row(workflow_id).info.status != Status.RUNNING:
            return None
        return self._post(workflow_id, kind, name, payload, 0, now)

    async def terminate(
        self, workflow_id: str, failure: FailureInfo, now: float
    ) -> CommitResult | None:
        """See :meth:`Store.terminate`."""
        self._count()
        row = self._row(workflow_id)
        if row.info.status != Status.RUNNING:
            return None
        self._set(
            row,
            status=Status.TERMINATED,
            failure=failure,
            updated_at=now,
            closed_at=now,
            ready_at=None,
            owner=None,
            epoch=row.info.epoch + 1,
        )
        row.lease_until = None
        row.inbox.clear()
        return CommitResult(self._notify(row, now))

    def _claimable(self, row: _Row, now: float) -> bool:
        i = row.info
        return (
            i.status == Status.RUNNING
            and i.ready_at is not None
            and i.ready_at <= now
            and (i.owner is None or (row.lease_until or 0.0) < now)
        )

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
        self._count()
        names = set(workflows)
        pool = (
            self._rows.values() if ids is None else [self._rows[i] for i in ids if i in self._rows]
        )
        ready = sorted(
            (r for r in pool if r.info.workflow in names and self._claimable(r, now)),
            key=lambda r: (r.info.ready_at or 0.0, r.info.id),
        )[: max(limit, 0)]
        out = []
        for r in ready:
            self._set(r, owner=worker, epoch=r.info.epoch + 1)
            r.lease_until = lease_until
            out.append(Claim(id=r.info.id, workflow=r.info.workflow, epoch=r.info.epoch))
        return out

    async def renew(self, worker: str, lease_until: float) -> int:
        """See :meth:`Store.renew`."""
        self._count()
        n = 0
        for r in self._rows.values():
            if r.info.owner == worker:
                r.lease_until = lease_until
                n += 1
        return n

    async def release(self, worker: str, now: float, ids: list[str] | None = None) -> int:
        """See :meth:`Store.release`."""
        self._count()
        wanted = None if ids is None else set(ids)
        n = 0
        for r in self._rows.values():
            if r.info.owner == worker and (wanted is None or r.info.id in wanted):
                self._set(r, owner=None, ready_at=now)
                r.lease_until = None
                n += 1
        return n

    async def put_schedule(self, schedule: Schedule) -> None:
        """See :meth:`Store.put_schedule`."""
        self._count()
        self._schedules[schedule.name] = schedule

    async def delete_schedule(self, name: str) -> bool:
        """See :meth:`Store.delete_schedule`."""
        self._count()
        return self._schedules.pop(name, None) is not None

    async def fire_schedule(
        self, name: str, fired_at: float, next_at: float, new: NewInstance
    ) -> bool:
        """See :meth:`Store.fire_schedule`."""
        self._count()
        s = self._schedules.get(name)
        if s is None or s.next_at != fired_at:
            return False
        self._schedules[name] = msgspec.structs.replace(s, next_at=next_at, last_at=fired_at)
        self._insert(new)
        return True

    async def get(self, workflow_id: str) -> WorkflowInfo | None:
        """See :meth:`Store.get`."""
        row = self._rows.get(workflow_id)
        return None if row is None else row.info

    async def query(self, f: ListFilter) -> list[WorkflowInfo]:
        """See :meth:`Store.query`."""
        out = [
            r.info
            for r in self._rows.values()
            if (f.status is None or r.info.status == f.status)
            and (f.workflow is None or r.info.workflow == f.workflow)
            and (f.created_after is None or r.info.created_at >= f.created_after)
            and (f.created_before is None or r.info.created_at < f.created_before)
            and (f.parent_id is None or r.info.parent_id == f.parent_id)
            and (not f.id_prefix or r.info.id.startswith(f.id_prefix))
        ]
        out.sort(key=lambda i: (i.created_at, i.id), reverse=True)
        return out[f.offset : f.offset + f.limit]

    async def load(self, workflow_id: str) -> Loaded | None:
        """See :meth:`Store.load`."""
        row = self._rows.get(workflow_id)
        if row is None:
            return None
        return Loaded(
            info=row.info,
            batches=list(row.history),
            inbox=[i for _, i in sorted(row.inbox.items())],
            inbox_version=row.inbox_version,
        )

    async def owned_inbox(self, worker: str) -> list[InboxItem]:
        """See :meth:`Store.owned_inbox`."""
        return sorted(
            (i for r in self._rows.values() if r.info.owner == worker for i in r.inbox.values()),
            key=lambda i: i.seq,
        )

    async def next_wake(self, workflows: list[str], now: float) -> float | None:
        """See :meth:`Store.next_wake`."""
        names = set(workflows)
        times = [
            r.info.ready_at
            for r in self._rows.values()
            if r.info.workflow in names
            and r.info.ready_at is not None
            and (r.info.owner is None or (r.lease_until or 0.0) < now)
        ]
        return min(times) if times else None

    async def schedules(self) -> list[Schedule]:
        """See :meth:`Store.schedules`."""
        return [self._schedules[k] for k in sorted(self._schedules)]
