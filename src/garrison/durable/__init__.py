"""Durable workflows: async functions whose progress survives crashes and restarts.

A workflow is ``async def wf(ctx: WorkflowContext, *args)``. Its durable calls (activities,
timers, events, child workflows) are journaled steps; after a crash the function runs again and
every recorded step returns its recorded result, so it resumes exactly where it was. An
:class:`Engine` runs workflows inside a process on a store chosen by URL: embedded SQLite
(``sqlite:///app.db``, WAL, group commit) or memory (``memory://``, tests).

An *actor* is an ``@actor`` class with a typed ``state`` and async handlers, addressed by (type,
key) through an :class:`ActorSystem` (``Engine(..., actors=[...])`` hosts one on the engine's
store): one message at a time per key, its state change committed together with the messages
it sends and its reminders, so state changes are exactly once.

See ``docs/durable.md`` for the model and its guarantees.
"""

from ._activity import ActivityInfo, ActivityOptions, activity, activity_info
from ._actor import ActorConfig, ActorContext, ActorError, StateTooLarge, actor
from ._actor_ref import ActorRef
from ._actor_runtime import ActorStats, ActorSystem
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
from ._settings import DurableSettings, ServiceDurableSettings
from ._stores import open_store
from ._stores.base import Schedule, Status, Store, StoreStats, WorkflowInfo
from ._stores.memory import MemoryStore

__all__ = [
    "ActivityError",
    "ActivityInfo",
    "ActivityOptions",
    "ActorConfig",
    "ActorContext",
    "ActorError",
    "ActorRef",
    "ActorStats",
    "ActorSystem",
    "Batch",
    "ChildWorkflowError",
    "Cron",
    "DEFAULT_ACTIVITY_RETRY",
    "DEFAULT_VERSION",
    "DurableSettings",
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
    "ServiceDurableSettings",
    "StateTooLarge",
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
    "actor",
    "open_store",
    "replay_check",
]
