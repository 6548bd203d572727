"""``WorkflowHandle``: one workflow instance, addressed by id."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._journal import History
from ._stores.base import WorkflowInfo

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["WorkflowHandle"]

T = TypeVar("T")


class WorkflowHandle(Generic[T]):
    """A workflow instance: its status, result, and the ways to steer it."""

    __slots__ = ("_engine", "created", "id")

    def __init__(self, engine: Engine, workflow_id: str, *, created: bool = False) -> None:
        self._engine = engine
        self.id = workflow_id
        """The instance id."""
        self.created = created
        """True when the :meth:`Engine.start` that returned this handle created the instance;
        False when the id existed already (a repeated, idempotent start) or for a handle made
        by :meth:`Engine.handle`."""

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.id}>"

    async def status(self) -> WorkflowInfo:
        """Status, timestamps, failure details; :class:`WorkflowNotFound` if unknown."""
        return await self._engine.get(self.id)

    async def result(self, timeout: float | None = None) -> T:
        """Wait for the end and return the result (decoded with the workflow's return
        annotation); raises :class:`WorkflowFailed`, :class:`WorkflowCancelled` or
        :class:`WorkflowTerminated`, or ``TimeoutError`` after ``timeout`` seconds."""
        outcome = await self._engine.result(self.id, timeout)
        value: T = self._engine.decode_result(outcome, self.id)
        return value

    async def signal(self, name: str, payload: Any = None) -> None:
        """Send event ``name`` (see :meth:`Engine.signal`)."""
        await self._engine.signal(self.id, name, payload)

    async def cancel(self, reason: str = "") -> bool:
        """Request cancellation (see :meth:`Engine.cancel`)."""
        return await self._engine.cancel(self.id, reason)

    async def terminate(self, reason: str = "") -> bool:
        """End it now, without compensation (see :meth:`Engine.terminate`)."""
        return await self._engine.terminate(self.id, reason)

    async def history(self) -> History:
        """The current run's recorded history."""
        return await self._engine.history(self.id)
