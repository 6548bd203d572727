"""The store contract: what the engine needs from a durable store, and what must be atomic.

Model
-----
An *instance* row per workflow id: its workflow type, status, current run (id, number,
arguments), outcome, and the fields that schedule work:

* ``ready_at`` — when the instance next needs a worker (now for new or woken work, a timer's
  fire time while it sleeps, ``NULL`` while it waits only for outside events or has ended);
* ``owner`` / ``lease_until`` / ``epoch`` — the worker that holds it in memory, until when, and
  a counter bumped by every claim and every termination. Every write a worker makes about an
  instance carries the epoch it claimed; the store rejects it (:class:`LeaseLost`) when the
  epoch has moved on, so a stale owner (paused, partitioned, presumed dead) can never write;
* ``inbox_version`` — bumped by every inbox row posted to the instance.

A *history* per instance: the encoded batches of the current run, numbered from 0. An *inbox*
per instance: events, cancellation requests and child outcomes not yet taken by the run. A
*waiter* row per (child, parent step): whom to tell when a child ends. *Schedules*: cron
entries and their next fire time.

Atomicity (each method below is one transaction)
------------------------------------------------
``create``   insert the instance if its id is free, with its first transition, or change nothing.
``commit``   all of a transition or nothing: epoch check; append batches (or, for a new run,
             replace the history); delete the inbox rows it consumed; create children (if their
             ids are free) and waiter rows; set status/outcome/ready_at/ownership; on an end,
             post the outcome to every waiter's inbox (bumping their inbox_version and making
             them ready) and drop the waiters.
``post``     insert the inbox row, bump inbox_version, make the instance ready.
``terminate`` end the instance, bump its epoch (fencing its owner out), notify its waiters.
``claim``    pick ready, unowned (or lease-expired) instances of the given types, set owner and
             lease, bump epoch: on PostgreSQL ``SELECT ... FOR UPDATE SKIP LOCKED``, so two
             workers never claim the same instance.
``fire_schedule`` advance the schedule's next fire time (compare-and-set) and create its
             instance (if its id is free).

Durability: a method returns only after its transaction is durable (fsync), so nothing the
engine acknowledges, and no side effect it starts after a commit, precedes the commit.

Reads (``get``, ``query``, ``load``, ``history``, ``owned_inbox``, ``next_wake``) see committed
data and never block writers.
"""

from __future__ import annotations

import enum
from typing import Protocol

import msgspec

from garrison.durable._errors import FailureInfo
from garrison.durable._journal import ChildCompleted, ChildFailed

__all__ = [
    "Claim",
    "CommitResult",
    "CreateResult",
    "InboxItem",
    "ListFilter",
    "Loaded",
    "NewChild",
    "NewInstance",
    "Schedule",
    "Status",
    "Store",
    "StoreStats",
    "Transition",
    "WorkflowInfo",
    "child_outcome",
]


class Status(enum.StrEnum):
    """A workflow instance's status."""

    RUNNING = "running"
    """Started and not ended (waiting or working)."""
    COMPLETED = "completed"
    """Returned a result."""
    FAILED = "failed"
    """Raised an error."""
    CANCELLED = "cancelled"
    """Ended by a cancellation request."""
    TERMINATED = "terminated"
    """Ended by an operator without running more of its code."""


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.TERMINATED})


class WorkflowInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the store knows about one workflow instance."""

    id: str
    """The instance id."""
    workflow: str
    """The workflow's registered name."""
    status: Status
    """Running or how it ended."""
    run_id: str
    """The current (or last) run's id."""
    runs: int
    """How many runs (1 + continue-as-new count)."""
    args: bytes
    """The current run's arguments (msgpack)."""
    created_at: float
    """When the instance was created (epoch seconds)."""
    updated_at: float
    """Its last change."""
    closed_at: float | None = None
    """When it ended."""
    ready_at: float | None = None
    """When it next needs a worker (None: waiting for an event, or ended)."""
    owner: str | None = None
    """The worker holding it in memory, if any."""
    epoch: int = 0
    """Bumped by every claim and termination (the fencing token)."""
    steps: int = 0
    """Steps issued by the current run."""
    parent_id: str | None = None
    """The parent workflow's id, for a child."""
    result: bytes | None = None
    """The result (msgpack) when completed."""
    failure: FailureInfo | None = None
    """Why it failed, was cancelled or terminated."""
    blocked: str | None = None
    """Why no worker can run it now (a non-determinism error), else None."""


class NewInstance(msgspec.Struct, frozen=True, kw_only=True):
    """An instance to create. With ``owner`` set it is created claimed (epoch 1)."""

    id: str
    workflow: str
    run_id: str
    args: bytes
    now: float
    parent_id: str | None = None
    owner: str | None = None
    lease_until: float | None = None


class NewChild(msgspec.Struct, frozen=True, kw_only=True):
    """A child started by a transition: created if its id is free; its end is posted to the
    parent's inbox as a ``child`` row for ``step`` (at once if it has already ended)."""

    instance: NewInstance
    step: int


class InboxItem(msgspec.Struct, frozen=True, kw_only=True):
    """A row of an instance's inbox: ``kind`` is ``event`` (``name``, ``payload``), ``cancel``
    (``name`` = reason) or ``child`` (``step``; ``payload`` an encoded ChildCompleted/Failed)."""

    seq: int
    workflow_id: str
    kind: str
    name: str
    payload: bytes = b""
    step: int = 0
    version: int = 0
    """The instance's inbox_version after this row."""


class Transition(msgspec.Struct, kw_only=True):
    """Everything one step of one run writes, committed atomically by :meth:`Store.commit`."""

    workflow_id: str
    epoch: int
    """The epoch the writer claimed; a mismatch rejects the whole transition."""
    now: float
    first_seq: int = 0
    """The history index of ``batches[0]`` (the count already stored, or 0 for a new run)."""
    batches: list[bytes] = []
    """Encoded batches appended to the current run's history."""
    steps: int = 0
    """Steps issued by the run so far."""
    consumed: list[int] = []
    """Inbox rows taken by this transition (deleted)."""
    children: list[NewChild] = []
    status: Status = Status.RUNNING
    result: bytes | None = None
    failure: FailureInfo | None = None
    new_run: tuple[str, bytes] | None = None
    """Continue-as-new: (run id, arguments); the history restarts with ``batches``."""
    release: bool = False
    """Give up ownership (the run is unloaded from memory)."""
    wake_at: float | None = None
    """With ``release``: when the run next needs a worker (None: only an inbox row wakes it)."""
    seen_inbox: int = 0
    """The inbox_version the writer had seen: a release with newer rows makes it ready now."""
    blocked: str | None = None
    """Release as blocked (non-determinism): retried at ``wake_at``."""


class CommitResult(msgspec.Struct, frozen=True):
    """What a commit caused elsewhere: inbox rows it posted (child outcomes), children created."""

    posted: list[InboxItem] = []
    created: list[str] = []


class CreateResult(msgspec.Struct, frozen=True):
    """What :meth:`Store.create` did: ``created``, or the ``existing`` instance's info."""

    created: bool
    existing: WorkflowInfo | None = None
    commit: CommitResult = CommitResult()


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """An instance a worker claimed: load it with the epoch it now owns."""

    id: str
    workflow: str
    epoch: int


class Loaded(msgspec.Struct, frozen=True, kw_only=True):
    """An instance with its current run's history and its inbox."""

    info: WorkflowInfo
    batches: list[bytes]
    inbox: list[InboxItem]
    inbox_version: int


class ListFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which instances ``list`` returns, newest first."""

    status: Status | None = None
    workflow: str | None = None
    created_after: float | None = None
    created_before: float | None = None
    parent_id: str | None = None
    id_prefix: str | None = None
    limit: int = 100
    offset: int = 0


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A cron schedule: start ``workflow(*args)`` at every fire time of ``cron`` in ``tz``."""

    name: str
    cron: str
    workflow: str
    args: bytes
    tz: str = "UTC"
    next_at: float
    """The next fire time (epoch seconds)."""
    last_at: float | None = None
    """The last fire time, if any."""


class StoreStats(msgspec.Struct):
    """Counters of a store's writes (a metric; group commit makes ``commits`` << ``writes``)."""

    commits: int = 0
    """Transactions committed."""
    writes: int = 0
    """Write operations (creates, commits, posts, claims ...) they carried."""


class Store(Protocol):
    """A durable store for workflow instances. See the module docstring for atomicity."""

    stats: StoreStats

    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""
        ...

    async def close(self) -> None:
        """Finish pending writes and disconnect."""
        ...

    # -- writes: each one atomic and durable before it returns --------------------------------

    async def create(self, new: NewInstance, first: Transition | None = None) -> CreateResult:
        """Create ``new`` and apply its ``first`` transition if the id is free; else change
        nothing and return the existing instance's info."""
        ...

    async def commit(self, t: Transition) -> CommitResult:
        """Apply a transition; :class:`LeaseLost` if the epoch moved on or the run ended."""
        ...

    async def post(
        self, workflow_id: str, kind: str, name: str, payload: bytes, now: float
    ) -> InboxItem | None:
        """Add an inbox row and make the instance ready; None when the instance has ended;
        :class:`WorkflowNotFound` for an unknown id."""
        ...

    async def terminate(
        self, workflow_id: str, failure: FailureInfo, now: float
    ) -> CommitResult | None:
        """End a running instance as terminated and fence its owner out; None if it had ended."""
        ...

    async def claim(
        self,
        worker: str,
        workflows: list[str],
        now: float,
        lease_until: float,
        limit: int,
        ids: list[str] | None = None,
    ) -> list[Claim]:
        """Claim up to ``limit`` running instances of ``workflows`` that are ready (``ready_at <=
        now``) and unowned or lease-expired (only ``ids`` when given), oldest ready first."""
        ...

    async def renew(self, worker: str, lease_until: float) -> int:
        """Extend every lease ``worker`` holds; how many."""
        ...

    async def release(self, worker: str, now: float, ids: list[str] | None = None) -> int:
        """Give up ``worker``'s leases (all, or ``ids``) and make those instances ready now."""
        ...

    async def put_schedule(self, schedule: Schedule) -> None:
        """Create or replace a schedule."""
        ...

    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; whether it existed."""
        ...

    async def fire_schedule(
        self, name: str, fired_at: float, next_at: float, new: NewInstance
    ) -> bool:
        """If the schedule's next fire time is still ``fired_at``: move it to ``next_at`` and
        create ``new`` (if its id is free). False if another worker fired it first."""
        ...

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, workflow_id: str) -> WorkflowInfo | None:
        """One instance, or None."""
        ...

    async def query(self, f: ListFilter) -> list[WorkflowInfo]:
        """Instances matching ``f``, newest first."""
        ...

    async def load(self, workflow_id: str) -> Loaded | None:
        """An instance with its history and inbox (to replay it)."""
        ...

    async def owned_inbox(self, worker: str) -> list[InboxItem]:
        """Inbox rows of the instances ``worker`` holds (to notice posts from elsewhere)."""
        ...

    async def next_wake(self, workflows: list[str], now: float) -> float | None:
        """The earliest ``ready_at`` among unowned running instances of ``workflows``."""
        ...

    async def schedules(self) -> list[Schedule]:
        """Every schedule."""
        ...


_enc = msgspec.msgpack.Encoder()


def child_outcome(
    step: int,
    workflow: str,
    child_id: str,
    status: str,
    result: bytes | None,
    failure: FailureInfo | None,
) -> bytes:
    """The inbox payload telling a parent how its child ended."""
    if status == Status.COMPLETED:
        return _enc.encode(ChildCompleted(step, workflow, child_id, result or b"\xc0"))
    return _enc.encode(ChildFailed(step, workflow, child_id, status, failure))
