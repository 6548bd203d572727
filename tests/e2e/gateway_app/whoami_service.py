"""A service that says who it thinks is calling: the passport it verified, and what it saw."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from garrison import Service
from garrison.identity import Passport

svc = Service("whoami")


def _describe(passport: Passport | None, request: Request) -> dict[str, Any]:
    return {
        "anonymous": passport is None or passport.anonymous,
        "subject": passport.user.subject if passport and passport.user else None,
        "scopes": list(passport.user.scopes) if passport and passport.user else [],
        "txn": passport.txn if passport else None,
        # what reached the service, for the test to check independently
        "passport_headers": request.headers.getlist("garrison-passport"),
        "authorization": request.headers.get("authorization"),
        "path": request.url.path,
    }


@svc.get("/api/{rest:path}")
async def api(rest: str, passport: Passport, request: Request) -> dict[str, Any]:
    return _describe(passport, request)


@svc.get("/public/{rest:path}")
async def public(rest: str, passport: Passport | None, request: Request) -> dict[str, Any]:
    return _describe(passport, request)


@svc.post("/api/{rest:path}")
async def upload(rest: str, passport: Passport, request: Request) -> dict[str, Any]:
    body = await request.body()
    return {"received": len(body), "subject": passport.user.subject if passport.user else None}
