"""Three tiny services for the e2e tests: each reports what it saw of the request."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request

from garrison import Service
from garrison.core import remaining
from garrison.service import CALLER_HEADER, current_trace

front = Service("front")
middle = Service("middle")
back = Service("back")

_stats = {"started": 0, "completed": 0, "cancelled": 0}


def _seen(svc: Service, request: Request) -> dict[str, Any]:
    span = current_trace()
    assert span is not None
    left = remaining()
    return {
        "service": svc.name,
        "replica": svc.replica,
        "budget_ms": None if left is None else round(left * 1000),
        "traceparent": request.headers.get("traceparent"),
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "caller": request.headers.get(CALLER_HEADER),
    }


@back.get("/info")
async def back_info(request: Request) -> dict[str, Any]:
    return _seen(back, request)


@back.get("/slow")
async def back_slow(seconds: float) -> dict[str, Any]:
    _stats["started"] += 1
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _stats["cancelled"] += 1
        raise
    _stats["completed"] += 1
    return {"slept": seconds}


@back.get("/stats")
async def back_stats() -> dict[str, int]:
    return dict(_stats)


@back.get("/fail")
async def back_fail() -> None:
    raise RuntimeError("back failed on purpose")


@middle.get("/info")
async def middle_info(request: Request) -> dict[str, Any]:
    seen = _seen(middle, request)  # before the call: budgets then shrink hop by hop
    r = await middle.client("back").get("/info")
    return {"middle": seen, "back": r.raise_for_status().json()}


@middle.get("/slow")
async def middle_slow(seconds: float) -> Any:
    r = await middle.client("back").get("/slow", params={"seconds": seconds})
    return r.raise_for_status().json()


@middle.get("/fail")
async def middle_fail() -> Any:
    r = await middle.client("back").get("/fail")
    return r.raise_for_status().json()


@front.get("/chain")
async def front_chain(request: Request) -> dict[str, Any]:
    seen = _seen(front, request)
    r = await front.client("middle").get("/info")
    return {"front": seen, **r.raise_for_status().json()}


@front.get("/slow")
async def front_slow(seconds: float, timeout: float) -> Any:
    r = await front.client("middle").get("/slow", params={"seconds": seconds}, timeout=timeout)
    return {"status": r.status, "body": r.json()}
