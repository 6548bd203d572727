"""Messages shared by the fleet services."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

DeviceKind = Literal["battery", "solar", "charger"]
Quality = Literal["good", "uncertain", "bad"]


class Device(msgspec.Struct, frozen=True):
    """A device of the fleet and where it is."""

    id: str
    site: str
    kind: DeviceKind
    capacity_kw: float


class Telemetry(msgspec.Struct, frozen=True):
    """One reading of a device, with its quality as the device reported it."""

    device: str
    ts: float
    power_kw: float
    soc: float | None
    quality: Quality


class Command(msgspec.Struct, frozen=True):
    """A power set-point for a device; positive discharges, negative charges."""

    kw: Annotated[float, msgspec.Meta(ge=-10_000, le=10_000)]
    reason: str = ""


class Ack(msgspec.Struct, frozen=True):
    """A device's answer to a command."""

    device: str
    accepted: bool
    kw: float
    detail: str = ""


class SiteView(msgspec.Struct, frozen=True):
    """A site's devices aggregated."""

    site: str
    devices: int
    power_kw: float
    mean_soc: float | None
    good: int
    uncertain: int
    bad: int
    unreachable: int


class DispatchRequest(msgspec.Struct, frozen=True):
    """Ask a site to deliver ``kw`` in total, until the grid event is over (at most ``hold_s``
    seconds). ``id`` makes the request idempotent: the same id starts one dispatch."""

    site: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,32}$")]
    kw: Annotated[float, msgspec.Meta(ge=-100_000, le=100_000)]
    hold_s: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 7200.0
    id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")] | None = None


class DispatchReport(msgspec.Struct, frozen=True):
    """What a dispatch achieved."""

    site: str
    requested_kw: float
    commanded_kw: float
    acks: list[Ack]
    failed: list[str]
    ended_by: str = ""
    """``grid_event_over`` (the event came) or ``timeout`` (``hold_s`` passed first)."""
    released: int = 0
    """Batteries set back to 0 kW at the end."""


class DispatchStarted(msgspec.Struct, frozen=True):
    """A dispatch workflow, started (or found: the same id starts one dispatch)."""

    id: str
    status: str
    created: bool


class DispatchStatus(msgspec.Struct, frozen=True):
    """Where a dispatch workflow is: ``running``, or how it ended, with its report."""

    id: str
    status: str
    report: DispatchReport | None = None
    error: str | None = None
