"""``WorkflowContext``: the durable calls a workflow makes. Each issues one journal step.

Everything here is deterministic by construction: time is the time of the batch being handled,
randomness comes from a generator seeded by the run's ids, and the only things a workflow may
await are the futures these methods return (or coroutines made of them).
"""

from __future__ import annotations

import inspect
import math
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

from garrison.resilience import RetryPolicy

from ._activity import UNSET, _Unset, activity_options
from ._codec import Decode, decoder_for, encode_args, return_decoder
from ._config import DEFAULT_ACTIVITY_RETRY
from ._futures import DFuture, Step
from ._registry import WorkflowFn, activity_name, workflow_name

if TYPE_CHECKING:
    from ._actor_workflow import WorkflowActorRef
    from ._machine import Machine

__all__ = ["WorkflowContext"]

T = TypeVar("T")


def _seconds(value: float | timedelta, what: str) -> float:
    s = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"{what} must be a finite number of seconds >= 0, got {value!r}")
    return s


class WorkflowContext:
    """The handle a workflow function receives first: ``async def wf(ctx, *args)``.

    Durable calls (``activity``, ``sleep``, ``wait_event``, ``child``) are numbered steps of the
    run's journal, in the order the code makes them; after a crash the function runs again and
    every recorded step returns its recorded result at once. The code between them must be
    deterministic: use :meth:`now`, :meth:`random` and :meth:`uuid` rather than the clock or
    the random module, and do I/O only in activities.
    """

    __slots__ = ("_m",)

    def __init__(self, machine: Machine) -> None:
        self._m = machine

    # -- identity -------------------------------------------------------------------------------

    @property
    def workflow_id(self) -> str:
        """This instance's id."""
        return self._m.workflow_id

    @property
    def run_id(self) -> str:
        """This run's id (a new one after each ``continue_as_new``)."""
        return self._m.run_id

    @property
    def workflow(self) -> str:
        """The workflow's registered name."""
        return self._m.workflow

    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs recorded history (e.g. to skip logging)."""
        return self._m.replaying

    # -- deterministic values -------------------------------------------------------------------

    def now(self) -> datetime:
        """The current time as the journal recorded it (UTC): the same on every replay."""
        return datetime.fromtimestamp(self._m.at, UTC)

    def time(self) -> float:
        """:meth:`now` as seconds since the epoch."""
        return self._m.at

    def random(self) -> random.Random:
        """A random generator seeded by this run: the same sequence on every replay."""
        return self._m.rng()

    def uuid(self) -> uuid.UUID:
        """A random (version 4) UUID from :meth:`random`: the same on every replay."""
        return uuid.UUID(int=self._m.rng().getrandbits(128), version=4)

    # -- steps ----------------------------------------------------------------------------------

    @overload
    def activity(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retry: RetryPolicy | None = ...,
        timeout: float | timedelta | None = ...,
        name: str | None = ...,
    ) -> Step[T]: ...
    @overload
    def activity(
        self,
        fn: Callable[..., T],
        *args: Any,
        retry: RetryPolicy | None = ...,
        timeout: float | timedelta | None = ...,
        name: str | None = ...,
    ) -> Step[T]: ...
    def activity(
        self,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = UNSET,
        timeout: float | timedelta | None = UNSET,
        name: str | None = None,
    ) -> Step[Any]:
        """Run ``fn(*args)`` as an activity: ordinary code (async, or sync in a thread), at least
        once, retried by ``retry`` (``None``: one attempt), each attempt limited to ``timeout``.
        Options not given here come from ``fn``'s :func:`activity` decorator, else the defaults
        (``DEFAULT_ACTIVITY_RETRY``, no timeout, the function's qualified name).

        The result is journaled (its size counts against ``Limits.max_payload_bytes``) and
        returned decoded with ``fn``'s return annotation. A final failure raises
        :class:`ActivityError`. Inside, :func:`activity_info` gives the idempotency key
        ``"{workflow_id}:{step}"``.
        """
        from ._machine import ActivityCommand

        options = activity_options(fn)
        if retry is UNSET:
            retry = DEFAULT_ACTIVITY_RETRY
            if options is not None and not isinstance(options.retry, _Unset):
                retry = options.retry
        if timeout is UNSET:
            limit = None if options is None else options.timeout
        else:
            limit = None if timeout is None else _seconds(timeout, "activity timeout")
        if limit == 0:
            raise ValueError("activity timeout must be > 0 seconds")
        label = name or (options.name if options is not None else None) or activity_name(fn)
        return self._m.issue(
            "activity",
            label,
            lambda n: ActivityCommand(n, label, fn, args, retry, limit),
            return_decoder(fn),
        )

    def sleep(self, duration: float | timedelta) -> Step[None]:
        """A durable timer: resume after ``duration`` (seconds or a timedelta), even across
        restarts and for days; the workflow is unloaded from memory while it waits long."""
        from ._machine import TimerCommand

        fire_at = self._m.at + _seconds(duration, "sleep duration")
        return self._m.issue("sleep", "", lambda n: TimerCommand(n, fire_at))

    def wait_event(
        self, name: str, *, timeout: float | timedelta | None = None, type: Any = Any
    ) -> Step[Any]:
        """Wait for the next event ``name`` sent to this instance and return its payload
        (decoded as ``type``). Events sent before the wait are kept until a wait takes them,
        one event per wait, in order. Raises :class:`WaitTimeout` after ``timeout``."""
        from ._machine import WaitCommand

        if not isinstance(name, str) or not name:
            raise ValueError("wait_event: name must be a non-empty string")
        deadline = None if timeout is None else self._m.at + _seconds(timeout, "wait timeout")
        dec: Decode = decoder_for(type)
        return self._m.issue("event", name, lambda n: WaitCommand(n, name, deadline), dec)

    @overload
    def child(
        self, workflow: Callable[..., Coroutine[Any, Any, T]], *args: Any, id: str | None = ...
    ) -> Step[T]: ...
    @overload
    def child(self, workflow: str, *args: Any, id: str | None = ...) -> Step[Any]: ...
    def child(self, workflow: WorkflowFn | str, *args: Any, id: str | None = None) -> Step[Any]:
        """Start child workflow ``workflow(*args)`` and wait for its result.

        ``id`` defaults to one derived from this run and step, so the child is started once
        however often this code is replayed. A child that fails, is cancelled or terminated
        raises :class:`ChildWorkflowError`.
        """
        from ._machine import ChildCommand

        wf = workflow_name(workflow)
        dec = None if isinstance(workflow, str) else return_decoder(workflow)
        m = self._m
        what = f"child workflow {wf!r}"
        data = encode_args(args, what, m.limits.max_payload_bytes)

        def make(n: int) -> ChildCommand:
            return ChildCommand(n, wf, id or f"{m.workflow_id}:{m.run_id[:12]}:{n}", data)

        return m.issue("child", wf, make, dec)

    def actor(self, actor: type | str, key: str) -> WorkflowActorRef:
        """The actor ``actor``/``key`` as seen from this workflow: ``await ctx.actor(Battery,
        "b-17").call("report", reading)`` or ``.signal(...)``. Each is a journaled step (an
        activity whose idempotency key is the message id), so the actor handles it exactly once
        however often this workflow is replayed or the step re-run after a crash. The actor
        must be hosted by an open ``ActorSystem`` of this process (``Engine(actors=[...])``).
        """
        from ._actor_workflow import WorkflowActorRef

        return WorkflowActorRef(self, actor, key)

    def gather(self, *aws: Awaitable[Any], return_exceptions: bool = False) -> DFuture[list[Any]]:
        """Wait for all of ``aws`` (steps, coroutines using this context, other gathers) and
        return their results in argument order: fan-out / fan-in.

        Coroutines run as fibers of this run; steps are numbered in the order the code issues
        them, so any order of completion replays identically. The first error (in completion
        order) is raised unless ``return_exceptions``, which returns errors in place.
        """
        futures: list[DFuture[Any]] = []
        for aw in aws:
            if isinstance(aw, DFuture):
                futures.append(aw)
            elif inspect.iscoroutine(aw):
                futures.append(self._m.spawn(aw))
            else:
                futures.append(self._m.spawn(_await(aw)))
        out: DFuture[list[Any]] = DFuture()
        if not futures:
            out.set_result([])
            return out
        results: list[Any] = [None] * len(futures)
        left = len(futures)

        def done(i: int) -> Callable[[DFuture[Any]], None]:
            def cb(f: DFuture[Any]) -> None:
                nonlocal left
                try:
                    results[i] = f.outcome()
                except Exception as exc:
                    if not return_exceptions:
                        out.set_exception(exc)
                        return
                    results[i] = exc
                left -= 1
                if left == 0:
                    out.set_result(results)

            return cb

        for i, f in enumerate(futures):
            f.add_callback(done(i))
        return out

    def continue_as_new(self, *args: Any) -> NoReturn:
        """End this run and start a fresh one of the same instance with ``args`` and an empty
        journal: how a workflow loops forever without an ever-growing history."""
        from ._machine import ContinueAsNew

        raise ContinueAsNew(
            encode_args(
                args, f"continue_as_new of {self._m.workflow!r}", self._m.limits.max_payload_bytes
            )
        )

    # -- versioning -----------------------------------------------------------------------------

    def version(self, change_id: str, min_supported: int, max_supported: int) -> int:
        """Which side of a code change this run is on.

        A run that reaches the call for the first time records ``max_supported`` and gets it;
        a run replayed from before the change got ``0`` (``DEFAULT_VERSION``) and keeps it. A
        recorded version outside ``min_supported..max_supported`` is a non-determinism error:
        the code no longer supports that run. Markers take no step numbers.
        """
        return self._m.version(change_id, min_supported, max_supported)

    def patched(self, change_id: str) -> bool:
        """``version(change_id, 0, 1) == 1``: True for runs that pass this point with the new
        code, False for runs that passed it before the change."""
        return self._m.version(change_id, 0, 1) == 1


async def _await(aw: Awaitable[Any]) -> Any:
    return await aw
