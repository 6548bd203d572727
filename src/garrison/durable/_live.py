"""A workflow held in memory by an engine: its machine, what it waits for, its running tasks.

The engine turns I/O into *inputs* here (an activity finished, a timer is due, an inbox row
arrived) and the driver feeds them to the machine in batches. The bookkeeping makes sure each
step gets exactly one input: a step already queued or no longer pending is not fed twice (a
wait that timed out while its event arrived takes whichever came first).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import msgspec

from ._journal import (
    CancelRequested,
    ChildCompleted,
    ChildFailed,
    EventReceived,
    Input,
    step_of,
)
from ._machine import ChildCommand, Command, Machine, TimerCommand, WaitCommand
from ._registry import WorkflowType
from ._stores.base import InboxItem

__all__ = ["Live"]

_child_dec = msgspec.msgpack.Decoder(ChildCompleted | ChildFailed)


@dataclass(eq=False)
class Live:
    """One hot workflow instance."""

    id: str
    wt: WorkflowType
    run_id: str
    runs: int
    epoch: int
    machine: Machine
    history_len: int = 0
    inbox_version: int = 0
    inputs: list[Input] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)
    queued: set[int] = field(default_factory=set)
    events: dict[str, deque[InboxItem]] = field(default_factory=dict)
    seen: set[int] = field(default_factory=set)
    waits: dict[int, WaitCommand] = field(default_factory=dict)
    running: set[int] = field(default_factory=set)
    """Steps whose activity runs now."""
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    driver: asyncio.Task[None] | None = None
    idle_timer: asyncio.Task[None] | None = None
    idle_due: bool = False
    """Its idle-unload time has come: the driver unloads it if it is still idle."""
    closed: bool = False

    def feed(self, item: Input, seq: int | None = None) -> bool:
        """Queue ``item`` for the next batch (False: its step is resolved or queued already)."""
        step = step_of(item)
        if step is not None:
            if step in self.queued or not self.machine.is_pending(step):
                return False
            self.queued.add(step)
        self.inputs.append(item)
        if seq is not None:
            self.consumed.append(seq)
        self.wake.set()
        return True

    def take(self) -> tuple[list[Input], list[int]]:
        """The queued inputs and the inbox rows they consume."""
        inputs, consumed = self.inputs, self.consumed
        self.inputs, self.consumed = [], []
        for item in inputs:
            s = step_of(item)
            if s is not None:
                self.queued.discard(s)
        return inputs, consumed

    def deliver(self, item: InboxItem) -> None:
        """An inbox row reached this instance: feed it now or keep it for a later wait."""
        if item.seq in self.seen:
            return
        self.seen.add(item.seq)
        self.inbox_version = max(self.inbox_version, item.version)
        if item.kind == "cancel":
            self.feed(CancelRequested(item.name), item.seq)
        elif item.kind == "child":
            outcome = _child_dec.decode(item.payload)
            if not self.feed(outcome, item.seq):
                self.consumed.append(item.seq)  # a step of an earlier run: just drop the row
        else:
            for step, w in sorted(self.waits.items()):
                if w.name == item.name and self.feed(
                    EventReceived(step, item.name, item.payload), item.seq
                ):
                    del self.waits[step]
                    return
            self.events.setdefault(item.name, deque()).append(item)

    def match_waits(self, commands: list[Command]) -> None:
        """New (or, after a replay, pending) waits: resolve at once with a kept event, else
        remember them for the next event of their name."""
        for cmd in commands:
            if (
                isinstance(cmd, WaitCommand)
                and cmd.step not in self.waits
                and cmd.step not in self.queued
                and self.machine.is_pending(cmd.step)
            ):
                kept = self.events.get(cmd.name)
                if kept:
                    item = kept.popleft()
                    self.feed(EventReceived(cmd.step, cmd.name, item.payload), item.seq)
                else:
                    self.waits[cmd.step] = cmd

    def wake_at(self) -> float | None:
        """The earliest pending timer or wait deadline."""
        times: list[float] = []
        for cmd in self.machine.pending_commands():
            if isinstance(cmd, TimerCommand):
                times.append(cmd.fire_at)
            elif isinstance(cmd, WaitCommand) and cmd.deadline is not None:
                times.append(cmd.deadline)
        return min(times) if times else None

    def waits_outside(self) -> bool:
        """Whether it waits for something from outside (an event or a child workflow)."""
        return any(
            isinstance(c, WaitCommand | ChildCommand) for c in self.machine.pending_commands()
        )
