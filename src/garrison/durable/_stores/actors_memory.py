"""The actor store contract in plain dicts (for ``memory://`` and tests).

Every method runs without awaiting anything, so each one is atomic on its event loop, as the
contract asks; nothing survives the process. A turn is validated before anything is changed, so
a rejected turn changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from garrison.core import UsageError
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
from .memory import MemoryStore

__all__ = ["MemoryActorStore"]

_INBOX_LOAD = 1000


@dataclass
class _Row:
    state: bytes | None = None
    next_seq: int = 0
    done_seq: int = 0
    owner: str | None = None
    lease_until: float | None = None
    epoch: int = 0
    inbox: dict[int, ActorMessage] = field(default_factory=dict)
    reminders: dict[str, Reminder] = field(default_factory=dict)

    def wake_at(self) -> float | None:
        return min((r.due_at for r in self.reminders.values()), default=None)

    def free(self, now: float) -> bool:
        return self.owner is None or (self.lease_until is not None and self.lease_until < now)


class MemoryActorStore:
    """The actor contract in memory."""

    def __init__(self, workflows: MemoryStore | None = None) -> None:
        self._wf = workflows
        """The workflow store turns post events to and start workflows in."""
        self._rows: dict[tuple[str, str], _Row] = {}
        self._where: dict[str, tuple[str, str, int]] = {}
        """msg_id -> (actor, key, seq) of pending messages."""
        self._replies: dict[str, tuple[Reply, float]] = {}

    def _post(self, m: NewMessage) -> PostResult:
        kept = self._replies.get(m.msg_id)
        if kept is not None:
            return PostResult(
                actor=m.actor, key=m.key, msg_id=m.msg_id, reply=kept[0], duplicate=True
            )
        where = self._where.get(m.msg_id)
        if where is not None:
            actor, key, seq = where
            return PostResult(actor=actor, key=key, msg_id=m.msg_id, seq=seq, duplicate=True)
        row = self._rows.setdefault((m.actor, m.key), _Row())
        row.next_seq += 1
        row.inbox[row.next_seq] = ActorMessage(
            seq=row.next_seq, msg_id=m.msg_id, method=m.method, args=m.args, record=m.record
        )
        self._where[m.msg_id] = (m.actor, m.key, row.next_seq)
        holder = None if row.free(m.at) else row.owner
        return PostResult(actor=m.actor, key=m.key, msg_id=m.msg_id, seq=row.next_seq, owner=holder)

    def _load(self, actor: str, key: str, row: _Row) -> ActorLoad:
        pending = [row.inbox[s] for s in sorted(row.inbox) if s > row.done_seq][:_INBOX_LOAD]
        return ActorLoad(
            actor=actor,
            key=key,
            epoch=row.epoch,
            state=row.state,
            done_seq=row.done_seq,
            next_seq=row.next_seq,
            reminders=sorted(row.reminders.values(), key=lambda r: (r.due_at, r.name)),
            inbox=pending,
        )

    async def actor_open(self) -> None:
        """Nothing to migrate."""

    async def actor_post(self, msgs: list[NewMessage]) -> list[PostResult]:
        """See :meth:`ActorStore.actor_post`."""
        return [self._post(m) for m in msgs]

    async def actor_claim(
        self, worker: str, actor: str, key: str, now: float, lease_until: float
    ) -> ActorLoad | None:
        """See :meth:`ActorStore.actor_claim`."""
        row = self._rows.setdefault((actor, key), _Row())
        if not (row.free(now) or row.owner == worker):
            return None
        row.owner, row.lease_until, row.epoch = worker, lease_until, row.epoch + 1
        return self._load(actor, key, row)

    async def actor_claim_ready(
        self, worker: str, actors: list[str], now: float, lease_until: float, limit: int
    ) -> list[ActorLoad]:
        """See :meth:`ActorStore.actor_claim_ready`."""
        out: list[ActorLoad] = []
        for (actor, key), row in self._rows.items():
            if len(out) >= limit:
                break
            if actor not in actors or not row.free(now):
                continue
            wake = row.wake_at()
            if row.next_seq > row.done_seq or (wake is not None and wake <= now):
                row.owner, row.lease_until, row.epoch = worker, lease_until, row.epoch + 1
                out.append(self._load(actor, key, row))
        return out

    async def actor_commit(self, turn: Turn) -> TurnResult:
        """See :meth:`ActorStore.actor_commit`."""
        t = turn
        row = self._rows.get((t.actor, t.key))
        if row is None or row.epoch != t.epoch:
            held = None if row is None else row.epoch
            raise LeaseLost(
                f"actor {t.actor}/{t.key}: the turn of epoch {t.epoch} is stale (epoch is {held})"
            )
        if (t.workflow_events or t.workflow_starts) and self._wf is None:
            raise UsageError("this memory actor store has no workflow store to reach")
        for seq in [s for s in row.inbox if s <= t.done_seq]:
            self._where.pop(row.inbox.pop(seq).msg_id, None)
        row.done_seq = t.done_seq
        if t.state is not None:
            row.state = t.state
        for mid, reply in t.replies:
            self._replies[mid] = (reply, t.now)
        for name in t.cancel_reminders:
            row.reminders.pop(name, None)
        for r in t.set_reminders:
            row.reminders[r.name] = r
        if t.release:
            row.owner = row.lease_until = None
        events: list[InboxItem] = []
        dropped: list[str] = []
        started: list[str] = []
        if self._wf is not None:
            # MemoryStore's methods never suspend: awaiting them keeps this turn atomic
            for w in t.workflow_starts:
                new = NewInstance(
                    id=w.workflow_id, workflow=w.workflow, run_id=w.run_id, args=w.args, now=t.now
                )
                if (await self._wf.create(new)).created:
                    started.append(w.workflow_id)
            for e in t.workflow_events:
                try:
                    item = await self._wf.post(e.workflow_id, "event", e.name, e.payload, t.now)
                except WorkflowNotFound:
                    item = None
                if item is None:
                    dropped.append(e.workflow_id)
                else:
                    events.append(item)
        return TurnResult(
            posted=[self._post(m) for m in t.outbox],
            events=events,
            started=started,
            dropped=dropped,
        )

    async def actor_release(self, worker: str, keys: list[tuple[str, str, int]] | None) -> int:
        """See :meth:`ActorStore.actor_release`."""
        n = 0
        if keys is None:
            for row in self._rows.values():
                if row.owner == worker:
                    row.owner = row.lease_until = None
                    n += 1
            return n
        for actor, key, epoch in keys:
            held = self._rows.get((actor, key))
            if held is not None and held.owner == worker and held.epoch == epoch:
                held.owner = held.lease_until = None
                n += 1
        return n

    async def actor_renew(self, worker: str, lease_until: float) -> int:
        """See :meth:`ActorStore.actor_renew`."""
        n = 0
        for row in self._rows.values():
            if row.owner == worker:
                row.lease_until = lease_until
                n += 1
        return n

    async def actor_prune(self, before: float) -> int:
        """See :meth:`ActorStore.actor_prune`."""
        old = [mid for mid, (_, at) in self._replies.items() if at < before]
        for mid in old:
            del self._replies[mid]
        return len(old)

    async def actor_get(self, actor: str, key: str) -> ActorRecord | None:
        """See :meth:`ActorStore.actor_get`."""
        row = self._rows.get((actor, key))
        if row is None:
            return None
        return ActorRecord(
            actor=actor,
            key=key,
            state=row.state,
            done_seq=row.done_seq,
            next_seq=row.next_seq,
            owner=row.owner,
            lease_until=row.lease_until,
            epoch=row.epoch,
            wake_at=row.wake_at(),
            reminders=sorted(row.reminders.values(), key=lambda r: (r.due_at, r.name)),
        )

    async def actor_inbox(
        self, actor: str, key: str, after_seq: int, limit: int
    ) -> list[ActorMessage]:
        """See :meth:`ActorStore.actor_inbox`."""
        row = self._rows.get((actor, key))
        if row is None:
            return []
        return [row.inbox[s] for s in sorted(row.inbox) if s > after_seq][:limit]

    async def actor_reply(self, msg_id: str) -> Reply | None:
        """See :meth:`ActorStore.actor_reply`."""
        kept = self._replies.get(msg_id)
        return None if kept is None else kept[0]

    async def actor_owned_pending(self, worker: str) -> list[tuple[str, str, int]]:
        """See :meth:`ActorStore.actor_owned_pending`."""
        return [
            (actor, key, row.next_seq)
            for (actor, key), row in self._rows.items()
            if row.owner == worker and row.next_seq > row.done_seq
        ]

    async def actor_next_wake(self, actors: list[str], now: float) -> float | None:
        """See :meth:`ActorStore.actor_next_wake`."""
        wakes = [
            w
            for (actor, _), row in self._rows.items()
            if actor in actors and row.free(now) and (w := row.wake_at()) is not None
        ]
        return min(wakes, default=None)
