"""The actor store contract: what the actor runtime needs from a durable store, and what must be
atomic.

Model
-----
An *actor row* per (actor type, key): its encoded ``state`` (None until a turn first changed it),
``next_seq`` (the per-key sequence number of the last message posted to it), ``done_seq`` (the
last one its turns consumed; ``next_seq > done_seq`` means it has work), ``wake_at`` (its
earliest reminder) and ownership: ``owner`` / ``lease_until`` / ``epoch``, exactly as for
workflow instances — a claim bumps the epoch and every turn carries the epoch it claimed, so a
stale owner's turn is rejected (:class:`~garrison.durable.LeaseLost`).

An *inbox* row per pending message: (actor, key, seq), a unique ``msg_id``, the method and its
encoded arguments. A *reply* row per consumed message whose outcome must be remembered (calls,
signals sent with an explicit id, failures): keyed by ``msg_id``, so a caller retrying after a
crash gets the recorded outcome instead of a second execution. A *reminder* row per (actor,
key, name): due time, period, payload.

Atomicity (each write below is one transaction, durable before it returns)
--------------------------------------------------------------------------
``actor_post``   per message: if ``msg_id`` has a reply, return it; if it is already in an
                 inbox, return that; else bump the key's ``next_seq`` (creating the row) and
                 insert the message with that seq.
``actor_claim`` / ``actor_claim_ready``  take unowned or lease-expired keys (bump epoch, set
                 owner and lease) and return what a worker needs to activate them: state,
                 sequence numbers, reminders and the pending messages.
``actor_commit`` a *turn*, all or nothing: epoch check; delete the inbox rows up to the new
                 ``done_seq``; write the state (if it changed); post the outbox messages (the
                 same as ``actor_post``, in the same transaction: that is what makes the state
                 change and the messages it sends exactly once together); post its workflow
                 events and create the workflows it starts (the workflow store's tables, same
                 transaction); record replies; set and cancel reminders and recompute
                 ``wake_at``; optionally release ownership.
``actor_release`` / ``actor_renew``  give up / extend leases (release only at the held epoch).

Reads (``actor_get``, ``actor_inbox``, ``actor_reply``, ``actor_owned_pending``,
``actor_next_wake``) see committed data and never block writers.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from .base import InboxItem

__all__ = [
    "ActorLoad",
    "ActorMessage",
    "ActorRecord",
    "ActorStore",
    "NewMessage",
    "PostResult",
    "Reminder",
    "Reply",
    "Turn",
    "TurnResult",
    "WorkflowEvent",
    "WorkflowStart",
]


class NewMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A message to post to actor (``actor``, ``key``)."""

    actor: str
    key: str
    msg_id: str
    """Unique id: posting an id twice posts once (and returns the recorded reply if any)."""
    method: str
    args: bytes
    record: bool = False
    """Keep the outcome as a reply row (calls, and signals sent with an explicit id)."""
    at: float = 0.0
    fresh: bool = False
    """The id was just generated (or derived inside a committed turn): it cannot have been
    posted before, so the store may skip the duplicate lookup."""


class ActorMessage(msgspec.Struct, frozen=True, kw_only=True):
    """A pending inbox row of one actor."""

    seq: int
    msg_id: str
    method: str
    args: bytes
    record: bool = False


class Reply(msgspec.Struct, frozen=True, array_like=True):
    """A consumed message's outcome: ``ok`` and the encoded result, or an encoded FailureInfo."""

    ok: bool
    data: bytes


class PostResult(msgspec.Struct, frozen=True, kw_only=True):
    """What posting one message did: its ``seq`` (new or already pending), or the ``reply``
    recorded for an id that was already consumed."""

    actor: str
    key: str
    msg_id: str
    seq: int = 0
    reply: Reply | None = None
    duplicate: bool = False
    """The id was already posted (pending or consumed): nothing was inserted."""
    owner: str | None = None
    """Who held the key (by lease) after the post; None if nobody."""


class Reminder(msgspec.Struct, frozen=True, kw_only=True):
    """A durable reminder of one actor: fires at ``due_at``, then every ``every`` seconds."""

    name: str
    due_at: float
    every: float | None = None
    payload: bytes = b"\xc0"


class ActorLoad(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed actor: everything a worker needs to activate it at ``epoch``."""

    actor: str
    key: str
    epoch: int
    state: bytes | None
    done_seq: int
    next_seq: int
    reminders: list[Reminder] = []
    inbox: list[ActorMessage] = []


class ActorRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the store knows about one actor (for operators and tests)."""

    actor: str
    key: str
    state: bytes | None
    done_seq: int
    next_seq: int
    owner: str | None
    lease_until: float | None
    epoch: int
    wake_at: float | None
    reminders: list[Reminder] = []


class WorkflowEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event a turn sends to a workflow instance (its inbox), exactly once with the turn."""

    workflow_id: str
    name: str
    payload: bytes


class WorkflowStart(msgspec.Struct, frozen=True, kw_only=True):
    """A workflow instance a turn starts (if its id is free), exactly once with the turn."""

    workflow_id: str
    workflow: str
    args: bytes
    run_id: str


class TurnResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a committed turn caused elsewhere: its outbox posts, the workflow inbox rows it
    added (to hand to a hot workflow) and whether it started workflows."""

    posted: list[PostResult] = []
    events: list[InboxItem] = []
    started: list[str] = []
    dropped: list[str] = []
    """Workflow ids of events not delivered: no such instance, or it has ended."""


class Turn(msgspec.Struct, kw_only=True):
    """Everything one turn of one actor writes, committed atomically by ``actor_commit``."""

    actor: str
    key: str
    epoch: int
    now: float
    done_seq: int
    """The last message seq this turn consumed (inbox rows up to it are deleted)."""
    state: bytes | None = None
    """The new state; None: unchanged."""
    outbox: list[NewMessage] = []
    replies: list[tuple[str, Reply]] = []
    set_reminders: list[Reminder] = []
    cancel_reminders: list[str] = []
    workflow_events: list[WorkflowEvent] = []
    workflow_starts: list[WorkflowStart] = []
    release: bool = False


class ActorStore(Protocol):
    """A durable store for actors. See the module docstring for what is atomic."""

    async def actor_open(self) -> None:
        """Create or migrate the actor tables (the workflow store is already open)."""
        ...

    async def actor_post(self, msgs: list[NewMessage]) -> list[PostResult]:
        """Post messages (one transaction), deduplicated by ``msg_id``."""
        ...

    async def actor_claim(
        self, worker: str, actor: str, key: str, now: float, lease_until: float
    ) -> ActorLoad | None:
        """Claim one key (created if new) unless another worker holds a live lease on it."""
        ...

    async def actor_claim_ready(
        self, worker: str, actors: list[str], now: float, lease_until: float, limit: int
    ) -> list[ActorLoad]:
        """Claim unowned or lease-expired keys of ``actors`` that have pending messages or a due
        reminder, oldest first."""
        ...

    async def actor_commit(self, turn: Turn) -> TurnResult:
        """Apply a turn; :class:`LeaseLost` if its epoch is stale."""
        ...

    async def actor_release(self, worker: str, keys: list[tuple[str, str, int]] | None) -> int:
        """Give up ``worker``'s leases: all, or these (actor, key, epoch); how many."""
        ...

    async def actor_renew(self, worker: str, lease_until: float) -> int:
        """Extend every lease ``worker`` holds; how many."""
        ...

    async def actor_prune(self, before: float) -> int:
        """Forget replies recorded before ``before``; how many."""
        ...

    async def actor_get(self, actor: str, key: str) -> ActorRecord | None:
        """One actor's row and reminders, or None if it never got a message."""
        ...

    async def actor_inbox(
        self, actor: str, key: str, after_seq: int, limit: int
    ) -> list[ActorMessage]:
        """Pending messages of one key with seq > ``after_seq``, in order."""
        ...

    async def actor_reply(self, msg_id: str) -> Reply | None:
        """The recorded outcome of a consumed message, if kept."""
        ...

    async def actor_owned_pending(self, worker: str) -> list[tuple[str, str, int]]:
        """(actor, key, next_seq) of keys ``worker`` holds that have pending messages."""
        ...

    async def actor_next_wake(self, actors: list[str], now: float) -> float | None:
        """The earliest ``wake_at`` among keys of ``actors`` nobody holds."""
        ...
