"""The service behind the key rotation e2e test: it tells which passport key signed what it
verified, and which replica answered."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from garrison import Service
from garrison.identity import PASSPORT_HEADER, Passport, inspect_token

svc = Service("whoami")


@svc.get("/api/{rest:path}")
async def api(rest: str, passport: Passport, request: Request) -> dict[str, Any]:
    # The middleware has verified the passport already; its header names the key that signed it.
    token = request.headers[PASSPORT_HEADER]
    return {
        "subject": passport.user.subject if passport.user else None,
        "kid": inspect_token(token).kid,
        "replica": svc.replica,
    }
