"""The replay machine: runs one workflow run deterministically, sans I/O.

Theory of operation
-------------------
A workflow is an ``async def`` that awaits only durable calls. The machine drives its coroutine
by hand (``send``/``throw``), never through an event loop: each durable call *issues a step*
(numbered 1, 2, ... in the order the code makes the calls) and returns a :class:`Step` future;
awaiting it parks the coroutine until an input resolves it. Coroutines passed to ``ctx.gather``
become *fibers* of the same run, scheduled FIFO.

The engine feeds inputs in batches (:class:`~._journal.Batch`). For each input, in order, the
machine resolves the step it names and runs every fiber that became ready until all are parked
again. So what the code does, the steps it issues and their numbers depend only on the sequence
of batches, which the journal records; feeding the recorded batches to a fresh coroutine brings
it back to exactly where it was (replay), and recorded results are returned without running
anything again.

What the machine checks while replaying (:class:`NonDeterminismError`, which user code cannot
catch: the machine stops and the engine blocks the workflow):

* a step the code issues has the kind and name the journal recorded for that number;
* every recorded input names a step the code has issued by then;
* the code does not return while recorded batches remain;
* version markers recorded for a change lie in the range the code supports.

What the machine outputs: commands for the steps issued (the engine starts activities, arms
timers, matches waits with events, creates children *after* the batch that issued them is
committed) and, when the root coroutine ends, an :class:`Outcome`.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from garrison.resilience import RetryPolicy

from ._codec import Decode, decode_any, encode
from ._config import Limits
from ._errors import (
    ActivityError,
    ChildWorkflowError,
    FailureInfo,
    HistoryTooLong,
    NonDeterminismError,
    WaitTimeout,
    WorkflowCancelled,
    failure_of,
)
from ._futures import DFuture, Step
from ._journal import (
    ActivityCompleted,
    ActivityFailed,
    Batch,
    CancelRequested,
    ChildCompleted,
    ChildFailed,
    EventReceived,
    Input,
    TimerFired,
    WaitTimedOut,
)

__all__ = [
    "ActivityCommand",
    "ChildCommand",
    "Command",
    "ContinueAsNew",
    "DEFAULT_VERSION",
    "Machine",
    "Outcome",
    "TimerCommand",
    "WaitCommand",
]

DEFAULT_VERSION = 0
"""What ``ctx.version`` returns for a run that passed the change point before the change."""

_KIND = {
    ActivityCompleted: "activity",
    ActivityFailed: "activity",
    TimerFired: "sleep",
    EventReceived: "event",
    WaitTimedOut: "event",
    ChildCompleted: "child",
    ChildFailed: "child",
}


# -- commands (machine -> engine) --------------------------------------------------------------


@dataclass(slots=True)
class ActivityCommand:
    """Run ``fn(*args)`` as step ``step``."""

    step: int
    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    retry: RetryPolicy | None
    timeout: float | None


@dataclass(slots=True)
class TimerCommand:
    """Fire step ``step`` at wall time ``fire_at``."""

    step: int
    fire_at: float


@dataclass(slots=True)
class WaitCommand:
    """Resolve step ``step`` with the next event ``name``, or time out at ``deadline``."""

    step: int
    name: str
    deadline: float | None


@dataclass(slots=True)
class ChildCommand:
    """Start child ``workflow`` as ``child_id`` with ``args``; its end resolves ``step``."""

    step: int
    workflow: str
    child_id: str
    args: bytes


Command = ActivityCommand | TimerCommand | WaitCommand | ChildCommand


@dataclass(slots=True)
class Outcome:
    """How the run ended: ``completed`` (``result``), ``failed`` / ``cancelled`` (``failure``)
    or ``continued`` (``args`` of the new run)."""

    status: str
    result: bytes | None = None
    failure: FailureInfo | None = None
    args: bytes | None = None


class ContinueAsNew(BaseException):
    """Raised by ``ctx.continue_as_new``; a BaseException so ``except Exception`` lets it pass."""

    def __init__(self, args: bytes) -> None:
        self.new_args = args
        super().__init__("continue as new")


# -- fibers --------------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Fiber:
    coro: Coroutine[Any, Any, Any]
    future: DFuture[Any]
    parked_on: DFuture[Any] | None = None
    wake: Callable[[DFuture[Any]], None] | None = None


@dataclass(slots=True)
class _Pending:
    step: Step[Any]
    command: Command
    decode: Decode | None = None


@dataclass
class _State:
    steps: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)
    new: list[Command] = field(default_factory=list)


class Machine:
    """One run of one workflow, driven by batches of inputs. Create, :meth:`replay` the recorded
    batches, :meth:`start` if there were none, then :meth:`advance` with new inputs."""

    def __init__(
        self,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        args: Sequence[Any],
        *,
        workflow: str,
        workflow_id: str,
        run_id: str,
        limits: Limits | None = None,
        result_limit_name: str = "",
    ) -> None:
        from ._context import WorkflowContext  # the context calls back into the machine

        self.workflow = workflow
        self.workflow_id = workflow_id
        self.run_id = run_id
        self.limits = limits or Limits()
        self.ctx = WorkflowContext(self)
        self.at = 0.0
        """Wall time of the batch being handled: what ``ctx.now()`` returns."""
        self.replaying = False
        self.outcome: Outcome | None = None
        self.broken: NonDeterminismError | None = None
        self.cancel_requested = False
        self.markers: dict[str, int] = {}
        self.batches = 0
        """Batches fed so far (recorded and new)."""
        self._fn = fn
        self._args = tuple(args)
        self._s = _State()
        self._ready: deque[tuple[_Fiber, BaseException | None]] = deque()
        self._fibers: list[_Fiber] = []
        self._root: _Fiber | None = None
        self._recorded: dict[int, tuple[str, str]] = {}
        self._batch_markers: dict[str, int] = {}
        self._rng: random.Random | None = None
        self._result_what = result_limit_name or f"the result of workflow {workflow!r}"

    # -- driving --------------------------------------------------------------------------------

    def replay(self, batches: Sequence[Batch]) -> None:
        """Feed the recorded ``batches``; raises :class:`NonDeterminismError` on a mismatch."""
        for b in batches:
            for item in b.inputs:
                if not isinstance(item, CancelRequested):
                    self._recorded[item.step] = (_KIND[type(item)], _name_of(item))
            self.markers.update(b.markers)
        total = len(batches)
        self.replaying = True
        try:
            for i, b in enumerate(batches):
                if self.outcome is not None:
                    raise self._nde(None, f"the code ended at batch {i} of {total} recorded")
                self._feed(b.at, b.inputs)
        finally:
            self.replaying = False
            self._batch_markers = {}

    def advance(self, at: float, inputs: Sequence[Input] = ()) -> Batch:
        """Feed new ``inputs`` at wall time ``at`` (the first call, with none, starts the run);
        returns the batch to record."""
        self._batch_markers = {}
        self._feed(at, inputs)
        return Batch(at, tuple(inputs), self._batch_markers)

    def take_commands(self) -> list[Command]:
        """The commands issued since the last call."""
        new, self._s.new = self._s.new, []
        return new

    def pending_commands(self) -> list[Command]:
        """Every issued step not yet resolved, by step number."""
        return [p.command for _, p in sorted(self._s.pending.items())]

    def is_pending(self, step: int) -> bool:
        """Whether ``step`` was issued and is not resolved yet."""
        return step in self._s.pending

    @property
    def steps(self) -> int:
        """Steps issued so far in this run."""
        return self._s.steps

    def close(self) -> None:
        """Close every coroutine that has not finished (an unloaded or finished run)."""
        for f in self._fibers:
            with contextlib.suppress(RuntimeError):  # awaited again in a finally: nothing runs
                f.coro.close()
        self._fibers.clear()
        self._ready.clear()

    def _feed(self, at: float, inputs: Sequence[Input]) -> None:
        if self.broken is not None:
            raise self.broken
        self.at = at
        if self._root is None:
            self._root = self._spawn(self._fn(self.ctx, *self._args))
            self._run()
        for item in inputs:
            if self.outcome is not None:
                if self.replaying:
                    raise self._nde(_step(item), "the code ended before this recorded input")
                break
            self._apply(item)
            self._run()
        self.batches += 1

    def _apply(self, item: Input) -> None:
        if isinstance(item, CancelRequested):
            if self.cancel_requested:
                return
            self.cancel_requested = True
            root = self._root
            if root is not None and root.parked_on is not None and root.wake is not None:
                root.parked_on.remove_callback(root.wake)
                root.parked_on = root.wake = None
                reason = f": {item.reason}" if item.reason else ""
                self._ready.append((root, WorkflowCancelled(f"workflow cancelled{reason}")))
            return
        kind, name = _KIND[type(item)], _name_of(item)
        p = self._s.pending.pop(item.step, None)
        if p is None or p.step.kind != kind or p.step.name != name:
            issued = "never issued" if p is None else f"issued {p.step.kind} {p.step.name!r}"
            raise self._nde(
                item.step,
                f"the journal has {kind} {name!r} resolving this step, but by this point the "
                f"code {issued} it ({self._s.steps} steps issued so far)",
            )
        self._resolve(p, item)

    def _resolve(self, p: _Pending, item: Input) -> None:
        s = p.step
        if isinstance(item, ActivityCompleted | ChildCompleted):
            s.set_result(self._decode(p, item.result))
        elif isinstance(item, EventReceived):
            s.set_result(self._decode(p, item.payload))
        elif isinstance(item, TimerFired):
            s.set_result(None)
        elif isinstance(item, ActivityFailed):
            cause = item.failure
            s.set_exception(
                ActivityError(
                    f"activity {item.name!r} (step {item.step}) failed after {item.attempts} "
                    f"attempt(s): {cause.describe()}",
                    cause,
                    activity=item.name,
                    step=item.step,
                    attempts=item.attempts,
                )
            )
        elif isinstance(item, WaitTimedOut):
            s.set_exception(WaitTimeout(f"no event {item.name!r} before the timeout"))
        elif isinstance(item, ChildFailed):
            what = item.failure.describe() if item.failure else item.status
            s.set_exception(
                ChildWorkflowError(
                    f"child workflow {item.name!r} ({item.child_id}) {item.status}: {what}",
                    item.failure,
                    child_id=item.child_id,
                    status=item.status,
                )
            )

    def _decode(self, p: _Pending, data: bytes) -> Any:
        return (p.decode or decode_any)(data)

    # -- fibers ---------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> _Fiber:
        fiber = _Fiber(coro, DFuture())
        self._fibers.append(fiber)
        self._ready.append((fiber, None))
        return fiber

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> DFuture[Any]:
        """Run ``coro`` as a fiber of this run (``ctx.gather``); its future."""
        return self._spawn(coro).future

    def _run(self) -> None:
        ready = self._ready
        while ready:
            fiber, exc = ready.popleft()
            try:
                yielded = fiber.coro.throw(exc) if exc is not None else fiber.coro.send(None)
            except StopIteration as stop:
                self._finish(fiber, stop.value, None)
            except ContinueAsNew as can:
                self._finish(fiber, None, can)
            except Exception as error:
                self._finish(fiber, None, error)
            else:
                self._park(fiber, yielded)
            if self.broken is not None:
                ready.clear()
                raise self.broken
            if self.outcome is not None:  # the run ended: other fibers stay parked, then closed
                ready.clear()
                return

    def _park(self, fiber: _Fiber, yielded: Any) -> None:
        if not isinstance(yielded, DFuture):
            self._ready.append(
                (
                    fiber,
                    TypeError(
                        f"workflow {self.workflow!r} awaited {yielded!r}: workflow code may await "
                        "only ctx calls, ctx.gather and coroutines made of them (for a delay use "
                        "ctx.sleep, for I/O an activity)"
                    ),
                )
            )
            return

        def wake(_: DFuture[Any]) -> None:
            fiber.parked_on = fiber.wake = None
            self._ready.append((fiber, None))

        if yielded.done():
            self._ready.append((fiber, None))
        else:
            fiber.parked_on, fiber.wake = yielded, wake
            yielded.add_callback(wake)

    def _finish(self, fiber: _Fiber, value: Any, error: BaseException | None) -> None:
        if fiber in self._fibers:
            self._fibers.remove(fiber)
        if fiber is self._root or isinstance(error, ContinueAsNew):
            self.outcome = self._outcome(value, error)
        if error is None:
            fiber.future.set_result(value)
        elif not isinstance(error, ContinueAsNew):
            fiber.future.set_exception(error)

    def _outcome(self, value: Any, error: BaseException | None) -> Outcome:
        if isinstance(error, ContinueAsNew):
            return Outcome("continued", args=error.new_args)
        if error is None:
            try:
                return Outcome("completed", result=encode(value, self._result_what, self._lim))
            except Exception as exc:  # too large or not serializable: the run fails
                return Outcome("failed", failure=failure_of(exc))
        if isinstance(error, WorkflowCancelled) and self.cancel_requested:
            return Outcome("cancelled", failure=failure_of(error))
        return Outcome("failed", failure=failure_of(error))

    @property
    def _lim(self) -> int:
        return self.limits.max_payload_bytes

    # -- issuing steps (called by the context) ----------------------------------------------------

    def issue(
        self, kind: str, name: str, make: Callable[[int], Command], decode: Decode | None = None
    ) -> Step[Any]:
        """Issue the next step; ``make(step)`` builds its command."""
        if self.outcome is not None:
            raise RuntimeError(f"workflow {self.workflow!r} has ended: it cannot issue new steps")
        number = self._s.steps + 1
        if number > self.limits.max_steps:
            raise HistoryTooLong(
                f"workflow {self.workflow!r} (id {self.workflow_id}) reached "
                f"{self.limits.max_steps:,} steps in one run (Limits.max_steps): loop with "
                "ctx.continue_as_new"
            )
        self._s.steps = number
        step: Step[Any] = Step(number, kind, name)
        recorded = self._recorded.get(number)
        if recorded is not None and recorded != (kind, name):
            self.broken = self._nde(
                number,
                f"the journal has {recorded[0]} {recorded[1]!r}, the code issued {kind} {name!r}",
            )
            return step  # never resolved: the machine stops at the end of this fiber's turn
        cmd = make(number)
        self._s.pending[number] = _Pending(step, cmd, decode)
        self._s.new.append(cmd)
        return step

    def version(self, change_id: str, min_supported: int, max_supported: int) -> int:
        """The version marker of ``change_id`` (see ``WorkflowContext.version``)."""
        if not min_supported <= max_supported:
            raise ValueError(f"version({change_id!r}): min_supported > max_supported")
        v = self.markers.get(change_id)
        if v is None:
            v = DEFAULT_VERSION if self.replaying else max_supported
            self.markers[change_id] = v
            if not self.replaying:
                self._batch_markers[change_id] = v
        if not min_supported <= v <= max_supported:
            self.broken = self._nde(
                None,
                f"change {change_id!r} is at version {v} in this run, but the code supports "
                f"versions {min_supported}..{max_supported} only",
            )
            raise self.broken
        return v

    def rng(self) -> random.Random:
        """The run's random generator, seeded by its workflow id and run id."""
        if self._rng is None:
            seed = hashlib.sha256(f"{self.workflow_id}\x00{self.run_id}".encode()).digest()
            self._rng = random.Random(int.from_bytes(seed[:16], "big"))
        return self._rng

    def _nde(self, step: int | None, detail: str) -> NonDeterminismError:
        self.broken = NonDeterminismError(self.workflow, self.workflow_id, step, detail)
        return self.broken


def _name_of(item: Input) -> str:
    if isinstance(item, TimerFired):
        return ""
    if isinstance(item, CancelRequested):
        return "cancel"
    return item.name


def _step(item: Input) -> int | None:
    return None if isinstance(item, CancelRequested) else item.step
