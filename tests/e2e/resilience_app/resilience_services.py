"""Services for the resilience e2e tests: a caller (front) and callees that misbehave on demand.

Every callee counts what it saw (requests, the ``garrison-attempt`` and ``garrison-no-retry``
headers, handlers started / cancelled / completed) and exposes the counts on ``GET /stats``;
``POST /reset`` zeroes them and restores good behaviour, so one set of processes serves every
test of the module. The handlers of front are written the way a team would write them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from garrison import Service
from garrison.resilience import ATTEMPT_HEADER, NO_RETRY_HEADER

front = Service("front")
back = Service("back")
phoenix = Service("phoenix")
middle = Service("middle")
door = Service("door")
pool = Service("pool")


class Seen:
    """What one service saw, per route."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.attempts: dict[str, Counter[str]] = {}
        self.no_retry: Counter[str] = Counter()
        self.started: Counter[str] = Counter()
        self.cancelled: Counter[str] = Counter()
        self.completed: Counter[str] = Counter()

    def record(self, route: str, request: Request) -> None:
        self.requests[route] += 1
        attempt = request.headers.get(ATTEMPT_HEADER, "1")
        self.attempts.setdefault(route, Counter())[attempt] += 1
        if request.headers.get(NO_RETRY_HEADER) == "1":
            self.no_retry[route] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "attempts": {k: dict(v) for k, v in self.attempts.items()},
            "no_retry": dict(self.no_retry),
            "started": dict(self.started),
            "cancelled": dict(self.cancelled),
            "completed": dict(self.completed),
        }


def _status(status: int) -> Response:
    return Response(b'{"error":"on_purpose"}', status_code=status, media_type="application/json")


def _stats_routes(svc: Service, state: dict[str, Any], reset: Any) -> None:
    @svc.get("/stats")
    async def stats() -> dict[str, Any]:
        return {"replica": svc.replica, **state["seen"].to_dict(), **state.get("extra", {})}

    @svc.post("/reset")
    async def do_reset() -> None:
        state["seen"] = Seen()
        reset()


# -- back: flaky, slow, always 503 ----------------------------------------------------------------

_back: dict[str, Any] = {"seen": Seen(), "pattern": [200], "next": 0}


def _reset_back() -> None:
    _back.update(pattern=[200], next=0)


_stats_routes(back, _back, _reset_back)


@back.post("/control/flaky")
async def back_set_pattern(pattern: str) -> dict[str, Any]:
    """``pattern``: comma-separated statuses answered in turn by ``/flaky`` (then again)."""
    _back.update(pattern=[int(s) for s in pattern.split(",")], next=0)
    return {"pattern": _back["pattern"]}


@back.get("/flaky")
async def back_flaky(request: Request) -> Any:
    _back["seen"].record("/flaky", request)
    pattern = _back["pattern"]
    status = pattern[_back["next"] % len(pattern)]
    _back["next"] += 1
    return {"ok": True} if status == 200 else _status(status)


@back.get("/slow")
async def back_slow(request: Request, seconds: float) -> dict[str, Any]:
    seen: Seen = _back["seen"]
    seen.record("/slow", request)
    seen.started["/slow"] += 1
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        seen.cancelled["/slow"] += 1
        raise
    seen.completed["/slow"] += 1
    return {"slept": seconds}


@back.get("/always503")
async def back_always_503(request: Request) -> Response:
    _back["seen"].record("/always503", request)
    return _status(503)


# -- phoenix: dies and comes back (a new process: its counts start at zero) ----------------------

_phoenix: dict[str, Any] = {"seen": Seen()}
_stats_routes(phoenix, _phoenix, lambda: None)


@phoenix.get("/ping")
async def phoenix_ping(request: Request) -> dict[str, Any]:
    _phoenix["seen"].record("/ping", request)
    return {"pong": True}


# -- pool: three replicas; one can be made bad -----------------------------------------------------

_pool: dict[str, Any] = {"seen": Seen(), "extra": {"bad": False}}


def _reset_pool() -> None:
    _pool["extra"]["bad"] = False


_stats_routes(pool, _pool, _reset_pool)


@pool.post("/control/bad")
async def pool_set_bad(bad: bool) -> dict[str, bool]:
    """Make this replica answer 500 to every ``/work`` call (or heal it)."""
    _pool["extra"]["bad"] = bad
    return {"bad": bad}


@pool.get("/work")
async def pool_work(request: Request) -> Any:
    _pool["seen"].record("/work", request)
    if _pool["extra"]["bad"]:
        return _status(500)
    return {"replica": pool.replica}


# -- middle: front -> middle -> back ---------------------------------------------------------------


@middle.get("/relay")
async def middle_relay() -> Any:
    r = await middle.client("back").get("/always503")
    return r.raise_for_status().json()


# -- door: sheds at its door ([resilience.inbound.door]) ------------------------------------------

_door: dict[str, Any] = {"seen": Seen(), "extra": {"holding": 0}, "gate": None}


def _reset_door() -> None:
    gate = _door["gate"]
    if gate is not None:
        gate.set()
    _door["gate"] = None
    _door["extra"]["holding"] = 0


_stats_routes(door, _door, _reset_door)


@door.get("/hold")
async def door_hold(request: Request) -> dict[str, str]:
    """Stay in flight until ``POST /release`` (at most 20 s, so nothing hangs for ever)."""
    _door["seen"].record("/hold", request)
    if _door["gate"] is None:
        _door["gate"] = asyncio.Event()
    gate = _door["gate"]
    _door["extra"]["holding"] += 1
    try:
        await asyncio.wait_for(gate.wait(), 20)
    finally:
        _door["extra"]["holding"] -= 1
    return {"held": request.headers.get("garrison-criticality", "default")}


@door.post("/release")
async def door_release() -> None:
    _reset_door()


@door.get("/quick")
async def door_quick(request: Request) -> dict[str, str]:
    crit = request.headers.get("garrison-criticality", "default")
    _door["seen"].record(f"/quick {crit}", request)
    return {"criticality": crit}


# -- front: the caller whose edges are configured in garrison.toml --------------------------------


@front.get("/flaky")
async def front_flaky() -> Any:
    return (await front.client("back").get("/flaky")).raise_for_status().json()


@front.get("/slow")
async def front_slow(seconds: float) -> Response:
    # The callee's answer is passed on as is: its own deadline may answer 504 a hair before
    # this side's timeout fires.
    r = await front.client("back").get("/slow", params={"seconds": seconds})
    signal = {k: v for k, v in r.headers.items() if k.lower() == NO_RETRY_HEADER}
    return Response(r.content, r.status, headers=signal, media_type="application/json")


@front.get("/phoenix")
async def front_phoenix() -> Any:
    return (await front.client("phoenix").get("/ping")).raise_for_status().json()


@front.get("/pool")
async def front_pool() -> Any:
    return (await front.client("pool").get("/work")).raise_for_status().json()


@front.get("/chain")
async def front_chain() -> Any:
    return (await front.client("middle").get("/relay")).raise_for_status().json()
