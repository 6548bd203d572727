"""What the window operator emits. Every output is a tagged msgspec struct, so a processor can
write it to a topic as it is and a consumer can decode the union :data:`WindowOutput`.

* :class:`WindowResult` — the aggregates of one window of one key. ``revision`` 0 is the result
  emitted when the watermark passed the window's end; each late event accepted within the
  allowed lateness emits the window again with the next revision. The latest revision of a
  window supersedes all earlier ones.
* :class:`WindowRetracted` — a session window that no longer exists as emitted (a late event
  merged it with another or stretched it); a result for the new window follows.
* :class:`WindowClosed` — the window's state was dropped: no revision will follow ``revision``.
* :class:`TooLate` — an event that arrived after every window it belongs to had closed. It is
  reported, never silently dropped, with the reason and the watermark at arrival.
"""

from __future__ import annotations

import msgspec

from ._sample import AggregateValue, Sample
from ._windows import Window

__all__ = ["TooLate", "WindowClosed", "WindowOutput", "WindowResult", "WindowRetracted"]


class WindowResult(msgspec.Struct, frozen=True, tag="result"):
    """The aggregates of ``window`` for ``key``, revision ``revision`` (0 first)."""

    key: str
    window: Window
    revision: int
    status: int
    """The window's overall quality (Part 13 value-based status over all its samples), with
    the Partial bit when the window is incomplete."""
    values: dict[str, AggregateValue]
    """One entry per aggregate name of the operator's :class:`Aggregation`."""
    samples: int
    """How many samples (of any quality) the window holds."""


class WindowRetracted(msgspec.Struct, frozen=True, tag="retracted"):
    """The session ``window`` of ``key`` as emitted at ``revision`` no longer exists."""

    key: str
    window: Window
    revision: int


class WindowClosed(msgspec.Struct, frozen=True, tag="closed"):
    """``window`` of ``key`` is final at ``revision``; its state is gone."""

    key: str
    window: Window
    revision: int


class TooLate(msgspec.Struct, frozen=True, tag="too_late"):
    """``sample`` for ``key`` came after its windows closed; ``reason`` says which and why."""

    key: str
    sample: Sample
    reason: str
    watermark: int


WindowOutput = WindowResult | WindowRetracted | WindowClosed | TooLate
"""Everything :meth:`WindowOperator.drain` returns."""
