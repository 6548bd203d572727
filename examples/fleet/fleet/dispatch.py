"""Dispatch: split a site's power request across its batteries and command them concurrently."""

from __future__ import annotations

import asyncio

from garrison import GarrisonError, NotFound, Service

from .models import Ack, Command, Device, DispatchReport, DispatchRequest

svc = Service("dispatch")
sites = svc.client("sites")
devices = svc.client("devices")


async def _command(device: Device, kw: float) -> Ack | None:
    try:
        r = await devices.post(
            f"/devices/{device.id}/commands",
            json=Command(kw=round(kw, 2), reason="dispatch"),
            route="/devices/{id}/commands",
        )
        return r.raise_for_status().json(Ack)
    except GarrisonError:
        return None


def _share(kw: float, device: Device, total_capacity: float) -> float:
    share = kw * device.capacity_kw / total_capacity
    return max(-device.capacity_kw, min(device.capacity_kw, share))


@svc.post("/dispatch")
async def dispatch(request: DispatchRequest) -> DispatchReport:
    """Share ``kw`` across the site's batteries in proportion to their capacity.

    A battery's share is capped at its capacity; what cannot be placed shows as the gap between
    ``requested_kw`` and ``commanded_kw``.
    """
    r = await sites.get(f"/sites/{request.site}/devices", route="/sites/{site}/devices")
    if r.status == 404:
        raise NotFound(f"no site {request.site!r}")
    site_devices = r.raise_for_status().json(list[Device])
    batteries = [d for d in site_devices if d.kind == "battery"]
    total = sum(d.capacity_kw for d in batteries) or 1.0
    acks = await asyncio.gather(*(_command(d, _share(request.kw, d, total)) for d in batteries))
    done = [a for a in acks if a is not None]
    return DispatchReport(
        site=request.site,
        requested_kw=request.kw,
        commanded_kw=round(sum(a.kw for a in done if a.accepted), 2),
        acks=done,
        failed=[d.id for d, a in zip(batteries, acks, strict=True) if a is None or not a.accepted],
    )
