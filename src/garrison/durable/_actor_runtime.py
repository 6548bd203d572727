"""The actor runtime: activations, turns, ownership and reminders in one process.

Theory of operation
-------------------
A message is posted as a durable inbox row with a per-key sequence number (the post returns
only after its commit). If this process hosts the actor type it delivers the message to the
key's *activation* in memory, activating it first (a claim: owner, lease, a new epoch, and the
state, reminders and pending messages read in the same write).

An activation runs one *turn* at a time, so one message at a time per key, in sequence order:
it takes the consecutive pending messages (up to ``max_batch``) and due reminders, runs each
handler on the in-memory state, and commits ONE store write: consumed messages up to the last
seq, the new state (if it changed), the outbox messages, reminder changes and the replies to
record. A handler that raises is rolled back alone (the state is restored from the encoding
taken after the previous message, its effects dropped) and its failure recorded as its reply.
Replies reach local callers only after the commit. A crash before the commit loses nothing: the
messages are still in the inbox and the turn re-runs from the last committed state, so state
changes and the messages they send are exactly once; effects outside the actor (I/O in a
handler) are at least once.

Different keys run concurrently; their commits (and the workflow engine's) share transactions
through the SQLite writer's group commit. A poller renews leases, fires reminders, deactivates
idle actors (releasing their lease), claims keys with work that nobody holds (posted by another
process, or left by a crashed one once its lease expired) and notices messages posted elsewhere
to keys held here. Every turn carries the epoch of its claim: the store rejects a stale owner's
turn (:class:`LeaseLost`) and the activation is dropped without effect.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import math
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from garrison.core import Clock, SystemClock, UsageError, new_id

from ._actor import (
    REMINDER_HANDLER,
    ActorConfig,
    ActorContext,
    ActorType,
    StateTooLarge,
    check_key,
)
from ._actor_ref import ActorRef, is_actor
from ._codec import decode_any, encode, split_args
from ._errors import LeaseLost, failure_of
from ._runner import sleep_until
from ._stores import open_store
from ._stores.actors_base import (
    ActorLoad,
    ActorMessage,
    ActorStore,
    NewMessage,
    PostResult,
    Reminder,
    Reply,
    Turn,
    WorkflowEvent,
    WorkflowStart,
)
from ._stores.base import InboxItem, Store

__all__ = ["ActorStats", "ActorSystem", "actor_store_for", "system_for"]

log = logging.getLogger("garrison.durable.actors")
A = TypeVar("A")
_fenc = msgspec.msgpack.Encoder()
_stores: weakref.WeakKeyDictionary[Any, ActorStore] = weakref.WeakKeyDictionary()
_open_systems: list[ActorSystem] = []


def actor_store_for(store: Any) -> ActorStore:
    """The actor store over a workflow store (one per store object, so every system and engine
    on the same store object shares it), or ``store`` itself if it already is one."""
    if hasattr(store, "actor_commit"):
        return store  # type: ignore[no-any-return]
    from ._stores.memory import MemoryStore
    from ._stores.sqlite import SqliteStore

    # a PostgresStore exists only if its module (and asyncpg) was imported: never import it here
    pg = sys.modules.get("garrison.durable._stores.postgres")
    postgres = pg is not None and isinstance(store, pg.PostgresStore)
    if not (postgres or isinstance(store, SqliteStore | MemoryStore)):
        raise UsageError(f"actors are not supported on a {type(store).__name__} yet")
    found = _stores.get(store)
    if found is not None:
        return found
    made: ActorStore
    if postgres:
        from ._stores.actors_postgres import PostgresActorStore

        made = PostgresActorStore(store)
    elif isinstance(store, SqliteStore):
        from ._stores.actors_sqlite import SqliteActorStore

        made = SqliteActorStore(store)
    else:
        from ._stores.actors_memory import MemoryActorStore

        made = MemoryActorStore(store)
    _stores[store] = made
    return made


@dataclass
class ActorStats:
    """Counters of an :class:`ActorSystem`."""

    turns: int = 0
    """Turns committed (each one store write)."""
    messages: int = 0
    """Messages handled (consumed) by committed turns."""
    failures: int = 0
    """Handler invocations that raised (rolled back, recorded)."""
    reminders: int = 0
    """Reminder firings committed."""
    activations: int = 0
    deactivations: int = 0
    lease_lost: int = 0
    """Turns rejected because another worker (or a newer claim) owns the key."""


@dataclass(eq=False)
class _Activation:
    t: ActorType
    key: str
    epoch: int
    instance: Any
    ctx: ActorContext
    state_bytes: bytes
    done_seq: int
    known_seq: int
    reminders: dict[str, Reminder]
    last_used: float
    pending: dict[int, ActorMessage] = field(default_factory=dict)
    direct: collections.deque[tuple[int, ActorMessage]] = field(default_factory=collections.deque)
    """Local calls handed over without an inbox row (seq 0), each after the inbox seq it
    arrived behind, so per-key order holds."""
    task: asyncio.Task[None] | None = None
    closed: bool = False

    def add(self, m: ActorMessage) -> None:
        if m.seq > self.done_seq and m.seq not in self.pending:
            self.pending[m.seq] = m
            self.known_seq = max(self.known_seq, m.seq)

    def take(self, limit: int) -> list[ActorMessage]:
        """The next messages in order (direct ones leave their queue: the turn owns them)."""
        out: list[ActorMessage] = []
        seq = self.done_seq + 1
        while len(out) < limit:
            if self.direct and self.direct[0][0] < seq:
                out.append(self.direct.popleft()[1])
            elif seq in self.pending:
                out.append(self.pending[seq])
                seq += 1
            else:
                break
        return out

    def ready(self) -> bool:
        """Whether a message can be taken now."""
        nxt = self.done_seq + 1
        return nxt in self.pending or bool(self.direct and self.direct[0][0] < nxt)

    def due(self, now: float) -> list[Reminder]:
        return sorted((r for r in self.reminders.values() if r.due_at <= now), key=_by_due)

    def is_closed(self) -> bool:
        return self.closed

    def next_due(self) -> float:
        return min((r.due_at for r in self.reminders.values()), default=math.inf)


class HandlerCancelled(Exception):
    """A handler raised ``CancelledError`` while its turn was not being cancelled (it awaited
    something that was cancelled): a failure of that handler, not of the runtime."""


def _by_due(r: Reminder) -> tuple[float, str]:
    return r.due_at, r.name


class ActorSystem:
    """Hosts actors in this process and addresses them anywhere.

    ``store`` is the workflow store (or its URL) the actors live in: an :class:`Engine` created
    with ``actors=[...]`` hosts one on its own store (``engine.actors``), so actor turns and
    workflow transitions share commits. ``actors`` are the ``@actor`` classes this process
    runs; with ``worker=False`` it only sends messages and reads replies (a client).
    """

    def __init__(
        self,
        store: Store | ActorStore | str = "memory://",
        *,
        actors: Sequence[type] = (),
        config: ActorConfig | None = None,
        clock: Clock | None = None,
        worker: bool = True,
        engine: Any = None,
    ) -> None:
        self._base: Any = open_store(store) if isinstance(store, str) else store
        self._owns_store = isinstance(store, str)
        self.store: ActorStore = actor_store_for(self._base)
        self.config = config or ActorConfig()
        self.clock: Clock = clock or SystemClock()
        self.worker = worker
        self.worker_id = self.config.worker_id or f"a-{new_id()[-16:]}"
        self.engine = engine
        self.stats = ActorStats()
        self.types: dict[str, ActorType] = {}
        self._hosted: list[str] = []
        for cls in actors:
            self.register(cls)
        self._active: dict[tuple[str, str], _Activation] = {}
        self._activating: dict[tuple[str, str], list[ActorMessage]] = {}
        self._calls: dict[str, asyncio.Future[Reply]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._kick: asyncio.Event | None = None
        self._poller: asyncio.Task[None] | None = None
        self._opened = False
        # message ids: one random prefix per system and a counter (a uuid7 per message costs
        # more than the rest of a signal); unique across processes and restarts
        self._ids = itertools.count(1)
        self._id_prefix = new_id()[-20:]

    def local(self, actor: str, key: str) -> _Activation | None:
        """The activation of ``actor``/``key`` if it is live here."""
        a = self._active.get((actor, key))
        return None if a is None or a.closed else a

    def new_message_id(self) -> str:
        """A fresh, globally unique message id."""
        return f"{self._id_prefix}.{next(self._ids)}"

    def register(self, cls: type) -> type:
        """Host ``cls`` (an ``@actor`` class) in this process."""
        t = ActorType.of(cls)
        other = self.types.get(t.name)
        if other is not None and other.cls is not cls:
            raise UsageError(f"two actor classes are named {t.name!r}: {other.cls!r} and {cls!r}")
        self.types[t.name] = t
        if t.name not in self._hosted:
            self._hosted.append(t.name)
        return cls

    def actor_type(self, actor: type | str) -> ActorType:
        """The type of ``actor`` (a class, or the name of a registered one)."""
        if isinstance(actor, str):
            t = self.types.get(actor)
            if t is None:
                raise UsageError(
                    f"unknown actor type {actor!r}; registered: {', '.join(sorted(self.types))}"
                )
            return t
        t = ActorType.of(actor) if is_actor(actor) else None
        if t is None:
            raise UsageError(f"{actor!r} is not an @actor class")
        return t

    def ref(self, actor: type[A] | str, key: str) -> ActorRef[A]:
        """The address of ``actor``/``key`` (it exists virtually: no creation needed)."""
        return ActorRef(self, self.actor_type(actor), check_key(key))

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or migrate) the actor tables and, for a worker, recover and start polling."""
        if self._opened:
            return
        if self._owns_store:
            await self._base.open()
        await self.store.actor_open()
        self._kick = asyncio.Event()
        self._opened = True
        _open_systems.append(self)
        if self.worker:
            if self.config.worker_id is not None:  # our previous incarnation's leases are ours
                await self.store.actor_release(self.worker_id, None)
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def close(self) -> None:
        """Stop handling messages (unfinished turns re-run elsewhere or later), release leases."""
        if not self._opened:
            return
        self._opened = False
        with contextlib.suppress(ValueError):
            _open_systems.remove(self)
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        for a in self._active.values():
            a.closed = True
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._active.clear()
        self._activating.clear()
        for fut in self._calls.values():
            if not fut.done():
                fut.cancel()
        self._calls.clear()
        if self.worker:
            try:
                await self.store.actor_release(self.worker_id, None)
            except Exception:
                log.exception("actors: releasing leases failed (they will expire)")
        if self._owns_store:
            await self._base.close()

    async def __aenter__(self) -> ActorSystem:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _check_open(self) -> None:
        if not self._opened:
            raise UsageError("the actor system is not open (use `async with` or open())")

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def kick(self) -> None:
        """Wake the poller (reminders changed, work may be waiting)."""
        if self._kick is not None:
            self._kick.set()

    # -- messages in ------------------------------------------------------------------------------

    async def post(self, msgs: list[NewMessage]) -> list[PostResult]:
        """Post messages durably and hand them to local activations."""
        self._check_open()
        results = await self.store.actor_post(msgs)
        self._arrived(msgs, results)
        return results

    def _arrived(self, msgs: list[NewMessage], results: list[PostResult]) -> None:
        for m, r in zip(msgs, results, strict=True):
            if r.reply is not None or not r.seq:
                continue
            msg = ActorMessage(
                seq=r.seq, msg_id=m.msg_id, method=m.method, args=m.args, record=m.record
            )
            self._deliver(r.actor, r.key, msg, r.owner)

    def _deliver(self, actor: str, key: str, msg: ActorMessage | None, owner: str | None) -> None:
        ak = (actor, key)
        a = self._active.get(ak)
        if a is not None and not a.closed:
            if msg is not None:
                a.add(msg)
            self._wake(a)
            return
        buffer = self._activating.get(ak)
        if buffer is not None:
            if msg is not None:
                buffer.append(msg)
            return
        if not self.worker or not self._opened or actor not in self._hosted:
            return
        if owner is not None and owner != self.worker_id:
            return  # held elsewhere: its owner's poller finds the message
        self._activating[ak] = [] if msg is None else [msg]
        self._spawn(self._activate(actor, key))

    async def _activate(self, actor: str, key: str, load: ActorLoad | None = None) -> None:
        ak = (actor, key)
        try:
            if load is None:
                now = self.clock.time()
                load = await self.store.actor_claim(
                    self.worker_id, actor, key, now, now + self.config.lease_seconds
                )
        finally:
            buffer = self._activating.pop(ak, [])
        if load is None or not self._opened:
            return
        t = self.types[actor]
        ctx = ActorContext(self, t, key)
        instance = t.cls()
        state_bytes = load.state if load.state is not None else t.encode_state(t.state_type())
        instance.state = t.decode_state(state_bytes)
        instance.ctx = ctx
        a = _Activation(
            t=t,
            key=key,
            epoch=load.epoch,
            instance=instance,
            ctx=ctx,
            state_bytes=state_bytes,
            done_seq=load.done_seq,
            known_seq=load.next_seq,
            reminders={r.name: r for r in load.reminders},
            last_used=self.clock.time(),
        )
        for m in (*load.inbox, *buffer):
            a.add(m)
        old = self._active.get(ak)
        if old is not None:
            old.closed = True
        self._active[ak] = a
        self.stats.activations += 1
        self._wake(a)
        if a.reminders:
            self.kick()

    def _wake(self, a: _Activation) -> None:
        if a.task is None and not a.closed:
            a.task = self._spawn(self._drain(a))

    # -- turns ------------------------------------------------------------------------------------

    async def _drain(self, a: _Activation) -> None:
        try:
            while not a.closed:
                now = self.clock.time()
                batch = a.take(self.config.max_batch)
                if not batch and a.known_seq > a.done_seq:
                    more = await self.store.actor_inbox(a.t.name, a.key, a.done_seq, 1000)
                    if a.is_closed():
                        return
                    for m in more:
                        a.add(m)
                    batch = a.take(self.config.max_batch)
                    if not batch:  # nothing consecutive stored: our view was ahead
                        a.known_seq = max([a.done_seq, *a.pending])
                        a.direct = collections.deque(
                            (min(after, a.known_seq), m) for after, m in a.direct
                        )
                        batch = a.take(self.config.max_batch)
                due = a.due(now)
                if not batch and not due:
                    break
                await self._turn(a, batch, due, now)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("actor %s/%s: turn failed; the activation is dropped", a.t.name, a.key)
            self._drop(a)
        finally:
            a.task = None
            a.last_used = self.clock.time()

    async def _run(self, a: _Activation, name: str, args: Sequence[Any]) -> Any:
        fn = getattr(a.instance, name)
        timeout = self.config.handler_timeout
        if timeout is None:
            return await fn(*args)
        async with asyncio.timeout(timeout):
            return await fn(*args)

    async def _turn(
        self, a: _Activation, batch: list[ActorMessage], due: list[Reminder], now: float
    ) -> None:
        t = a.t
        good = a.state_bytes
        outbox: list[NewMessage] = []
        wf_events: list[WorkflowEvent] = []
        wf_starts: list[WorkflowStart] = []
        replies: list[tuple[str, Reply]] = []
        local: list[tuple[str, Reply]] = []
        set_r: dict[str, Reminder] = {}
        cancel: set[str] = set()
        view = dict(a.reminders)
        failures = 0

        def keep(fx_set: dict[str, Reminder], fx_cancel: set[str]) -> None:
            for name in fx_cancel:
                set_r.pop(name, None)
                view.pop(name, None)
                cancel.add(name)
            for name, r in fx_set.items():
                cancel.discard(name)
                set_r[name] = view[name] = r

        async def invoke(msg_id: str, name: str, args: Sequence[Any]) -> tuple[bool, Any]:
            nonlocal good, failures
            fx = a.ctx._begin(msg_id, view)
            try:
                try:
                    value = await self._run(a, name, args)
                except asyncio.CancelledError as exc:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # we are being cancelled: abandon the turn
                    raise HandlerCancelled(f"{name} was cancelled inside the handler") from exc
                new = t.encode_state(a.instance.state)
                if len(new) > self.config.max_state_bytes:
                    raise StateTooLarge(
                        f"actor {t.name}/{a.key}: state is {len(new):,} bytes after {name!r}, "
                        f"over ActorConfig.max_state_bytes ({self.config.max_state_bytes:,})"
                    )
            except Exception as exc:
                failures += 1
                a.instance.state = t.decode_state(good)  # roll this invocation back alone
                log.warning("actor %s/%s: %s raised %r", t.name, a.key, name, exc)
                return False, exc
            good = new
            outbox.extend(fx.outbox)
            wf_events.extend(fx.events)
            wf_starts.extend(fx.starts)
            keep(fx.sets, fx.cancels)
            return True, value

        try:
            for r in due:
                msg_id = f"{t.name}/{a.key}/reminder/{r.name}/{r.due_at!r}"
                await invoke(msg_id, REMINDER_HANDLER, (r.name, decode_any(r.payload)))
                if r.name in set_r or r.name in cancel:
                    continue  # the handler set or cancelled it itself
                if r.every:
                    periods = math.floor((now - r.due_at) / r.every) + 1
                    keep(
                        {
                            r.name: Reminder(
                                name=r.name,
                                due_at=r.due_at + periods * r.every,
                                every=r.every,
                                payload=r.payload,
                            )
                        },
                        set(),
                    )
                else:
                    keep({}, {r.name})
            for m in batch:
                try:
                    h = t.handler(m.method)
                    args = h.decode_args(split_args(m.args))
                except Exception as exc:  # a message older code sent, or malformed: fails alone
                    failures += 1
                    ok, value = False, exc
                else:
                    ok, value = await invoke(m.msg_id, m.method, args)
                # a direct call's reply goes to its caller only: nobody can ask for it again
                out = local if not m.seq else replies
                if ok and (m.record or not m.seq):
                    try:
                        data = encode(value, f"the result of {t.name}.{m.method}", self._limit)
                    except Exception as exc:
                        ok, value = False, exc
                    else:
                        out.append((m.msg_id, Reply(True, data)))
                if not ok:
                    out.append((m.msg_id, Reply(False, _fenc.encode(failure_of(value)))))
        except BaseException:
            # abandoned mid-turn (cancelled): nothing of it may survive in memory, and the
            # direct calls it took go back to their queue
            a.instance.state = t.decode_state(a.state_bytes)
            a.direct.extendleft(reversed([(a.done_seq, m) for m in batch if not m.seq]))
            raise
        turn = Turn(
            actor=t.name,
            key=a.key,
            epoch=a.epoch,
            now=now,
            done_seq=max([a.done_seq, *(m.seq for m in batch)]),
            state=good if good != a.state_bytes else None,
            outbox=outbox,
            replies=replies,
            set_reminders=list(set_r.values()),
            cancel_reminders=sorted(cancel),
            workflow_events=wf_events,
            workflow_starts=wf_starts,
        )
        try:
            result = await self.store.actor_commit(turn)
        except LeaseLost:
            self.stats.lease_lost += 1
            log.warning("actor %s/%s: lease lost, activation dropped", t.name, a.key)
            self._drop(a, [m for m in batch if not m.seq])
            return
        except BaseException:
            # memory is ahead of the store: reload before the next turn
            self._drop(a, [m for m in batch if not m.seq])
            raise
        a.done_seq = turn.done_seq
        a.state_bytes = good
        a.reminders = view
        for seq in [s for s in a.pending if s <= a.done_seq]:
            del a.pending[seq]
        self.stats.turns += 1
        self.stats.messages += len(batch)
        self.stats.reminders += len(due)
        self.stats.failures += failures
        for mid, reply in (*replies, *local):
            fut = self._calls.pop(mid, None)
            if fut is not None and not fut.done():
                fut.set_result(reply)
        if outbox:
            self._arrived(outbox, result.posted)
        if result.dropped:
            log.warning(
                "actor %s/%s: events to ended or unknown workflows dropped: %s",
                t.name,
                a.key,
                result.dropped,
            )
        if result.events or result.started:
            self._tell_engine(result.events, bool(result.started))
        if set_r or cancel:
            self.kick()

    def _tell_engine(self, events: list[InboxItem], started: bool) -> None:
        """Hand workflow events to a hot workflow of the hosting engine, or wake its poller."""
        engine = self.engine
        if engine is None:
            return  # another process's engine finds them in the store
        kick = started
        for item in events:
            if not engine.runner.deliver(item):
                kick = True
        if kick:
            engine.kick()

    @property
    def _limit(self) -> int:
        return self.config.max_payload_bytes

    def _drop(self, a: _Activation, unsaved: Sequence[ActorMessage] = ()) -> None:
        a.closed = True
        ak = (a.t.name, a.key)
        if self._active.get(ak) is a:
            del self._active[ak]
        # direct calls not committed: post them durably; whoever owns the key handles them
        direct = [*unsaved, *(m for _, m in a.direct)]
        a.direct.clear()
        if direct and self._opened:
            self._spawn(self._repost(a.t.name, a.key, direct))

    async def _repost(self, actor: str, key: str, msgs: list[ActorMessage]) -> None:
        now = self.clock.time()
        try:
            await self.post(
                [
                    NewMessage(
                        actor=actor,
                        key=key,
                        msg_id=m.msg_id,
                        method=m.method,
                        args=m.args,
                        record=True,
                        at=now,
                    )
                    for m in msgs
                ]
            )
        except Exception as exc:
            for m in msgs:
                fut = self._calls.pop(m.msg_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(exc)

    # -- calls and replies ------------------------------------------------------------------------

    async def wait_reply(
        self, msg_id: str, fut: asyncio.Future[Reply], timeout: float | None
    ) -> Reply:
        """The reply to ``msg_id``: from a local turn, else read from the store every poll."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            while True:
                wait = self.config.poll_interval
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        raise TimeoutError(f"no reply to actor message {msg_id} within {timeout}s")
                done, _ = await asyncio.wait({fut}, timeout=wait)
                if done:
                    if fut.cancelled():  # the system closed under us, not our caller
                        raise UsageError(
                            f"the actor system closed before the reply to message {msg_id} "
                            "arrived: the call may or may not have been handled (a call made "
                            "with an id is durable: call again with that id for its outcome)"
                        )
                    return fut.result()
                self._check_open()
                reply = await self.store.actor_reply(msg_id)
                if reply is not None:
                    return reply
        finally:
            if self._calls.get(msg_id) is fut:
                del self._calls[msg_id]

    # -- the poller -------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        assert self._kick is not None
        last_renew = -math.inf
        last_prune = -math.inf
        while self._opened:
            now = self.clock.time()
            try:
                if now - last_renew >= self.config.lease_seconds / 3:
                    await self.store.actor_renew(self.worker_id, now + self.config.lease_seconds)
                    last_renew = now
                await self._poll_once(now)
                if now - last_prune >= 60.0:
                    await self.store.actor_prune(now - self.config.reply_retention)
                    last_prune = now
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("actors: poll failed; retrying")
            wake = now + self.config.poll_interval
            for a in self._active.values():
                wake = min(wake, a.next_due())
                if a.task is None and not a.pending:
                    wake = min(wake, a.last_used + self.config.idle_timeout)
            self._kick.clear()
            # The wait is worked out when the sleeper runs, not now: a clock that moves before
            # the task starts (a FakeClock advanced meanwhile) must not push the wake-up later.
            sleeper = asyncio.ensure_future(sleep_until(self.clock, wake))
            kicked = asyncio.ensure_future(self._kick.wait())
            try:
                await asyncio.wait({sleeper, kicked}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in (sleeper, kicked):
                    f.cancel()
                await asyncio.gather(sleeper, kicked, return_exceptions=True)

    async def _poll_once(self, now: float) -> None:
        idle: list[_Activation] = []
        for a in list(self._active.values()):
            if a.task is not None:
                continue
            if a.ready() or a.due(now):
                self._wake(a)
            elif not a.pending and not a.direct and now - a.last_used >= self.config.idle_timeout:
                idle.append(a)
        if idle:
            for a in idle:
                self._drop(a)
            self.stats.deactivations += len(idle)
            await self.store.actor_release(
                self.worker_id, [(a.t.name, a.key, a.epoch) for a in idle]
            )
        if not self._hosted:
            return
        loads = await self.store.actor_claim_ready(
            self.worker_id, self._hosted, now, now + self.config.lease_seconds, 256
        )
        for load in loads:
            ak = (load.actor, load.key)
            if ak not in self._activating:
                self._activating[ak] = []
                self._spawn(self._activate(load.actor, load.key, load))
        for actor, key, next_seq in await self.store.actor_owned_pending(self.worker_id):
            held = self._active.get((actor, key))
            if held is None:
                self._deliver(actor, key, None, self.worker_id)
            elif next_seq > held.known_seq:
                held.known_seq = next_seq
                self._wake(held)

    # -- reads ------------------------------------------------------------------------------------

    async def state(self, actor: type[A] | str, key: str) -> Any:
        """The committed state of ``actor``/``key`` (the default state if it never changed)."""
        self._check_open()
        t = self.actor_type(actor)
        rec = await self.store.actor_get(t.name, check_key(key))
        if rec is None or rec.state is None:
            return t.state_type()
        return t.decode_state(rec.state)

    def active(self) -> list[tuple[str, str]]:
        """The (actor, key) pairs active in this process."""
        return [k for k, a in self._active.items() if not a.closed]


# -- from workflows -------------------------------------------------------------------------------


def system_for(actor: str, workflow_id: str) -> ActorSystem:
    """The open system of this process that knows ``actor`` (the one hosting the workflow's
    engine first)."""
    known = [s for s in _open_systems if actor in s.types]
    for s in known:
        runner = getattr(s.engine, "runner", None)
        if runner is not None and workflow_id in getattr(runner, "live", {}):
            return s
    if not known:
        raise UsageError(
            f"no open ActorSystem in this process knows actor {actor!r}: create the Engine with "
            "actors=[...]"
        )
    return known[0]
