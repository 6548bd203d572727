"""The journal: what is recorded about a workflow run, as frozen msgspec structs.

A run's history is a list of :class:`Batch` records. A batch is one *transition* of the run: the
inputs the engine fed the workflow at one moment (an activity's result, a timer that fired, an
event that arrived ...), in the order it fed them, the time it fed them (what ``ctx.now()`` says
while the code runs) and the version markers the code set while handling them. Replaying a run
is feeding the same batches, in order, to a fresh coroutine: each input resolves the step it
names, the suspended code runs on exactly as it did, and steps it issues get the same numbers.

Inputs carry the step number they resolve and the kind and name of that step, so that replay can
check that the code still issues the same step at that number (:class:`NonDeterminismError`
otherwise). Results, events and arguments are stored as msgpack bytes, decoded for the workflow
with the type its code annotates, on the first run exactly as on replay.
"""

from __future__ import annotations

import msgspec

from ._errors import FailureInfo

__all__ = [
    "ActivityCompleted",
    "ActivityFailed",
    "Batch",
    "CancelRequested",
    "ChildCompleted",
    "ChildFailed",
    "EventReceived",
    "History",
    "Input",
    "TimerFired",
    "WaitTimedOut",
    "decode_batch",
    "encode_batch",
    "step_of",
]


class ActivityCompleted(msgspec.Struct, frozen=True, array_like=True, tag="a"):
    """Activity step ``step`` (function ``name``) returned ``result`` (msgpack)."""

    step: int
    name: str
    result: bytes


class ActivityFailed(msgspec.Struct, frozen=True, array_like=True, tag="af"):
    """Activity step ``step`` failed for good after ``attempts`` attempts."""

    step: int
    name: str
    failure: FailureInfo
    attempts: int


class TimerFired(msgspec.Struct, frozen=True, array_like=True, tag="t"):
    """The durable timer of step ``step`` is due."""

    step: int


class EventReceived(msgspec.Struct, frozen=True, array_like=True, tag="e"):
    """The wait of step ``step`` got event ``name`` with ``payload`` (msgpack)."""

    step: int
    name: str
    payload: bytes


class WaitTimedOut(msgspec.Struct, frozen=True, array_like=True, tag="et"):
    """The wait of step ``step`` for event ``name`` reached its timeout."""

    step: int
    name: str


class ChildCompleted(msgspec.Struct, frozen=True, array_like=True, tag="c"):
    """Child workflow step ``step`` (workflow ``name``, id ``child_id``) returned ``result``."""

    step: int
    name: str
    child_id: str
    result: bytes


class ChildFailed(msgspec.Struct, frozen=True, array_like=True, tag="cf"):
    """Child workflow step ``step`` ended ``status`` (failed, cancelled, terminated)."""

    step: int
    name: str
    child_id: str
    status: str
    failure: FailureInfo | None


class CancelRequested(msgspec.Struct, frozen=True, array_like=True, tag="x"):
    """Someone asked the workflow to cancel."""

    reason: str = ""


Input = (
    ActivityCompleted
    | ActivityFailed
    | TimerFired
    | EventReceived
    | WaitTimedOut
    | ChildCompleted
    | ChildFailed
    | CancelRequested
)


class Batch(msgspec.Struct, frozen=True, array_like=True):
    """One transition: ``inputs`` fed at wall time ``at``; ``markers`` set while handling them."""

    at: float
    inputs: tuple[Input, ...] = ()
    markers: dict[str, int] = {}


class History(msgspec.Struct, frozen=True, kw_only=True):
    """Everything needed to replay one run of a workflow (see ``replay_check``)."""

    workflow_id: str
    workflow: str
    run_id: str
    args: bytes
    """The run's arguments, a msgpack array."""
    batches: tuple[Batch, ...]


_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(Batch)


def encode_batch(batch: Batch) -> bytes:
    """The stored form of a batch."""
    return _enc.encode(batch)


def decode_batch(data: bytes) -> Batch:
    """A batch from its stored form."""
    return _dec.decode(data)


def step_of(item: Input) -> int | None:
    """The step an input resolves (None for a cancellation request)."""
    return None if isinstance(item, CancelRequested) else item.step
