"""Values that carry their quality: :class:`Sample` in, :class:`AggregateValue` out.

A sample is what a sensor, a device or an upstream calculation says at one instant of event
time: the value, the OPC UA status code (see :mod:`._status`), an optional standard uncertainty
(GUM: one standard deviation, in the value's unit) and provenance flags saying whether the value
was substituted, interpolated or annotated by someone.

Both structs are ``array_like`` msgspec structs: on the wire and in stores a sample is the
array ``[ts, value, status, u, flags]``, not an object with five keys.
"""

from __future__ import annotations

import math
from enum import IntFlag

import msgspec

from ._status import StatusCode

__all__ = ["AggregateValue", "Provenance", "Sample"]


class Provenance(IntFlag):
    """Where a value came from, beyond its status (PI System's "substituted"/"annotated" flags).

    OPC UA expresses some of this in the status (Uncertain_SubstituteValue, the Interpolated
    historian bit); these flags keep it even when the status is Good, e.g. a value a person
    entered and approved.
    """

    NONE = 0
    SUBSTITUTED = 1
    """A person or a rule replaced the measured value."""
    INTERPOLATED = 2
    """The value was computed between neighbouring samples, not measured at this instant."""
    ANNOTATED = 4
    """Someone attached a note to this sample (the note lives elsewhere, keyed by time)."""


class Sample(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One reading: event time, value, OPC UA status, optional uncertainty and provenance."""

    ts: int
    """Event time in integer milliseconds since the Unix epoch (exact window arithmetic)."""
    value: float
    """The reading. Its meaning depends on ``status``: a Bad sample's value is not used."""
    status: int = StatusCode.GOOD
    """The 32-bit OPC UA status code (:class:`StatusCode`); 0 is Good."""
    u: float | None = None
    """Standard uncertainty (one standard deviation, same unit as ``value``), if known."""
    flags: int = 0
    """:class:`Provenance` flags."""

    @property
    def is_good(self) -> bool:
        """Severity Good."""
        return (self.status >> 30) & 3 == 0

    @property
    def is_uncertain(self) -> bool:
        """Severity Uncertain."""
        return (self.status >> 30) & 3 == 1

    @property
    def is_bad(self) -> bool:
        """Severity Bad."""
        return (self.status >> 30) & 3 >= 2

    def sort_key(self) -> tuple[int, float, int, int, float]:
        """The total order samples are kept in: by time, then by the other fields, so that
        samples with equal timestamps give the same results whatever order they arrived in."""
        v = self.value
        return (
            self.ts,
            v if v == v else math.inf,  # NaN sorts last instead of breaking the order
            self.status,
            self.flags,
            -1.0 if self.u is None else self.u,
        )


class AggregateValue(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """One aggregate of one window, as OPC UA Part 13 returns it: value, status and timestamp.

    ``value`` is None when the status is Bad (Part 13: no value is returned with a Bad result).
    ``ts`` is the window start, or the time of the sample for Start/End/Minimum/Maximum
    (Part 13's ...ActualTime variants). ``u`` is the propagated standard uncertainty where the
    aggregate defines one; ``flags`` is the union of the provenance of the samples used.
    """

    value: float | None
    status: int
    ts: int
    u: float | None = None
    flags: int = 0

    @property
    def is_good(self) -> bool:
        """Severity Good."""
        return (self.status >> 30) & 3 == 0

    def describe(self) -> str:
        """E.g. ``"12.5 (Good, Calculated)"``."""
        shown = "—" if self.value is None else f"{self.value:g}"
        return f"{shown} ({StatusCode.describe(self.status)})"
