"""``Saga``: compensations registered as a workflow proceeds, run in reverse when it fails."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from garrison.resilience import RetryPolicy

from ._config import DEFAULT_ACTIVITY_RETRY
from ._context import WorkflowContext

__all__ = ["Saga"]

_Compensation = tuple[
    Callable[..., Any], tuple[Any, ...], RetryPolicy | None, float | timedelta | None
]


class Saga:
    """Undo a workflow's completed steps when a later one fails.

    After each step that changed something, :meth:`add` the activity that undoes it. On an
    error (cancellation included), :meth:`compensate` runs the compensations as activities
    (durable steps, retried like any activity), most recent first, then the error propagates::

        async with Saga(ctx) as saga:
            booking = await ctx.activity(book_hotel, trip)
            saga.add(cancel_hotel, booking)
            await ctx.activity(charge_card, trip)     # fails: cancel_hotel runs

    With ``parallel=True`` the compensations run together. A compensation that fails for good
    does not stop the others (``continue_on_error``, default); the failures are kept in
    :attr:`errors`.
    """

    def __init__(
        self, ctx: WorkflowContext, *, parallel: bool = False, continue_on_error: bool = True
    ) -> None:
        self._ctx = ctx
        self._steps: list[
            tuple[Callable[..., Any], tuple[Any, ...], RetryPolicy | None, float | timedelta | None]
        ] = []
        self.parallel = parallel
        self.continue_on_error = continue_on_error
        self.errors: list[BaseException] = []
        """Compensations that failed for good."""

    def add(
        self,
        fn: Callable[..., Any],
        *args: Any,
        retry: RetryPolicy | None = DEFAULT_ACTIVITY_RETRY,
        timeout: float | timedelta | None = None,
    ) -> None:
        """Register ``fn(*args)`` as the compensation of the step just done."""
        self._steps.append((fn, args, retry, timeout))

    async def compensate(self) -> None:
        """Run the compensations, newest first, and forget them."""
        steps, self._steps = list(reversed(self._steps)), []
        ctx = self._ctx
        if self.parallel:
            results = await ctx.gather(
                *(ctx.activity(fn, *a, retry=r, timeout=t) for fn, a, r, t in steps),
                return_exceptions=True,
            )
            self.errors += [r for r in results if isinstance(r, BaseException)]
            if self.errors and not self.continue_on_error:
                raise self.errors[0]
            return
        for fn, a, r, t in steps:
            try:
                await ctx.activity(fn, *a, retry=r, timeout=t)
            except Exception as exc:
                self.errors.append(exc)
                if not self.continue_on_error:
                    raise

    async def __aenter__(self) -> Saga:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, Exception):
            await self.compensate()
