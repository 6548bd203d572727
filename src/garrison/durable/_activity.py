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
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, overload

import msgspec

from garrison.core import Clock, UsageError
from garrison.resilience import Retrier, RetryPolicy

from ._codec import encode
from ._config import DEFAULT_ACTIVITY_RETRY
from ._errors import failure_of
from ._journal import ActivityCompleted, ActivityFailed

__all__ = ["ActivityInfo", "ActivityOptions", "activity", "activity_info", "run_activity"]

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS_ATTR = "__garrison_activity__"


class _Unset:
    """The default of an option that was not given (``None`` is a meaningful retry value)."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


@dataclass(frozen=True, slots=True)
class ActivityOptions:
    """The defaults an ``@activity`` decorator attached to a function; a workflow's
    ``ctx.activity(fn, ..., retry=, timeout=, name=)`` still overrides each of them."""

    retry: RetryPolicy | _Unset | None = UNSET
    """The retry policy (``None``: one attempt); unset: ``DEFAULT_ACTIVITY_RETRY``."""
    timeout: float | None = None
    """Seconds each attempt may take; ``None``: no limit."""
    name: str | None = None
    """The name the activity is journaled under; ``None``: the function's qualified name."""


def _retry_policy(value: RetryPolicy | Mapping[str, Any] | None) -> RetryPolicy | None:
    if value is None or isinstance(value, RetryPolicy):
        return value
    if isinstance(value, Mapping):
        # Fields not given keep the activity defaults (retry any Exception), not the defaults
        # of a call between services (transport errors only).
        fields = msgspec.structs.asdict(DEFAULT_ACTIVITY_RETRY)
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise UsageError(
                f"activity retry: unknown field(s) {unknown}; expected some of {sorted(fields)}"
            )
        try:
            return RetryPolicy(**{**fields, **value})
        except (TypeError, ValueError) as exc:
            raise UsageError(f"activity retry: {exc}") from None
    raise UsageError(
        f"activity retry: expected a RetryPolicy, a mapping of its fields or None, "
        f"got {type(value).__name__}"
    )


def _timeout(value: float | timedelta | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise UsageError(f"activity timeout: expected seconds or a timedelta, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0:
        raise UsageError(f"activity timeout: expected > 0 seconds, got {value!r}")
    return seconds


@overload
def activity(fn: F, /) -> F: ...
@overload
def activity(
    *,
    retry: RetryPolicy | Mapping[str, Any] | None = ...,
    timeout: float | timedelta | None = ...,
    name: str | None = ...,
) -> Callable[[F], F]: ...
def activity(
    fn: Any = None,
    /,
    *,
    retry: Any = UNSET,
    timeout: float | timedelta | None = None,
    name: str | None = None,
) -> Any:
    """Mark a function as an activity and give it default options::

        @activity(retry={"max_attempts": 5, "initial_backoff": 1.0}, timeout=30)
        async def command(device: str, kw: float) -> Ack: ...

    ``retry`` is a :class:`~garrison.resilience.RetryPolicy`, a mapping of some of its fields
    (the others as in ``DEFAULT_ACTIVITY_RETRY``), or ``None`` (one attempt). The function is
    returned unchanged (callable as before); a workflow's ``ctx.activity(command, ...)`` uses
    these options unless the call gives its own.
    """
    options = ActivityOptions(
        UNSET if retry is UNSET else _retry_policy(retry), _timeout(timeout), name
    )
    if name is not None and (not isinstance(name, str) or not name):
        raise UsageError(f"activity name: expected a non-empty string, got {name!r}")

    def mark(f: F) -> F:
        if not callable(f):
            raise UsageError(f"@activity expects a function, got {type(f).__name__}")
        setattr(f, _OPTIONS_ATTR, options)
        return f

    return mark if fn is None else mark(fn)


def activity_options(fn: Callable[..., Any]) -> ActivityOptions | None:
    """The options ``@activity`` attached to ``fn``, or ``None``."""
    options = getattr(fn, _OPTIONS_ATTR, None)
    return options if isinstance(options, ActivityOptions) else None


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
