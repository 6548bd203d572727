"""The errors of the durable pillar, placed in garrison's one exception tree.

    GarrisonError
    ├── UsageError
    │   ├── NonDeterminismError     the code no longer matches a workflow's journal (fix the code
    │   │                           or branch with ctx.version / ctx.patched)
    │   ├── HistoryTooLong          a run issued more steps than Limits.max_steps allows
    │   └── InvalidInput
    │       └── PayloadTooLarge     an argument, result or event exceeds Limits.max_payload_bytes
    ├── RemoteError
    │   └── LeaseLost               a write from a stale owner was rejected (another worker, an
    │                               operator's termination or a newer epoch owns the workflow)
    ├── NotFound
    │   └── WorkflowNotFound        no workflow instance has this id
    └── WorkflowError               durable work ended badly; ``failure`` says how
        ├── ActivityError           an activity failed for good (retries spent or not retryable)
        ├── ChildWorkflowError      a child workflow failed, was cancelled or was terminated
        ├── WorkflowFailed          handle.result(): the workflow raised
        ├── WorkflowCancelled       raised inside a workflow when it is cancelled; handle.result()
        │                           of a cancelled workflow
        ├── WorkflowTerminated      handle.result(): an operator terminated the workflow
        └── WaitTimeout             ctx.wait_event timed out (also a builtin TimeoutError)

Failures are stored, not pickled: a :class:`FailureInfo` keeps the exception's type name, message
and formatted traceback, so an error raised inside a workflow is rebuilt identically on replay
and shown to an operator after a restart.
"""

from __future__ import annotations

import traceback as _tb

import msgspec

from garrison.core import GarrisonError, InvalidInput, NotFound, RemoteError, UsageError

__all__ = [
    "ActivityError",
    "ChildWorkflowError",
    "FailureInfo",
    "HistoryTooLong",
    "LeaseLost",
    "NonDeterminismError",
    "PayloadTooLarge",
    "WaitTimeout",
    "WorkflowCancelled",
    "WorkflowError",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowTerminated",
    "failure_of",
]

_MAX_TRACEBACK = 16_384


class FailureInfo(msgspec.Struct, frozen=True, array_like=True):
    """A stored exception: what it was, what it said, where it came from."""

    type: str
    """The exception's qualified type name (``ValueError``, ``myapp.errors.OutOfStock``)."""
    message: str
    """``str(exception)``."""
    traceback: str = ""
    """The formatted traceback (truncated to 16 KiB, keeping its end)."""
    cause: FailureInfo | None = None
    """The failure this one wraps (an activity's error inside an :class:`ActivityError`)."""

    def describe(self) -> str:
        """``Type: message`` on one line."""
        return f"{self.type}: {self.message}" if self.message else self.type


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def failure_of(exc: BaseException) -> FailureInfo:
    """The :class:`FailureInfo` of ``exc`` (an error garrison raised keeps its own as cause)."""
    text = "".join(_tb.format_exception(exc))
    if len(text) > _MAX_TRACEBACK:
        text = "...\n" + text[-_MAX_TRACEBACK:]
    cause = exc.failure if isinstance(exc, WorkflowError) else None
    return FailureInfo(_type_name(exc), str(exc), text, cause)


class NonDeterminismError(UsageError):
    """The workflow code no longer matches its journal.

    Raised when replay meets a step whose kind or name differs from the recorded one, a recorded
    step the code never issues, or a version marker outside the supported range. ``workflow_id``,
    ``workflow``, ``step`` and ``detail`` say where and what.
    """

    def __init__(self, workflow: str, workflow_id: str, step: int | None, detail: str) -> None:
        self.workflow = workflow
        self.workflow_id = workflow_id
        self.step = step
        self.detail = detail
        where = f"step {step}" if step is not None else "journal"
        super().__init__(
            f"workflow {workflow!r} (id {workflow_id}) is not deterministic at {where}: {detail}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.workflow, self.workflow_id, self.step, self.detail))


class HistoryTooLong(UsageError):
    """A workflow run issued more steps than ``Limits.max_steps``; use ``ctx.continue_as_new``."""


class PayloadTooLarge(InvalidInput):
    """A serialized argument, result or event is larger than ``Limits.max_payload_bytes``."""


class LeaseLost(RemoteError):
    """A write was rejected because its writer no longer owns the workflow.

    The owner's epoch moved on: the lease expired and another worker claimed the workflow, or an
    operator terminated it. The stale owner drops the workflow from memory; nothing it did after
    its last accepted write is kept.
    """


class WorkflowNotFound(NotFound):
    """No workflow instance has this id."""


class WorkflowError(GarrisonError):
    """Durable work ended badly. ``failure`` is the stored description of why (or None)."""

    def __init__(self, message: str, failure: FailureInfo | None = None) -> None:
        self.failure = failure
        super().__init__(message)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.failure))


class ActivityError(WorkflowError):
    """An activity failed for good. Raised inside the workflow, identically on replay.

    ``failure`` describes the activity's own exception (its type, message, traceback);
    ``activity`` is its name, ``step`` the journal step and ``attempts`` how many were made.
    """

    def __init__(
        self,
        message: str,
        failure: FailureInfo | None = None,
        *,
        activity: str = "",
        step: int = 0,
        attempts: int = 0,
    ) -> None:
        self.activity = activity
        self.step = step
        self.attempts = attempts
        super().__init__(message, failure)


class ChildWorkflowError(WorkflowError):
    """A child workflow did not complete; ``status`` is ``failed``, ``cancelled`` or
    ``terminated`` and ``failure`` its failure."""

    def __init__(
        self,
        message: str,
        failure: FailureInfo | None = None,
        *,
        child_id: str = "",
        status: str = "failed",
    ) -> None:
        self.child_id = child_id
        self.status = status
        super().__init__(message, failure)


class WorkflowFailed(WorkflowError):
    """The workflow raised; ``failure`` is what it raised."""


class WorkflowCancelled(WorkflowError):
    """The workflow was cancelled.

    Inside the workflow it is raised at the ``await`` where the workflow was waiting; the workflow
    may catch it to compensate (new steps are allowed) and then re-raise it. If it escapes, the
    workflow ends ``cancelled``.
    """


class WorkflowTerminated(WorkflowError):
    """An operator terminated the workflow: no more of its code ran."""


class WaitTimeout(WorkflowError, TimeoutError):
    """``ctx.wait_event`` saw no event before its timeout. Also a builtin ``TimeoutError``."""
