"""Window kinds and the watermark policy: which windows an event belongs to, and when time is up.

All times are integer milliseconds of *event time*. Windows are half-open ``[start, end)`` and
aligned to the epoch (a 60 s tumbling window starts at a multiple of 60 000). A session window
is the union of ``[t, t + gap)`` over events less than ``gap`` apart; it grows as events come.

The watermark is the operator's claim that no more events older than it will arrive:
:class:`BoundedOutOfOrderness` puts it ``max_delay`` behind the latest event time seen (Flink's
and Kafka Streams' "grace" model). A window fires when the watermark reaches its end and is kept,
for revisions, until the watermark passes ``end + allowed_lateness``.
"""

from __future__ import annotations

import msgspec

from garrison.core import InvalidInput

__all__ = ["BoundedOutOfOrderness", "Hopping", "Session", "Tumbling", "Window", "WindowKind"]


class Window(msgspec.Struct, array_like=True, frozen=True, gc=False, order=True):
    """An interval of event time ``[start, end)`` in milliseconds."""

    start: int
    end: int

    @property
    def size(self) -> int:
        """``end - start`` in milliseconds."""
        return self.end - self.start


class Tumbling(msgspec.Struct, frozen=True, tag="tumbling", forbid_unknown_fields=True):
    """Fixed, non-overlapping windows of ``size`` milliseconds."""

    size: int

    def __post_init__(self) -> None:
        _positive("Tumbling.size", self.size)


class Hopping(msgspec.Struct, frozen=True, tag="hopping", forbid_unknown_fields=True):
    """Windows of ``size`` milliseconds starting every ``hop`` milliseconds (they overlap when
    ``hop < size``; an event belongs to ``ceil(size / hop)`` of them)."""

    size: int
    hop: int

    def __post_init__(self) -> None:
        _positive("Hopping.size", self.size)
        _positive("Hopping.hop", self.hop)
        if self.hop > self.size:
            raise InvalidInput(
                f"Hopping: hop ({self.hop} ms) is longer than size ({self.size} ms), which "
                "would leave gaps no window covers; use Tumbling for hop == size"
            )

    def starts(self, ts: int) -> list[int]:
        """The starts of the windows containing ``ts``, latest first."""
        s = ts - ts % self.hop
        out = []
        while s + self.size > ts:
            out.append(s)
            s -= self.hop
        return out


class Session(msgspec.Struct, frozen=True, tag="session", forbid_unknown_fields=True):
    """Per-key sessions: events less than ``gap`` milliseconds apart share a window, which ends
    ``gap`` after its last event."""

    gap: int

    def __post_init__(self) -> None:
        _positive("Session.gap", self.gap)


WindowKind = Tumbling | Hopping | Session
"""The window kinds an operator accepts."""


class BoundedOutOfOrderness(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Watermark = latest event time seen - ``max_delay`` ms: events may arrive up to
    ``max_delay`` out of order before their window fires."""

    max_delay: int = 0

    def __post_init__(self) -> None:
        if self.max_delay < 0:
            raise InvalidInput(f"BoundedOutOfOrderness.max_delay: {self.max_delay} is negative")


def _positive(name: str, value: int) -> None:
    if value <= 0:
        raise InvalidInput(f"{name}: {value} ms is not a positive duration")
