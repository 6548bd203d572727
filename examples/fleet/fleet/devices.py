"""The device gateway: simulated telemetry and commands for every device of the fleet.

Devices are simulated deterministically from their id and the current time, so the service is
stateless and runs as several replicas. One device in every eight reports uncertain readings,
and charger "valley-cha-5" is flaky: it rejects about one command in three.
"""

from __future__ import annotations

import asyncio
import math
import time
import zlib

from garrison import NotFound, Service

from .catalog import DEVICES
from .models import Ack, Command, Device, Telemetry

svc = Service("devices")


def _device(device: str) -> Device:
    try:
        return DEVICES[device]
    except KeyError:
        raise NotFound(f"no device {device!r}") from None


@svc.get("/devices")
async def list_devices(site: str | None = None) -> list[Device]:
    """Every device, or those of one site."""
    return [d for d in DEVICES.values() if site is None or d.site == site]


@svc.get("/devices/{device}/telemetry")
async def telemetry(device: str) -> Telemetry:
    """The device's current reading."""
    d = _device(device)
    h = zlib.crc32(d.id.encode())
    now = time.time()
    phase = (h % 628) / 100
    power = d.capacity_kw * (0.5 + 0.4 * math.sin(now / 60 + phase))
    soc = None if d.kind == "solar" else round(50 + 40 * math.sin(now / 300 + phase), 1)
    quality = "uncertain" if h % 8 == 0 else "good"
    return Telemetry(d.id, now, round(power, 2), soc, quality)


@svc.post("/devices/{device}/commands")
async def command(device: str, cmd: Command) -> Ack:
    """Apply a set-point; the device takes a few milliseconds to acknowledge."""
    d = _device(device)
    await asyncio.sleep(0.002 + (zlib.crc32(d.id.encode()) % 5) / 1000)
    if abs(cmd.kw) > d.capacity_kw:
        return Ack(d.id, False, 0.0, f"set-point beyond capacity {d.capacity_kw} kW")
    if d.id == "valley-cha-5" and time.monotonic_ns() % 3 == 0:
        return Ack(d.id, False, 0.0, "device busy")
    return Ack(d.id, True, cmd.kw)
