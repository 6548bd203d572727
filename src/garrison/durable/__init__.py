"""Durable workflows: async functions whose progress survives crashes and restarts.

A workflow is ``async def wf(ctx: WorkflowContext, *args)``. Its durable calls (activities,
timers, events, child workflows) are journaled steps; after a crash the function runs again and
every recorded step returns its recorded result, so it resumes exactly where it was. An
:class:`Engine` runs workflows inside a process on a store chosen by URL: embedded SQLite
(``sqlite:///app.db``, WAL, group commit) or memory (``memory://``, tests).

See ``docs/durable.md`` for the model and its guarantees.
"""

from ._activity import ActivityInfo, ActivityOptions, activity, activity_info
from ._config import DEFAULT_ACTIVITY_RETRY, EngineConfig, Limits
from ._context import WorkflowContext
from ._cron import Cron
from ._engine import Engine
from ._errors import (
    ActivityError,
    ChildWorkflowError,
    FailureInfo,
    HistoryTooLong,
    LeaseLost,
    NonDeterminismError,
    PayloadTooLarge,
    WaitTimeout,
    WorkflowCancelled,
    WorkflowError,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTerminated,
)
from ._handle import WorkflowHandle
from ._journal import Batch, History
from ._machine import DEFAULT_VERSION
from ._replay import ReplayReport, replay_check
from ._runner import EngineStats
from ._saga import Saga
from ._stores import open_store
from ._stores.base import Schedule, Status, Store, StoreStats, WorkflowInfo
from ._stores.memory import MemoryStore

__all__ = [
    "ActivityError",
    "ActivityInfo",
    "ActivityOptions",
    "Batch",
    "ChildWorkflowError",
    "Cron",
    "DEFAULT_ACTIVITY_RETRY",
    "DEFAULT_VERSION",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "FailureInfo",
    "History",
    "HistoryTooLong",
    "LeaseLost",
    "Limits",
    "MemoryStore",
    "NonDeterminismError",
    "PayloadTooLarge",
    "ReplayReport",
    "Saga",
    "Schedule",
    "Status",
    "Store",
    "StoreStats",
    "WaitTimeout",
    "WorkflowCancelled",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowTerminated",
    "activity",
    "activity_info",
    "open_store",
    "replay_check",
]
