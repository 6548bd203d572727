"""Dispatch: deliver a site's power request from its batteries, as a durable workflow.

``POST /dispatch`` starts workflow ``discharge``: it lists the site's batteries, commands each
its share concurrently, holds until the grid operator says the event is over (``POST
/dispatch/{id}/grid-event-over``) or ``hold_s`` passes, then sets them back to 0 kW and
reports. Every device call is an activity (retried, its result journaled), so a dispatch
survives a crash of this service: after a restart it continues where it was, and a two-hour
hold costs a row in the store, not a process. If commanding fails, or an operator cancels the
dispatch while it holds, the saga releases every battery before the workflow ends.

Operators see the workflows at ``/_garrison/workflows`` and with ``garrison workflows list
--service dispatch --app-dir examples/fleet``.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

import msgspec

from garrison import NotFound, Service, WorkflowContext
from garrison.durable import Saga, WaitTimeout, WorkflowError

from .catalog import SITES
from .models import (
    Ack,
    Command,
    Device,
    DispatchReport,
    DispatchRequest,
    DispatchStarted,
    DispatchStatus,
)

svc = Service("dispatch")
sites = svc.client("sites")
devices = svc.client("devices")

GRID_EVENT_OVER = "grid_event_over"


class NoBatteryAccepted(Exception):
    """Every battery of the site refused its set-point."""


# -- activities: every call to another service ------------------------------------------------


@svc.activity(retry={"max_attempts": 3, "initial_backoff": 0.05}, timeout=10)
async def site_batteries(site: str) -> list[Device]:
    """The batteries of ``site`` (from the sites service)."""
    r = await sites.get(f"/sites/{site}/devices", route="/sites/{site}/devices")
    return [d for d in r.raise_for_status().json(list[Device]) if d.kind == "battery"]


async def _set_point(device: str, kw: float, reason: str) -> Ack:
    r = await devices.post(
        f"/devices/{device}/commands",
        json=Command(kw=round(kw, 2), reason=reason),
        route="/devices/{id}/commands",
    )
    return r.raise_for_status().json(Ack)


@svc.activity(retry={"max_attempts": 3, "initial_backoff": 0.05}, timeout=10)
async def command(device: str, kw: float) -> Ack:
    """Give ``device`` the set-point ``kw``."""
    return await _set_point(device, kw, "dispatch")


@svc.activity(retry={"max_attempts": 5, "initial_backoff": 0.1}, timeout=10)
async def release(device: str) -> Ack:
    """Set ``device`` back to 0 kW (idempotent: safe to repeat, safe on a device never
    commanded, which is why it can be the compensation of every command)."""
    return await _set_point(device, 0.0, "release")


def _share(kw: float, device: Device, total_capacity: float) -> float:
    share = kw * device.capacity_kw / total_capacity
    return max(-device.capacity_kw, min(device.capacity_kw, share))


# -- the workflow --------------------------------------------------------------------------------


@svc.workflow
async def discharge(ctx: WorkflowContext, site: str, kw: float, hold_s: float) -> DispatchReport:
    """Share ``kw`` across the site's batteries in proportion to their capacity (a share is
    capped at the battery's capacity), hold until the grid event is over, then release."""
    batteries = await ctx.activity(site_batteries, site)
    total = sum(d.capacity_kw for d in batteries) or 1.0
    async with Saga(ctx, parallel=True) as saga:
        for d in batteries:  # on failure or cancellation: every battery back to 0 kW
            saga.add(release, d.id)
        acks: list[Ack] = await ctx.gather(
            *(ctx.activity(command, d.id, _share(kw, d, total)) for d in batteries)
        )
        accepted = [a for a in acks if a.accepted]
        if batteries and not accepted:
            raise NoBatteryAccepted(f"no battery of {site} accepted its set-point")
        try:
            await ctx.wait_event(GRID_EVENT_OVER, timeout=hold_s)
            ended_by = GRID_EVENT_OVER
        except WaitTimeout:
            ended_by = "timeout"
    released = await ctx.gather(*(ctx.activity(release, a.device) for a in accepted))
    return DispatchReport(
        site=site,
        requested_kw=kw,
        commanded_kw=round(sum(a.kw for a in accepted), 2),
        acks=acks,
        failed=[a.device for a in acks if not a.accepted],
        ended_by=ended_by,
        released=len(released),
    )


# -- routes ----------------------------------------------------------------------------------------


@svc.post("/dispatch", status_code=202)
async def start_dispatch(request: DispatchRequest) -> DispatchStarted:
    """Start a dispatch (idempotent with ``id``); follow it at ``GET /dispatch/{id}``."""
    if request.site not in SITES:
        raise NotFound(f"no site {request.site!r} (sites: {', '.join(SITES)})")
    handle = await svc.workflows.start(
        discharge, request.site, request.kw, request.hold_s, id=request.id
    )
    info = await handle.status()
    return DispatchStarted(handle.id, str(info.status), created=handle.created)


@svc.post("/dispatch/{dispatch_id}/grid-event-over", status_code=202)
async def grid_event_over(dispatch_id: str) -> dict[str, str]:
    """Tell a holding dispatch that the grid event is over: it releases and reports."""
    await svc.workflows.signal(dispatch_id, GRID_EVENT_OVER)
    return {"id": dispatch_id, "event": GRID_EVENT_OVER}


@svc.get("/dispatch/{dispatch_id}")
async def dispatch_status(
    dispatch_id: str, wait: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0
) -> DispatchStatus:
    """The dispatch's status and, once it ended, its report; ``wait`` seconds at most for the
    end."""
    handle = svc.workflows.handle(dispatch_id)
    info = await handle.status()  # NotFound (404) for an unknown id
    if info.status == "running" and wait > 0:
        with contextlib.suppress(TimeoutError, WorkflowError):
            await handle.result(timeout=wait)
        info = await handle.status()
    if info.status == "completed":
        return DispatchStatus(dispatch_id, "completed", report=await handle.result())
    error = info.failure.describe() if info.failure is not None else None
    return DispatchStatus(dispatch_id, str(info.status), error=error)
