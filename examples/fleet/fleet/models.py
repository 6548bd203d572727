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
    """Ask a site to deliver ``kw`` in total."""

    site: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,32}$")]
    kw: Annotated[float, msgspec.Meta(ge=-100_000, le=100_000)]


class DispatchReport(msgspec.Struct, frozen=True):
    """What a dispatch achieved."""

    site: str
    requested_kw: float
    commanded_kw: float
    acks: list[Ack]
    failed: list[str]
