"""``replay_check``: would the current code still run a recorded workflow?

Before a deploy, replay the histories of in-flight workflows against the new code: a
non-determinism error here is one that would otherwise block those workflows in production.
Replay runs no activity, sleeps no timer and writes nothing: recorded inputs are fed to a fresh
coroutine exactly as the engine does after a crash.
"""

from __future__ import annotations

import msgspec

from ._config import Limits
from ._errors import NonDeterminismError
from ._journal import History
from ._machine import Machine
from ._registry import Registry, WorkflowFn

__all__ = ["ReplayReport", "replay_check"]


class ReplayReport(msgspec.Struct, frozen=True, kw_only=True):
    """The verdict of one replay."""

    workflow_id: str
    """The instance replayed."""
    workflow: str
    """Its workflow name."""
    ok: bool
    """True when the code replays the whole history without a mismatch."""
    batches: int
    """Recorded batches replayed."""
    steps: int
    """Steps the code issued during the replay."""
    ended: str | None = None
    """How the run ended during the replay, if it did (``completed``, ``failed`` ...)."""
    error: str | None = None
    """The non-determinism error's message, when not ok."""
    step: int | None = None
    """The step where it diverged, when known."""


def replay_check(
    workflow: WorkflowFn, history: History, *, limits: Limits | None = None
) -> ReplayReport:
    """Replay ``history`` (from ``Engine.history`` or the store) against ``workflow``."""
    reg = Registry()
    wt = reg.add(workflow, history.workflow)
    m = Machine(
        wt.fn,
        wt.decode_args(history.args),
        workflow=history.workflow,
        workflow_id=history.workflow_id,
        run_id=history.run_id,
        limits=limits,
    )
    try:
        m.replay(history.batches)
    except NonDeterminismError as exc:
        return ReplayReport(
            workflow_id=history.workflow_id,
            workflow=history.workflow,
            ok=False,
            batches=m.batches,
            steps=m.steps,
            error=str(exc),
            step=exc.step,
        )
    finally:
        m.close()
    return ReplayReport(
        workflow_id=history.workflow_id,
        workflow=history.workflow,
        ok=True,
        batches=m.batches,
        steps=m.steps,
        ended=None if m.outcome is None else m.outcome.status,
    )
