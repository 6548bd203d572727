"""Runs hot workflows: feeds their machines, commits each transition, then acts on it.

Theory of operation
-------------------
Each hot workflow has one driver task. It sleeps until inputs are queued, then makes a
*transition*: feed the queued inputs to the machine (one batch), feed at once whatever the new
commands resolve without I/O (an event already in the inbox, a timer already due) as further
batches, and commit everything in one store write (group-committed with every other workflow's).
Only after the commit does anything leave the process: activities start, timers arm, local
children start, results reach waiters. So nothing is done on the strength of a state that a
crash could take back; a crash before the commit just repeats the transition after recovery
(activities at least once), and a step whose result was committed never runs again.

A transition that leaves the workflow idle (no activity running) with its next timer beyond
``hot_horizon`` also releases it: the same write gives up the lease and records when it needs
a worker again (``wake_at``), and the coroutine is dropped. A workflow that waits for events or
children stays hot for ``idle_unload`` seconds first. An unloaded workflow is claimed again by
the engine's poller when due, loaded and replayed.

A store write rejected with :class:`LeaseLost` means another owner took over: the workflow is
dropped from memory without further writes.

No lost wake-ups
----------------
Every write about a hot instance is made by its driver (the idle-unload timer only asks the
driver to unload), so an unload never races a transition of the same instance. An inbox row can
reach the engine while the instance is between memory and the store: while it is *loading*
(claimed, its snapshot being read) the row is buffered and handed over once it is hot; while
it is *leaving* (the release write is in flight) the row is refused, and the poller is kicked
again once the release committed, when the store has made the instance ready. Every timer
(workflow timers, the idle-unload timer, the poller's pause) waits for an absolute time
decided when it was armed, so a task that starts late, or a clock that moved meanwhile, does
not push the deadline back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from garrison.core import Clock, new_id

from ._activity import ActivityInfo, run_activity
from ._errors import LeaseLost, NonDeterminismError
from ._journal import Batch, TimerFired, WaitTimedOut, decode_batch, encode_batch
from ._live import Live
from ._machine import (
    ActivityCommand,
    ChildCommand,
    Command,
    Machine,
    Outcome,
    TimerCommand,
    WaitCommand,
)
from ._registry import WorkflowType
from ._stores.base import (
    Claim,
    CommitResult,
    InboxItem,
    NewChild,
    NewInstance,
    Status,
    Transition,
)

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["EngineStats", "Runner", "sleep_until"]

log = logging.getLogger("garrison.durable")


async def sleep_until(clock: Clock, at: float) -> None:
    """Sleep until ``clock.time()`` reaches ``at``: a deadline fixed by the caller, so a task
    that starts late (or a clock moved before it started) does not push it back."""
    while (left := at - clock.time()) > 0:
        await clock.sleep(left)


@dataclass
class EngineStats:
    """Counters of one engine (metrics; tests read them)."""

    started: int = 0
    """Workflows started by this engine."""
    ended: int = 0
    """Runs that ended here (completed, failed, cancelled)."""
    transitions: int = 0
    """Transitions committed."""
    activities: int = 0
    """Activity executions (each retried attempt included once per execution)."""
    loads: int = 0
    """Workflows loaded from the store (claimed after a start elsewhere, a wake-up, a crash)."""
    replayed_batches: int = 0
    """Recorded batches replayed by those loads."""
    unloads: int = 0
    """Workflows dropped from memory while waiting."""
    lease_lost: int = 0
    """Writes rejected because another owner took over."""
    blocked: int = 0
    """Workflows blocked by a non-determinism error (counted once the block is recorded)."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Ended runs by status."""


class Runner:
    """The hot workflows of one engine."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.live: dict[str, Live] = {}
        self.stats = EngineStats()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loading: dict[str, list[InboxItem]] = {}
        """Claimed instances being loaded: inbox rows that arrive meanwhile, handed over after."""
        self.leaving: dict[str, bool] = {}
        """Instances whose release write is in flight: whether an inbox row arrived meanwhile
        (then the poller is kicked once the release committed)."""
        # A store that hears of work from other processes (PostgreSQL LISTEN/NOTIFY) kicks the
        # poller at once instead of leaving it to the next poll.
        on_work = getattr(engine.store, "on_work", None)
        if engine.worker and callable(on_work):
            on_work(engine.kick)

    # -- tasks ------------------------------------------------------------------------------------

    def spawn(self, coro: Any, live: Live | None = None) -> asyncio.Task[Any]:
        """A task this runner cancels on close (and ``live`` on unload)."""
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if live is not None:
            live.tasks.add(task)
            task.add_done_callback(live.tasks.discard)
        return task

    async def close(self) -> None:
        """Cancel every task and forget every hot workflow (the store keeps them)."""
        for live in list(self.live.values()):
            self._forget(live)
        self.loading.clear()
        self.leaving.clear()
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- building ---------------------------------------------------------------------------------

    def machine(self, wt: WorkflowType, wid: str, run_id: str, args: bytes) -> Machine:
        """A fresh machine for one run of ``wt``."""
        return Machine(
            wt.fn,
            wt.decode_args(args),
            workflow=wt.name,
            workflow_id=wid,
            run_id=run_id,
            limits=self.e.config.limits,
        )

    async def start_new(self, wt: WorkflowType, new: NewInstance) -> tuple[bool, Any]:
        """Run a new instance's first transition in memory, then create it with that transition
        in one write. (created, existing info)."""
        live = Live(new.id, wt, new.run_id, 1, 1, self.machine(wt, new.id, new.run_id, new.args))
        created, existing = await self.transition(live, create=new)
        return created, existing

    async def activate(self, claim: Claim) -> None:
        """Load a claimed instance, replay it and put it to work."""
        buffer = self.loading.setdefault(claim.id, [])
        try:
            await self._activate(claim)
        finally:
            if self.loading.get(claim.id) is buffer:  # it did not become hot from this claim
                del self.loading[claim.id]
                missed = [item for item in buffer if not self.deliver(item)]
                if missed:
                    self.e.kick()  # the store has the rows: the poller looks again

    async def _activate(self, claim: Claim) -> None:
        e = self.e
        loaded = await e.store.load(claim.id)
        if loaded is None or loaded.info.status != Status.RUNNING:
            return
        info = loaded.info
        if info.epoch != claim.epoch or claim.id in self.live:
            return  # claimed again meanwhile (by us or another worker): that claim wins
        wt = e.registry.find(info.workflow)
        if wt is None:
            await e.store.release(e.worker_id, e.clock.time(), [claim.id])
            return
        live = Live(
            info.id,
            wt,
            info.run_id,
            info.runs,
            info.epoch,
            self.machine(wt, info.id, info.run_id, info.args),
            history_len=len(loaded.batches),
            inbox_version=loaded.inbox_version,
        )
        self.stats.loads += 1
        self.stats.replayed_batches += len(loaded.batches)
        try:
            live.machine.replay([decode_batch(b) for b in loaded.batches])
        except NonDeterminismError as exc:
            await self._block(live, exc)
            return
        self.live[live.id] = live
        for item in loaded.inbox + self.loading.pop(claim.id, []):
            live.deliver(item)  # rows posted while loading too (a row seen twice counts once)
        now = e.clock.time()
        live.machine.take_commands()  # issued by the replay: acted on below, as pending ones
        pending = live.machine.pending_commands()
        live.match_waits(pending)
        self._launch(live, pending, now)
        live.driver = self.spawn(self._drive(live), live)
        if live.machine.batches == 0 or live.machine.outcome is not None or live.inputs:
            live.wake.set()
        else:
            await self._settle(live, now)

    # -- the driver -------------------------------------------------------------------------------

    async def _drive(self, live: Live) -> None:
        try:
            while True:
                await live.wake.wait()
                live.wake.clear()
                if live.closed:
                    return
                m = live.machine
                if live.inputs or m.batches == 0 or m.outcome is not None:
                    await self.transition(live)
                elif live.idle_due:
                    live.idle_due = False
                    wake = live.wake_at()
                    hot = self.e.config.hot_horizon
                    if not live.running and (wake is None or wake - self.e.clock.time() > hot):
                        await self.unload(live)
                        return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("workflow %s: unexpected error; dropped from memory", live.id)
            self._forget(live)

    async def transition(self, live: Live, create: NewInstance | None = None) -> tuple[bool, Any]:
        """Feed what is queued, commit, then act. With ``create``: the first transition of a
        new instance, committed together with its creation."""
        e = self.e
        now = e.clock.time()
        m = live.machine
        batches: list[Batch] = []
        consumed: list[int] = []
        new_cmds: list[Command] = []
        children: list[NewChild] = []
        new_run: tuple[str, bytes] | None = None
        first_seq = live.history_len
        try:
            while True:
                while live.inputs or m.batches == 0:
                    inputs, taken = live.take()
                    consumed += taken
                    batches.append(m.advance(now, inputs))
                    cmds = m.take_commands()
                    new_cmds += cmds
                    live.match_waits(cmds)  # events already kept resolve at once
                    if m.outcome is not None:
                        break
                outcome = m.outcome
                if outcome is None or outcome.status != "continued":
                    break
                # continue-as-new: the same transition starts the next run on a fresh history
                assert outcome.args is not None
                m.close()
                live.run_id, live.runs = new_id(), live.runs + 1
                new_run = (live.run_id, outcome.args)
                m = live.machine = self.machine(live.wt, live.id, live.run_id, outcome.args)
                live.waits.clear()
                live.queued.clear()
                batches, new_cmds, first_seq = [], [], 0
        except NonDeterminismError as exc:
            if create is not None:
                raise
            await self._block(live, exc)
            return False, None
        for cmd in new_cmds:
            if isinstance(cmd, ChildCommand) and m.is_pending(cmd.step):
                children.append(NewChild(instance=self._child(live, cmd, now), step=cmd.step))
        outcome = m.outcome
        t = Transition(
            workflow_id=live.id,
            epoch=live.epoch,
            now=now,
            first_seq=first_seq,
            batches=[encode_batch(b) for b in batches],
            steps=m.steps,
            consumed=consumed,
            children=children,
            new_run=new_run,
            seen_inbox=live.inbox_version,
        )
        release = False
        if outcome is not None:
            t.status = Status(outcome.status)
            t.result, t.failure = outcome.result, outcome.failure
        elif self._idle(live, new_cmds) and not live.inputs:
            wake = live.wake_at()
            if not live.waits_outside() and (wake is None or wake - now > e.config.hot_horizon):
                release = t.release = True
                t.wake_at = wake
        leaving = release and create is None  # hot: it leaves memory before its release write
        if leaving:
            self._leave(live)
        try:
            if create is not None:
                res = await e.store.create(create, t)
                if not res.created:
                    m.close()
                    return False, res.existing
                result = res.commit
                if not release:
                    self.live[live.id] = live
                    live.driver = self.spawn(self._drive(live), live)
            else:
                result = await e.store.commit(t)
        except LeaseLost:
            self.stats.lease_lost += 1
            self._forget(live)
            return False, None
        except asyncio.CancelledError:
            raise
        except Exception:
            if create is not None:
                m.close()
                raise
            log.exception("workflow %s: commit failed; dropped from memory until claimed", live.id)
            self._forget(live)
            return False, None
        finally:
            if leaving:
                self._left(live)
        self.stats.transitions += 1
        live.history_len = first_seq + len(batches)
        self._after(live, result, children)
        if outcome is not None:
            self._ended(live, outcome)
        elif release:
            self.stats.unloads += 1
            self._forget(live)  # (a new instance that released at once was never hot)
            e.note_wake(t.wake_at)
        else:
            self._launch(live, new_cmds, now)
            await self._settle(live, now)
        return True, None

    def _child(self, live: Live, cmd: ChildCommand, now: float) -> NewInstance:
        local = self.e.running and self.e.registry.find(cmd.workflow) is not None
        return NewInstance(
            id=cmd.child_id,
            workflow=cmd.workflow,
            run_id=new_id(),
            args=cmd.args,
            now=now,
            parent_id=live.id,
            owner=self.e.worker_id if local else None,
            lease_until=now + self.e.config.lease_seconds if local else None,
        )

    def _after(self, live: Live, result: CommitResult, children: list[NewChild]) -> None:
        for item in result.posted:  # outcomes for parents: hot here, or made ready in the store
            if not self.deliver(item):
                self.e.kick()
        made = set(result.created)
        for ch in children:
            new = ch.instance
            if new.id in made:
                if new.owner is not None:
                    wt = self.e.registry.find(new.workflow)
                    assert wt is not None
                    child = Live(
                        new.id, wt, new.run_id, 1, 1, self.machine(wt, new.id, new.run_id, new.args)
                    )
                    self.live[new.id] = child
                    child.driver = self.spawn(self._drive(child), child)
                    child.wake.set()
                else:
                    self.e.kick()

    def _ended(self, live: Live, outcome: Outcome) -> None:
        self.stats.ended += 1
        self.stats.outcomes[outcome.status] = self.stats.outcomes.get(outcome.status, 0) + 1
        self._forget(live)
        status = Status(outcome.status)
        self.e.resolve(live.id, live.wt.name, status, outcome.result, outcome.failure)

    def _idle(self, live: Live, new_cmds: list[Command]) -> bool:
        return not live.running and not any(isinstance(c, ActivityCommand) for c in new_cmds)

    async def _settle(self, live: Live, now: float) -> None:
        """After a transition that keeps it hot: unload an idle workflow whose next timer is
        far, or arm its idle-unload timer."""
        if live.inputs or live.running or live.closed:
            return
        self._disarm_idle(live)
        wake = live.wake_at()
        hot = self.e.config.hot_horizon
        if not live.waits_outside() and (wake is None or wake - now > hot):
            await self.unload(live)
        else:
            at = self.e.clock.time() + self.e.config.idle_unload  # idle from now on
            live.idle_timer = self.spawn(self._idle_unload(live, at), live)

    async def _idle_unload(self, live: Live, at: float) -> None:
        await sleep_until(self.e.clock, at)
        live.idle_timer = None
        live.idle_due = True  # the driver unloads it if it is still idle: it makes every write
        live.wake.set()

    def _disarm_idle(self, live: Live) -> None:
        if live.idle_timer is not None:
            live.idle_timer.cancel()
            live.idle_timer = None
        live.idle_due = False

    async def unload(self, live: Live) -> None:
        """Release an idle workflow: one write (it leaves memory first, see :meth:`_leave`)."""
        now = self.e.clock.time()
        wake = live.wake_at()
        t = Transition(
            workflow_id=live.id,
            epoch=live.epoch,
            now=now,
            first_seq=live.history_len,
            steps=live.machine.steps,
            release=True,
            wake_at=wake,
            seen_inbox=live.inbox_version,
        )
        self._leave(live)
        try:
            await self.e.store.commit(t)
        except LeaseLost:
            self.stats.lease_lost += 1
            return
        finally:
            self._left(live)
        self.stats.unloads += 1
        self.e.note_wake(wake)

    async def _block(self, live: Live, exc: NonDeterminismError) -> None:
        log.error("%s", exc)
        self._forget(live)
        now = self.e.clock.time()
        t = Transition(
            workflow_id=live.id,
            epoch=live.epoch,
            now=now,
            first_seq=live.history_len,
            steps=live.machine.steps,
            release=True,
            wake_at=now + self.e.config.blocked_retry,
            seen_inbox=1 << 62,
            blocked=str(exc),
        )
        try:
            await self.e.store.commit(t)
        except LeaseLost:
            self.stats.lease_lost += 1
            return
        self.stats.blocked += 1

    def _leave(self, live: Live) -> None:
        """Drop ``live`` from memory before the write that releases it. An inbox row arriving
        while that write is in flight finds it gone (the engine kicks the poller) and is noted,
        so :meth:`_left` kicks the poller again once the store made the instance ready."""
        self.leaving[live.id] = False
        self._forget(live)

    def _left(self, live: Live) -> None:
        if self.leaving.pop(live.id, False):
            self.e.kick()

    def _forget(self, live: Live) -> None:
        live.closed = True
        live.wake.set()
        if self.live.get(live.id) is live:
            del self.live[live.id]
        current = asyncio.current_task()
        for task in list(live.tasks):
            if task is not current:
                task.cancel()
        live.machine.close()

    # -- acting on commands -----------------------------------------------------------------------

    def _launch(self, live: Live, cmds: list[Command], now: float) -> None:
        for cmd in cmds:
            if not live.machine.is_pending(cmd.step) or cmd.step in live.queued:
                continue
            if isinstance(cmd, ActivityCommand):
                live.running.add(cmd.step)
                self.spawn(self._activity(live, live.machine, cmd), live)
            elif isinstance(cmd, TimerCommand):
                self._arm(live, cmd.step, cmd.fire_at, now)
            elif (
                isinstance(cmd, WaitCommand) and cmd.deadline is not None and cmd.step in live.waits
            ):
                self._arm(live, cmd.step, cmd.deadline, now)
        if live.running:
            self._disarm_idle(live)

    def _arm(self, live: Live, step: int, at: float, now: float) -> None:
        if at <= now:
            self._fire(live, step)
        else:
            self.spawn(self._timer(live, live.machine, step, at), live)

    async def _timer(self, live: Live, machine: Machine, step: int, at: float) -> None:
        await sleep_until(self.e.clock, at)
        if live.machine is machine:
            self._fire(live, step)

    def _fire(self, live: Live, step: int) -> None:
        wait = live.waits.pop(step, None)
        live.feed(WaitTimedOut(step, wait.name) if wait is not None else TimerFired(step))

    async def _activity(self, live: Live, machine: Machine, cmd: ActivityCommand) -> None:
        e = self.e
        key = f"{live.id}:{cmd.step}" if live.runs == 1 else f"{live.id}:{live.runs}:{cmd.step}"
        self.stats.activities += 1
        try:
            result = await run_activity(
                cmd.fn,
                cmd.args,
                info=ActivityInfo(live.id, live.wt.name, cmd.step, cmd.name, 1, key),
                retry=cmd.retry,
                timeout=cmd.timeout,
                retriers=e.retriers,
                clock=e.clock,
                limit=e.config.limits.max_payload_bytes,
            )
        finally:
            if live.machine is machine:
                live.running.discard(cmd.step)
        if live.machine is machine and not live.closed:
            live.feed(result)

    # -- inbox ------------------------------------------------------------------------------------

    def deliver(self, item: InboxItem) -> bool:
        """Hand an inbox row to its workflow if it is hot (or being loaded) here; False if it is
        not, and then the store has made the instance ready for a claim."""
        wid = item.workflow_id
        live = self.live.get(wid)
        if live is None or live.closed:
            buffer = self.loading.get(wid)
            if buffer is not None:
                buffer.append(item)
                return True
            if wid in self.leaving:
                self.leaving[wid] = True
            return False
        live.deliver(item)
        if live.inputs:
            self._disarm_idle(live)
        return True

    def drop(self, workflow_id: str) -> None:
        """Forget a hot workflow (it was terminated)."""
        live = self.live.get(workflow_id)
        if live is not None:
            self._forget(live)
