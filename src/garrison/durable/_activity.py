"""Running an activity: attempts, retries through the resilience ``Retrier``, timeouts, and the
idempotency key the activity reads through :func:`activity_info`.

An activity runs at least once: its result is journaled after it returns, so a crash between
its side effect and that commit runs it again after recovery. The key
``"{workflow_id}:{step}"`` is the same for every attempt and every re-run, so an activity whose
side effect accepts a key (a payment API, an ``INSERT ... ON CONFLICT DO NOTHING``) makes the
effect exactly once.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from garrison.core import Clock, UsageError
from garrison.resilience import Retrier, RetryPolicy

from ._codec import encode
from ._errors import failure_of
from ._journal import ActivityCompleted, ActivityFailed

__all__ = ["ActivityInfo", "activity_info", "run_activity"]


@dataclass(frozen=True, slots=True)
class ActivityInfo:
    """Who is running: available inside an activity through :func:`activity_info`."""

    workflow_id: str
    """The workflow instance the activity belongs to."""
    workflow: str
    """The workflow's name."""
    step: int
    """The activity's step number in the run."""
    name: str
    """The activity's journaled name."""
    attempt: int
    """1 for the first attempt, 2 for the first retry ... (restarts at 1 after a crash)."""
    idempotency_key: str
    """``"{workflow_id}:{step}"`` (``"{workflow_id}:{run}:{step}"`` after continue-as-new):
    the same for every attempt and every re-run of this step, to dedupe side effects."""


_current: ContextVar[ActivityInfo | None] = ContextVar("garrison_activity", default=None)


def activity_info() -> ActivityInfo:
    """The running activity's :class:`ActivityInfo`; :class:`UsageError` outside an activity."""
    info = _current.get()
    if info is None:
        raise UsageError("activity_info() was called outside an activity")
    return info


async def _call(fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None) -> Any:
    async with asyncio.timeout(timeout):
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        result = await asyncio.to_thread(fn, *args)  # a blocking call never runs on the loop
        if inspect.isawaitable(result):
            result = await result
        return result


async def run_activity(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    info: ActivityInfo,
    retry: RetryPolicy | None,
    timeout: float | None,
    retriers: dict[RetryPolicy, Retrier],
    clock: Clock,
    limit: int,
) -> ActivityCompleted | ActivityFailed:
    """Run the activity to its final outcome (the input to feed the workflow)."""
    attempt = 1
    while True:
        token = _current.set(
            ActivityInfo(
                info.workflow_id, info.workflow, info.step, info.name, attempt, info.idempotency_key
            )
        )
        try:
            result = await _call(fn, args, timeout)
        except Exception as exc:
            error: Exception = exc
        else:
            what = f"the result of activity {info.name!r} (step {info.step})"
            try:
                return ActivityCompleted(info.step, info.name, encode(result, what, limit))
            except Exception as exc:  # too large or not serializable: retrying cannot help
                return ActivityFailed(info.step, info.name, failure_of(exc), attempt)
        finally:
            _current.reset(token)
        if retry is None or isinstance(error, UsageError):
            return ActivityFailed(info.step, info.name, failure_of(error), attempt)
        retrier = retriers.get(retry)
        if retrier is None:
            retrier = retriers[retry] = Retrier(retry, clock=clock)
        decision = retrier.decide(attempt, error=error)
        if not decision.retry:
            return ActivityFailed(info.step, info.name, failure_of(error), attempt)
        await clock.sleep(decision.delay)
        attempt += 1
