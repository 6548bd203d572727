"""Request deadlines that travel with the call.

A deadline is an absolute point on the monotonic clock, held in a context variable so that every
call made while handling a request sees the caller's remaining budget. On the wire it travels as
the *remaining* budget in milliseconds (header ``garrison-timeout-ms``, like gRPC's
``grpc-timeout``): absolute times would need synchronized clocks across machines.

Scopes only ever tighten: a nested ``deadline_scope(10)`` inside a request with 2 s left still
has 2 s.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ._errors import DeadlineExceeded

__all__ = [
    "DEADLINE_HEADER",
    "Deadline",
    "current_deadline",
    "deadline_scope",
    "pop_deadline",
    "push_deadline",
    "remaining",
]

DEADLINE_HEADER = "garrison-timeout-ms"

_current: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "garrison_deadline", default=None
)


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute deadline on :func:`time.monotonic`."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline ``seconds`` from now."""
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left (negative once passed)."""
        return self.at - time.monotonic()

    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.at

    def check(self, what: str = "request") -> None:
        """Raise :class:`DeadlineExceeded` if the deadline has passed."""
        if self.expired():
            raise DeadlineExceeded(f"{what}: deadline exceeded")


def current_deadline() -> Deadline | None:
    """The deadline of the request being handled, if any."""
    return _current.get()


def remaining() -> float | None:
    """Seconds left in the current deadline, or ``None`` if there is none."""
    d = _current.get()
    return None if d is None else d.remaining()


def push_deadline(seconds: float) -> contextvars.Token[Deadline | None]:
    """Enter a deadline ``seconds`` from now (never later than the current one); hot-path form
    of :func:`deadline_scope`. Pass the returned token to :func:`pop_deadline`."""
    new = Deadline(time.monotonic() + seconds)
    outer = _current.get()
    if outer is not None and outer.at <= new.at:
        new = outer
    return _current.set(new)


def pop_deadline(token: contextvars.Token[Deadline | None]) -> None:
    """Leave the deadline entered by :func:`push_deadline`."""
    _current.reset(token)


@contextlib.contextmanager
def deadline_scope(seconds: float | None) -> Iterator[Deadline | None]:
    """Run the block under a deadline of ``seconds`` from now, never later than the current one."""
    outer = _current.get()
    if seconds is None:
        yield outer
        return
    new = Deadline.after(seconds)
    if outer is not None and outer.at <= new.at:
        new = outer
    token = _current.set(new)
    try:
        yield new
    finally:
        _current.reset(token)
