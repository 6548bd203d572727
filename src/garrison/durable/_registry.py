"""Workflow types by name: what a stored instance's ``workflow`` column refers to."""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from garrison.core import NotFound, UsageError

from ._codec import Decode, arg_decoders, decode_any, return_decoder, split_args

__all__ = ["Registry", "WorkflowFn", "WorkflowType", "activity_name", "workflow_name"]

WorkflowFn = Callable[..., Coroutine[Any, Any, Any]]
_ATTR = "__garrison_workflow__"


def workflow_name(fn: WorkflowFn | str) -> str:
    """The name a workflow is stored under: its registered name, else its ``__qualname__``."""
    if isinstance(fn, str):
        return fn
    name = getattr(fn, _ATTR, None)
    return name if isinstance(name, str) else fn.__qualname__


def activity_name(fn: Callable[..., Any]) -> str:
    """The name an activity is journaled under (its ``__qualname__``)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


@dataclass(frozen=True)
class WorkflowType:
    """A registered workflow function and how to decode its arguments and result."""

    name: str
    fn: WorkflowFn
    arg_decoders: tuple[Decode, ...]
    star_decoder: Decode | None
    result_decoder: Decode

    def decode_args(self, data: bytes) -> list[Any]:
        """The stored arguments (:func:`encode_args`), decoded with the parameter annotations."""
        out = []
        for i, blob in enumerate(split_args(data)):
            dec = self.arg_decoders[i] if i < len(self.arg_decoders) else self.star_decoder
            out.append((dec or decode_any)(blob))
        return out


class Registry:
    """The workflow types one engine can run."""

    def __init__(self) -> None:
        self._by_name: dict[str, WorkflowType] = {}

    def add(self, fn: WorkflowFn, name: str | None = None) -> WorkflowType:
        """Register ``fn`` under ``name`` (default: its ``__qualname__``)."""
        if not inspect.iscoroutinefunction(inspect.unwrap(fn)):
            raise UsageError(f"a workflow must be an async def function, got {fn!r}")
        name = name or workflow_name(fn)
        known = self._by_name.get(name)
        if known is not None and known.fn is not fn:
            raise UsageError(f"two different workflows are registered as {name!r}")
        with contextlib.suppress(AttributeError, TypeError):
            setattr(fn, _ATTR, name)
        fixed, star = arg_decoders(fn)
        wt = WorkflowType(name, fn, tuple(fixed), star, return_decoder(fn))
        self._by_name[name] = wt
        return wt

    def get(self, fn_or_name: WorkflowFn | str) -> WorkflowType:
        """The registered type; :class:`NotFound` naming the known ones."""
        name = workflow_name(fn_or_name)
        wt = self._by_name.get(name)
        if wt is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise NotFound(f"no workflow named {name!r} is registered here (known: {known})")
        return wt

    def find(self, name: str) -> WorkflowType | None:
        """The registered type named ``name``, if any."""
        return self._by_name.get(name)

    def names(self) -> list[str]:
        """Every registered name."""
        return sorted(self._by_name)
