"""Site views: fan out to the devices of a site and aggregate their telemetry."""

from __future__ import annotations

import asyncio

from garrison import GarrisonError, NotFound, Service

from .catalog import SITES, devices_at
from .models import Device, SiteView, Telemetry

svc = Service("sites")
devices = svc.client("devices")


@svc.get("/sites")
async def list_sites() -> list[str]:
    """The names of every site."""
    return list(SITES)


@svc.get("/sites/{site}/devices")
async def site_devices(site: str) -> list[Device]:
    """The devices of a site."""
    if site not in SITES:
        raise NotFound(f"no site {site!r}")
    return devices_at(site)


async def _reading(device: str) -> Telemetry | None:
    try:
        r = await devices.get(f"/devices/{device}/telemetry", route="/devices/{id}/telemetry")
        return r.raise_for_status().json(Telemetry)
    except GarrisonError:
        return None  # an unreachable device is counted, not fatal


@svc.get("/sites/{site}")
async def site_view(site: str) -> SiteView:
    """The site's power, mean state of charge and reading quality, from every device."""
    if site not in SITES:
        raise NotFound(f"no site {site!r}")
    readings = await asyncio.gather(*(_reading(d.id) for d in devices_at(site)))
    ok = [r for r in readings if r is not None]
    socs = [r.soc for r in ok if r.soc is not None and r.quality != "bad"]
    return SiteView(
        site=site,
        devices=len(readings),
        power_kw=round(sum(r.power_kw for r in ok if r.quality != "bad"), 2),
        mean_soc=round(sum(socs) / len(socs), 1) if socs else None,
        good=sum(r.quality == "good" for r in ok),
        uncertain=sum(r.quality == "uncertain" for r in ok),
        bad=sum(r.quality == "bad" for r in ok),
        unreachable=len(readings) - len(ok),
    )
