"""The engine: runs workflows inside a process, and is how code starts, signals and queries them.

An :class:`Engine` owns a store (or is given one), a registry of workflow functions and a
:class:`Runner` of hot workflows. Entered (``async with engine`` or :meth:`Engine.open`), it
recovers: it takes back its own previous leases when it has a stable ``worker_id`` and then
claims every instance that is ready (new, due, woken, or lease-expired after a crash). Its
poller then keeps claiming due work, renews leases, picks up inbox rows posted by other
processes and fires cron schedules; it sleeps until the earliest known wake-up or
``poll_interval``, and is kicked awake by local events. :meth:`Engine.close` stops everything and
releases the leases, so the next worker can take the workflows at once.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, overload

import msgspec

from garrison.core import Clock, SystemClock, UsageError, new_id
from garrison.resilience import Retrier, RetryPolicy

from ._actor import ActorConfig
from ._actor_runtime import ActorSystem
from ._codec import decode_any, encode, encode_args
from ._config import EngineConfig
from ._cron import Cron
from ._errors import (
    FailureInfo,
    NonDeterminismError,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTerminated,
)
from ._handle import WorkflowHandle
from ._journal import History, decode_batch
from ._registry import Registry, WorkflowFn, workflow_name
from ._replay import ReplayReport, replay_check
from ._runner import EngineStats, Runner, sleep_until
from ._stores import open_store
from ._stores.base import (
    TERMINAL,
    ListFilter,
    NewInstance,
    Schedule,
    Status,
    Store,
    WorkflowInfo,
)

__all__ = ["Engine"]

log = logging.getLogger("garrison.durable")
T = TypeVar("T")
_Outcome = tuple[str, Status, bytes | None, FailureInfo | None]
"""How an instance ended: (workflow name, status, result, failure)."""


class Engine:
    """Runs durable workflows in this process, on one store.

    ``store`` is a :class:`Store` or a URL (``sqlite:///app.db``, ``memory://``); ``workflows``
    are the functions this engine may run (more with :meth:`register`). With ``worker=False``
    the engine only starts, signals and queries workflows, leaving the running to workers in
    other processes. The clock (default: the system clock) drives timers, so tests can use a
    :class:`~garrison.core.FakeClock`.
    """

    def __init__(
        self,
        store: Store | str = "memory://",
        *,
        workflows: list[WorkflowFn] | tuple[WorkflowFn, ...] = (),
        config: EngineConfig | None = None,
        clock: Clock | None = None,
        worker: bool = True,
        actors: Sequence[type] = (),
        actor_config: ActorConfig | None = None,
    ) -> None:
        self.store: Store = open_store(store) if isinstance(store, str) else store
        self._owns_store = isinstance(store, str)
        self.config = config or EngineConfig()
        self.clock: Clock = clock or SystemClock()
        self.worker = worker
        self.worker_id = self.config.worker_id or f"w-{new_id()[-16:]}"
        self.registry = Registry()
        for fn in workflows:
            self.registry.add(fn)
        self.retriers: dict[RetryPolicy, Retrier] = {}
        self.runner = Runner(self)
        self.running = False
        self._opened = False
        self._waiters: dict[str, list[asyncio.Future[_Outcome]]] = {}
        self._kick = asyncio.Event()
        self._next_wake = math.inf
        self._poller: asyncio.Task[None] | None = None
        self._activations: set[asyncio.Task[None]] = set()
        # actors share the store (and so the SQLite writer's group commit) and the worker id
        self._actors: ActorSystem | None = None
        if actors or actor_config is not None:
            cfg = actor_config or ActorConfig()
            if cfg.worker_id is None:
                cfg = msgspec.structs.replace(cfg, worker_id=self.worker_id)
            self._actors = ActorSystem(
                self.store, actors=actors, config=cfg, clock=self.clock, worker=worker, engine=self
            )

    @property
    def actors(self) -> ActorSystem:
        """The actors hosted with this engine (``Engine(..., actors=[...])``): ``ref`` them."""
        if self._actors is None:
            raise UsageError("this engine hosts no actors: create it with actors=[...]")
        return self._actors

    @property
    def stats(self) -> EngineStats:
        """Counters of this engine (transitions, loads, replayed batches, unloads ...)."""
        return self.runner.stats

    def register(self, fn: WorkflowFn, *, name: str | None = None) -> WorkflowFn:
        """Let this engine run ``fn`` (stored under ``name``, default its ``__qualname__``).
        Usable as a decorator."""
        self.registry.add(fn, name)
        return fn

    # -- lifecycle --------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the store and, for a worker, recover and start polling."""
        if self._opened:
            return
        if self._owns_store:
            await self.store.open()
        self._opened = True
        if self._actors is not None:
            await self._actors.open()
        if self.worker:
            self.running = True
            if self.config.worker_id is not None:  # our previous incarnation's leases are ours
                await self.store.release(self.worker_id, self.clock.time())
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())

    async def close(self) -> None:
        """Stop running workflows (they stay in the store), release leases, close the store."""
        if not self._opened:
            return
        self.running = False
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
            self._poller = None
        for task in list(self._activations):
            task.cancel()
        await asyncio.gather(*self._activations, return_exceptions=True)
        await self.runner.close()
        if self._actors is not None:
            await self._actors.close()
        if self.worker:
            try:
                await self.store.release(self.worker_id, self.clock.time())
            except Exception:
                log.exception("durable engine: releasing leases failed (they will expire)")
        for futs in self._waiters.values():
            for f in futs:
                f.cancel()
        self._waiters.clear()
        if self._owns_store:
            await self.store.close()
        self._opened = False

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- starting and addressing ------------------------------------------------------------------

    @overload
    async def start(
        self, workflow: Callable[..., Coroutine[Any, Any, T]], *args: Any, id: str | None = ...
    ) -> WorkflowHandle[T]: ...
    @overload
    async def start(
        self, workflow: str, *args: Any, id: str | None = ...
    ) -> WorkflowHandle[Any]: ...
    async def start(
        self, workflow: WorkflowFn | str, *args: Any, id: str | None = None
    ) -> WorkflowHandle[Any]:
        """Start ``workflow(*args)`` as instance ``id`` (default: a new id) and return its handle
        once the start is durable. Idempotent: if ``id`` exists, nothing starts and its handle
        is returned (:class:`UsageError` if it is an instance of another workflow);
        ``handle.created`` tells which happened."""
        self._check_open()
        wt = self.registry.get(workflow)
        wid = id or new_id()
        if not isinstance(wid, str) or not wid or len(wid) > 256:
            raise UsageError(
                f"a workflow id must be a non-empty string of at most 256 chars: {wid!r}"
            )
        data = encode_args(args, f"workflow {wt.name!r}", self.config.limits.max_payload_bytes)
        now = self.clock.time()
        run_id = new_id()
        if self.running and len(self.runner.live) < self.config.max_active:
            new = NewInstance(
                id=wid,
                workflow=wt.name,
                run_id=run_id,
                args=data,
                now=now,
                owner=self.worker_id,
                lease_until=now + self.config.lease_seconds,
            )
            created, existing = await self.runner.start_new(wt, new)
        else:
            new = NewInstance(id=wid, workflow=wt.name, run_id=run_id, args=data, now=now)
            res = await self.store.create(new)
            created, existing = res.created, res.existing
            if created:
                self.kick()
        if created:
            self.runner.stats.started += 1
        elif existing is not None and existing.workflow != wt.name:
            raise UsageError(
                f"workflow id {wid!r} is taken by an instance of {existing.workflow!r}, "
                f"not {wt.name!r}"
            )
        return WorkflowHandle(self, wid, created=created)

    def handle(self, workflow_id: str) -> WorkflowHandle[Any]:
        """The handle of an existing instance (not checked until used)."""
        return WorkflowHandle(self, workflow_id)

    async def signal(self, workflow_id: str, name: str, payload: Any = None) -> None:
        """Send event ``name`` with ``payload`` to an instance (its ``ctx.wait_event(name)``).
        Durable before this returns; kept until a wait takes it. :class:`WorkflowNotFound` for
        an unknown id, :class:`UsageError` for an instance that has ended."""
        self._check_open()
        data = encode(payload, f"event {name!r}", self.config.limits.max_payload_bytes)
        item = await self.store.post(workflow_id, "event", name, data, self.clock.time())
        if item is None:
            raise UsageError(f"workflow {workflow_id} has ended: it takes no more events")
        if not self.runner.deliver(item):
            self.kick()

    async def cancel(self, workflow_id: str, reason: str = "") -> bool:
        """Ask an instance to cancel: :class:`WorkflowCancelled` is raised where it waits, and
        it may compensate. False if it had ended already."""
        self._check_open()
        item = await self.store.post(workflow_id, "cancel", reason, b"", self.clock.time())
        if item is None:
            return False
        if not self.runner.deliver(item):
            self.kick()
        return True

    async def terminate(self, workflow_id: str, reason: str = "") -> bool:
        """End an instance now, without running more of its code (no compensation); its owner
        is fenced out. False if it had ended already."""
        self._check_open()
        failure = FailureInfo("garrison.durable.WorkflowTerminated", reason or "terminated")
        result = await self.store.terminate(workflow_id, failure, self.clock.time())
        if result is None:
            return False
        self.runner.drop(workflow_id)
        for item in result.posted:
            if not self.runner.deliver(item):
                self.kick()
        info = await self.store.get(workflow_id)
        workflow = info.workflow if info is not None else ""
        self.resolve(workflow_id, workflow, Status.TERMINATED, None, failure)
        return True

    # -- queries ----------------------------------------------------------------------------------

    async def get(self, workflow_id: str) -> WorkflowInfo:
        """An instance's info; :class:`WorkflowNotFound` if there is none."""
        self._check_open()
        info = await self.store.get(workflow_id)
        if info is None:
            raise WorkflowNotFound(f"no workflow instance {workflow_id!r}")
        return info

    async def list(
        self,
        *,
        status: Status | str | None = None,
        workflow: WorkflowFn | str | None = None,
        created_after: datetime | float | None = None,
        created_before: datetime | float | None = None,
        parent_id: str | None = None,
        id_prefix: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[WorkflowInfo]:
        """Instances matching every given filter, newest first."""
        self._check_open()
        f = ListFilter(
            status=None if status is None else Status(status),
            workflow=None if workflow is None else workflow_name(workflow),
            created_after=_ts(created_after),
            created_before=_ts(created_before),
            parent_id=parent_id,
            id_prefix=id_prefix,
            limit=limit,
            offset=offset,
        )
        return await self.store.query(f)

    async def history(self, workflow_id: str) -> History:
        """The current run's recorded history (for ``replay_check`` and operators)."""
        self._check_open()
        loaded = await self.store.load(workflow_id)
        if loaded is None:
            raise WorkflowNotFound(f"no workflow instance {workflow_id!r}")
        i = loaded.info
        return History(
            workflow_id=i.id,
            workflow=i.workflow,
            run_id=i.run_id,
            args=i.args,
            batches=tuple(decode_batch(b) for b in loaded.batches),
        )

    async def replay_check(self, *, limit: int = 10_000) -> builtins.list[ReplayReport]:
        """Replay every running instance of a registered workflow against the code registered
        here; a report per instance (``ok`` False: this code would block it)."""
        reports = []
        for name in self.registry.names():
            infos = await self.list(status=Status.RUNNING, workflow=name, limit=limit)
            for info in infos:
                history = await self.history(info.id)
                reports.append(replay_check(self.registry.get(name).fn, history))
        return reports

    async def result(self, workflow_id: str, timeout: float | None = None) -> _Outcome:
        """Wait for an instance to end: (workflow, status, result bytes, failure)."""
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # registered before the read: an end while the read is in flight is told to us
            fut: asyncio.Future[_Outcome] = loop.create_future()
            self._waiters.setdefault(workflow_id, []).append(fut)
            try:
                if workflow_id not in self.runner.live:  # hot here: its end will be told to us
                    info = await self.get(workflow_id)
                    if info.status in TERMINAL:
                        return info.workflow, info.status, info.result, info.failure
                wait = self.config.poll_interval
                if deadline is not None:
                    wait = min(wait, deadline - loop.time())
                    if wait <= 0:
                        raise TimeoutError(f"workflow {workflow_id} did not end within {timeout}s")
                done, _ = await asyncio.wait({fut}, timeout=wait)
            finally:
                waiters = self._waiters.get(workflow_id)
                if waiters is not None and fut in waiters:
                    waiters.remove(fut)
                    if not waiters:
                        del self._waiters[workflow_id]
            if done:
                return fut.result()

    # -- schedules --------------------------------------------------------------------------------

    async def schedule(
        self, name: str, cron: str, workflow: WorkflowFn | str, *args: Any, tz: str = "UTC"
    ) -> Schedule:
        """Start ``workflow(*args)`` at every fire time of ``cron`` (five fields or a macro such
        as ``@hourly``, on the wall clock of ``tz``), as instance ``"{name}@{time}"``: one
        instance per fire time, however many workers. After downtime one missed fire runs.
        Replaces a schedule of the same name."""
        self._check_open()
        parsed = Cron.parse(cron, tz)
        wf = workflow_name(workflow)
        data = encode_args(args, f"schedule {name!r}", self.config.limits.max_payload_bytes)
        s = Schedule(
            name=name,
            cron=cron,
            workflow=wf,
            args=data,
            tz=tz,
            next_at=parsed.next_after(self.clock.time()),
        )
        await self.store.put_schedule(s)
        self.kick()
        return s

    async def unschedule(self, name: str) -> bool:
        """Remove a schedule; whether it existed."""
        self._check_open()
        return await self.store.delete_schedule(name)

    async def schedules(self) -> builtins.list[Schedule]:
        """Every schedule."""
        self._check_open()
        return await self.store.schedules()

    # -- for the runner ---------------------------------------------------------------------------

    def kick(self) -> None:
        """Wake the poller now (there may be work in the store)."""
        self._kick.set()

    def note_wake(self, at: float | None) -> None:
        """A workflow unloaded by this engine needs a worker at ``at``."""
        if at is not None and at < self._next_wake:
            self._next_wake = at
            self.kick()

    def resolve(
        self,
        workflow_id: str,
        workflow: str,
        status: Status,
        result: bytes | None,
        failure: FailureInfo | None,
    ) -> None:
        """An instance ended: wake whoever waits for it here."""
        for fut in self._waiters.pop(workflow_id, []):
            if not fut.done():
                fut.set_result((workflow, status, result, failure))

    def decode_result(self, outcome: _Outcome, workflow_id: str) -> Any:
        """The value of an outcome, or raise how the workflow ended."""
        workflow, status, result, failure = outcome
        if status == Status.COMPLETED:
            wt = self.registry.find(workflow)
            data = result if result is not None else b"\xc0"
            return wt.result_decoder(data) if wt is not None else decode_any(data)
        what = failure.describe() if failure is not None else str(status)
        if status == Status.CANCELLED:
            raise WorkflowCancelled(f"workflow {workflow_id} was cancelled: {what}", failure)
        if status == Status.TERMINATED:
            raise WorkflowTerminated(f"workflow {workflow_id} was terminated: {what}", failure)
        raise WorkflowFailed(f"workflow {workflow_id} failed: {what}", failure)

    def _check_open(self) -> None:
        if not self._opened:
            raise UsageError("the engine is not open: use `async with engine:` or engine.open()")

    # -- the poller -------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        clock, cfg = self.clock, self.config
        renew_every = cfg.lease_seconds / 3
        last_renew = -math.inf
        while self.running:
            self._kick.clear()
            now = clock.time()
            # the next look, as a time: a clock that moves while this look reads the store (or
            # before the pause begins) shortens the pause instead of being slept through
            wake_at = now + min(cfg.poll_interval, renew_every)
            try:
                if now - last_renew >= renew_every and self.runner.live:
                    await self.store.renew(self.worker_id, now + cfg.lease_seconds)
                    last_renew = now
                await self._fire_schedules(now)
                again = await self._claim(now)
                if self.runner.live:
                    for item in await self.store.owned_inbox(self.worker_id):
                        self.runner.deliver(item)
                self._next_wake = math.inf
                nxt = await self.store.next_wake(self.registry.names(), now)
                if nxt is not None:
                    self._next_wake = nxt
                    wake_at = min(wake_at, nxt)
                nxt_s = min((s.next_at for s in await self.store.schedules()), default=None)
                if nxt_s is not None:
                    wake_at = min(wake_at, nxt_s)
                if again:
                    wake_at = now
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("durable engine: poll failed")
            await self._sleep_until(wake_at)

    async def _claim(self, now: float) -> bool:
        room = self.config.max_active - len(self.runner.live) - len(self._activations)
        if room <= 0:
            return False
        claims = await self.store.claim(
            self.worker_id, self.registry.names(), now, now + self.config.lease_seconds, room
        )
        for c in claims:
            task = asyncio.get_running_loop().create_task(self._activate(c))
            self._activations.add(task)
            task.add_done_callback(self._activations.discard)
        return len(claims) == room

    async def _activate(self, claim: Any) -> None:
        try:
            await self.runner.activate(claim)
        except asyncio.CancelledError:
            raise
        except NonDeterminismError:
            pass
        except Exception:
            log.exception("durable engine: loading workflow %s failed", claim.id)

    async def _fire_schedules(self, now: float) -> None:
        for s in await self.store.schedules():
            if s.next_at > now or self.registry.find(s.workflow) is None:
                continue
            nxt = Cron.parse(s.cron, s.tz).next_after(max(now, s.next_at))
            stamp = datetime.fromtimestamp(s.next_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            new = NewInstance(
                id=f"{s.name}@{stamp}", workflow=s.workflow, run_id=new_id(), args=s.args, now=now
            )
            await self.store.fire_schedule(s.name, s.next_at, nxt, new)

    async def _sleep_until(self, at: float) -> None:
        """Pause the poller until ``at`` on the engine's clock, or a kick."""
        if self._kick.is_set():
            return
        if at <= self.clock.time():
            await asyncio.sleep(0)
            return
        sleeper = asyncio.get_running_loop().create_task(sleep_until(self.clock, at))
        kicked = asyncio.get_running_loop().create_task(self._kick.wait())
        try:
            await asyncio.wait({sleeper, kicked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            kicked.cancel()
            await asyncio.gather(sleeper, kicked, return_exceptions=True)


def _ts(value: datetime | float | None) -> float | None:
    if value is None or isinstance(value, int | float):
        return value
    return value.timestamp()
