"""alpha -> beta -> gamma. Only gamma deals with identity; alpha and beta just call onwards."""

from __future__ import annotations

from typing import Any

from garrison import Service
from garrison.identity import Passport, Requires

alpha = Service("alpha")
beta = Service("beta")
gamma = Service("gamma")


def _seen(passport: Passport | None) -> dict[str, Any] | None:
    if passport is None:
        return None
    return {
        "subject": passport.user.subject if passport.user else None,
        "scopes": list(passport.user.scopes) if passport.user else [],
        "txn": passport.txn,
        "expires_at": passport.expires_at,
    }


@gamma.get("/whoami")
async def whoami(passport: Passport) -> dict[str, Any] | None:
    return _seen(passport)


@gamma.post("/dispatch", requires=Requires(scopes=("fleet:write",)))
async def dispatch(passport: Passport) -> dict[str, Any] | None:
    return _seen(passport)


# alpha and beta: no identity code at all; the client carries the passport onwards.


async def _relay(svc: Service, callee: str, method: str, path: str) -> dict[str, Any]:
    r = await svc.client(callee).request(method, path)
    return {"status": r.status, "body": r.json()}


@beta.get("/whoami")
async def beta_whoami() -> dict[str, Any]:
    return await _relay(beta, "gamma", "GET", "/whoami")


@beta.post("/dispatch")
async def beta_dispatch() -> dict[str, Any]:
    return await _relay(beta, "gamma", "POST", "/dispatch")


@alpha.get("/whoami")
async def alpha_whoami() -> dict[str, Any]:
    return await _relay(alpha, "beta", "GET", "/whoami")


@alpha.post("/dispatch")
async def alpha_dispatch() -> dict[str, Any]:
    return await _relay(alpha, "beta", "POST", "/dispatch")


# Each hop also reports what it verified itself, for the hop-by-hop check.


@alpha.get("/hops")
async def alpha_hops(passport: Passport | None) -> dict[str, Any]:
    r = await alpha.client("beta").get("/hops")
    return {"alpha": _seen(passport), **r.json()}


@beta.get("/hops")
async def beta_hops(passport: Passport | None) -> dict[str, Any]:
    r = await beta.client("gamma").get("/hops")
    return {"beta": _seen(passport), **r.json()}


@gamma.get("/hops")
async def gamma_hops(passport: Passport | None) -> dict[str, Any]:
    return {"gamma": _seen(passport)}
