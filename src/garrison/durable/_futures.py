"""Deterministic futures: what workflow code awaits, resolved only by the replay machine.

Workflow code never awaits asyncio objects. Every durable call returns a :class:`DFuture` whose
``__await__`` yields the future itself to the machine that drives the coroutine; the machine
parks the coroutine on it and resumes it when an input resolves it. Callbacks run in the order
they were added, synchronously, so the resumption order is a pure function of the order of the
inputs: that is what makes replay reproduce the original interleaving.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

__all__ = ["DFuture", "Step"]

T = TypeVar("T")


class DFuture(Generic[T]):
    """A value a workflow is waiting for (an activity's result, a timer, an event ...)."""

    __slots__ = ("_callbacks", "_done", "_exc", "_result")

    def __init__(self) -> None:
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[DFuture[Any]], None]] = []

    def done(self) -> bool:
        """Whether the value (or the error) is known."""
        return self._done

    def set_result(self, value: T) -> None:
        """Resolve with ``value`` (ignored once resolved)."""
        if not self._done:
            self._done, self._result = True, value
            self._run_callbacks()

    def set_exception(self, exc: BaseException) -> None:
        """Resolve with an error (ignored once resolved)."""
        if not self._done:
            self._done, self._exc = True, exc
            self._run_callbacks()

    def add_callback(self, fn: Callable[[DFuture[Any]], None]) -> None:
        """Call ``fn(self)`` on resolution (at once if resolved)."""
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def remove_callback(self, fn: Callable[[DFuture[Any]], None]) -> None:
        """Forget a callback (a cancelled waiter)."""
        with contextlib.suppress(ValueError):
            self._callbacks.remove(fn)

    def outcome(self) -> T:
        """The value, or raise the error."""
        if self._exc is not None:
            raise self._exc
        result: T = self._result
        return result

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def __await__(self) -> Generator[Any, None, T]:
        if not self._done:
            yield self
        return self.outcome()


class Step(DFuture[T]):
    """The future of one journal step."""

    __slots__ = ("kind", "name", "number")

    def __init__(self, number: int, kind: str, name: str) -> None:
        super().__init__()
        self.number = number
        """Its step number in the run (1, 2, ...)."""
        self.kind = kind
        """``activity``, ``sleep``, ``event`` or ``child``."""
        self.name = name
        """The activity's or child workflow's name, the event's name; empty for a sleep."""

    def __repr__(self) -> str:
        return f"<step {self.number} {self.kind} {self.name!r}>"
