"""Identity at the gateway: rules and their errors, real resolvers, cookies, actions, degraded."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest

from garrison.core import FakeClock, ServiceUnavailable, parse_config
from garrison.gateway import Gateway, RecordingUpstream
from garrison.identity import Assurance, Passport, TrustLevel
from garrison.identity._edge import IdentityEdge
from garrison.identity._passport import PassportCodec
from garrison.identity._session import SessionCookieConfig, SessionCookieResolver
from garrison.identity._sessionstore import MemorySessionStore, Session, StoreUnavailable

from .conftest import KEYRING, call, device, make_gateway, passport_of, stub_edge, user

ROUTES: list[dict[str, Any]] = [
    {"prefix": "/open", "service": "up", "auth": "anonymous"},
    {"prefix": "/public", "service": "up", "auth": "anonymous", "ignore_invalid": True},
    {"prefix": "/me", "service": "up", "auth": "user"},
    {"prefix": "/admin", "service": "up", "auth": "user", "roles": ["admin"]},
    {"prefix": "/write", "service": "up", "auth": "user", "scopes": ["write"]},
    {"prefix": "/mfa", "service": "up", "auth": "user", "min_assurance": "aal2"},
    {"prefix": "/telemetry", "service": "up", "auth": "device"},
    {"prefix": "/either", "service": "up", "auth": "user_or_device"},
    {
        "prefix": "/only-devices",
        "service": "up",
        "auth": "user_or_device",
        "resolvers": ["devices"],
    },
    {"prefix": "/rules-only", "auth": "user"},
    {"prefix": "/users-only", "service": "up", "auth": "user", "resolvers": ["stub"]},
]
TOKENS = {
    "alice": user("alice", scopes=["read"], roles=["ops"]),
    "root": user("root", scopes=["write"], roles=["admin"], assurance=Assurance.AAL2),
    "tired": user("tired", degraded=True),
    "d1": device("d1"),
    "d0": device("d0", trust=TrustLevel.UNKNOWN),
    "down": ServiceUnavailable("the session store is down"),
}


@pytest.fixture
async def gw() -> AsyncIterator[tuple[Gateway, RecordingUpstream]]:
    upstream = RecordingUpstream()
    gateway = make_gateway(ROUTES, edge=stub_edge(**TOKENS), upstream=upstream)
    yield gateway, upstream
    await gateway.aclose()


def auth(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Stub {token}".encode())]


def dev(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-device", token.encode())]


@pytest.mark.parametrize(
    ("path", "headers", "status", "reason"),
    [
        ("/open/x", [], 200, None),
        ("/open/x", auth("alice"), 200, None),
        ("/open/x", auth("mallory"), 401, "stub_unknown"),  # a bad credential is not ignored
        ("/public/x", auth("mallory"), 200, None),  # unless the route says so
        ("/me", [], 401, "credential_missing"),
        ("/me", auth("mallory"), 401, "stub_unknown"),
        ("/me", dev("d1"), 401, "user_required"),
        ("/me", auth("alice"), 200, None),
        ("/admin", auth("alice"), 403, "missing_roles"),
        ("/admin", auth("root"), 200, None),
        ("/write", auth("alice"), 403, "missing_scopes"),
        ("/mfa", auth("alice"), 403, "insufficient_assurance"),
        ("/mfa", auth("root"), 200, None),
        ("/telemetry", auth("alice"), 401, "device_required"),
        ("/telemetry", dev("d0"), 403, "insufficient_device_trust"),
        ("/telemetry", dev("d1"), 200, None),
        ("/either", dev("d1"), 200, None),
        ("/either", auth("alice"), 200, None),
        ("/either", [], 401, "credential_missing"),
        ("/only-devices", auth("alice"), 401, "credential_missing"),  # resolver not allowed
        ("/me", auth("down"), 503, "identity_unavailable"),  # an outage is never a 401
        ("/rules-only", auth("alice"), 404, "not_found"),
    ],
)
async def test_route_rules(
    gw: tuple[Gateway, RecordingUpstream],
    path: str,
    headers: list[tuple[bytes, bytes]],
    status: int,
    reason: str | None,
) -> None:
    gateway, upstream = gw
    answer = await call(gateway, "GET", path, headers)
    assert answer.status == status, answer.body
    if reason is None:
        assert len(upstream.requests) == 1
        return
    assert upstream.requests == []
    body = answer.json()
    assert set(body) == {"error", "message", "detail"}
    assert body["detail"] == [{"reason": reason}]
    assert answer.header("content-type") == "application/json"
    if status == 401:
        assert body["error"] == "unauthenticated"
        assert answer.header("www-authenticate") == "Bearer"
    if status == 403:
        assert body["error"] == "forbidden"


async def test_user_and_device_in_one_passport(gw: tuple[Gateway, RecordingUpstream]) -> None:
    gateway, upstream = gw
    answer = await call(gateway, "GET", "/either", [*auth("alice"), *dev("d1")])
    assert answer.status == 200
    p = passport_of(upstream.requests[0].headers)
    assert p.user is not None
    assert p.user.subject == "alice"
    assert p.device is not None
    assert p.device.id == "d1"


async def test_credentials_of_resolvers_a_route_does_not_use_stay_at_the_edge_too(
    gw: tuple[Gateway, RecordingUpstream],
) -> None:
    gateway, upstream = gw
    answer = await call(gateway, "GET", "/users-only", [*auth("alice"), *dev("d1")])
    assert answer.status == 200
    (seen,) = upstream.requests
    assert passport_of(seen.headers).device is None  # not allowed to authenticate here
    names = {k for k, _ in seen.headers}
    assert b"x-device" not in names
    assert b"authorization" not in names


async def test_degraded_passports_flow_through(gw: tuple[Gateway, RecordingUpstream]) -> None:
    gateway, upstream = gw
    answer = await call(gateway, "GET", "/me", auth("tired"))
    assert answer.status == 200
    assert passport_of(upstream.requests[0].headers).degraded


async def test_each_request_gets_its_own_transaction(
    gw: tuple[Gateway, RecordingUpstream],
) -> None:
    gateway, upstream = gw
    for _ in range(2):
        await call(gateway, "GET", "/me", auth("alice"))
    txns = {passport_of(r.headers).txn for r in upstream.requests}
    assert len(txns) == 2


# -- real resolvers --------------------------------------------------------------------------

SECRET = "j" * 48


def jwt_gateway(tmp_path: Path) -> tuple[Gateway, RecordingUpstream]:
    config = parse_config(
        {
            "services": {"up": {"app": "m:svc", "port": 9100}},
            "identity": {
                "passport": {"keys": {"p1": "env:PK"}, "active": "p1"},
                "jwt": {
                    "issuers": {
                        "corp": {
                            "issuer": "https://corp.example",
                            "audiences": ["fleet"],
                            "algorithms": ["HS256"],
                            "hmac_secret": "env:JWT_SECRET",
                        }
                    }
                },
            },
            "gateway": {
                "routes": [{"prefix": "/", "service": "up", "auth": "user", "scopes": ["read"]}]
            },
        },
        root=str(tmp_path),
    )
    upstream = RecordingUpstream()
    env = {"PK": "a" * 43, "JWT_SECRET": SECRET}
    return Gateway.from_config(config, env=env, upstream=upstream), upstream


def token(**over: Any) -> str:
    claims = {
        "iss": "https://corp.example",
        "aud": "fleet",
        "sub": "user-7",
        "exp": int(time.time()) + 300,
        "scope": "read write",
        **over,
    }
    return pyjwt.encode(claims, SECRET, algorithm="HS256")


async def test_a_real_jwt(tmp_path: Path) -> None:
    gateway, upstream = jwt_gateway(tmp_path)
    answer = await call(gateway, "GET", "/x", [(b"authorization", f"Bearer {token()}".encode())])
    assert answer.status == 200, answer.body
    headers = upstream.requests[0].headers
    assert b"authorization" not in dict(headers)
    tokens = [v for k, v in headers if k == b"garrison-passport"]
    assert len(tokens) == 1
    await gateway.aclose()


@pytest.mark.parametrize(
    ("value", "status", "reason"),
    [
        (b"Bearer", 401, "credential_missing"),
        (b"Bearer ", 401, "credential_missing"),
        (b"Basic dXNlcjpwYXNz", 401, "credential_missing"),
        (b"Bearer a.b", 401, "credential_missing"),  # not a JWS: no resolver takes it
        (b"Bearer a.b.c", 401, None),
        (b"Bearer ..", 401, None),
        (b"Bearer \xff\xfe.\x00.x", 401, None),
        (b"Bearer " + b"e" * 5000 + b".e.e", 401, None),  # oversized: refused before crypto
        (b"Bearer " + b"e" * 20000, 431, "headers_too_large"),
        (b"bEaReR " + b"x.y.z, Bearer a.b.c", 401, None),
    ],
)
async def test_malformed_authorization(
    tmp_path: Path, value: bytes, status: int, reason: str | None
) -> None:
    gateway, upstream = jwt_gateway(tmp_path)
    answer = await call(gateway, "GET", "/x", [(b"authorization", value)])
    assert answer.status == status, answer.body
    (detail,) = answer.json()["detail"]
    if reason is not None:
        assert detail["reason"] == reason
    assert upstream.requests == []
    await gateway.aclose()


async def test_expired_and_wrong_audience_tokens(tmp_path: Path) -> None:
    gateway, _ = jwt_gateway(tmp_path)
    for tok, reason in [
        (token(exp=int(time.time()) - 3600), "expired"),
        (token(aud="other"), "wrong_audience"),
        (token(scope="write"), "missing_scopes"),
    ]:
        answer = await call(gateway, "GET", "/x", [(b"authorization", f"Bearer {tok}".encode())])
        assert answer.json()["detail"] == [{"reason": reason}]
    await gateway.aclose()


# -- session cookies: renewal, service actions, degraded, outages -----------------------------

COOKIE = "__Host-garrison-session"


class FlakyStore(MemorySessionStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_touch = False
        self.fail_get = False

    async def get(self, session_id: str) -> Session | None:
        if self.fail_get:
            raise StoreUnavailable("store down")
        return await super().get(session_id)

    async def touch(self, session: Session, at: float) -> bool:
        if self.fail_touch:
            raise StoreUnavailable("store down")
        return await super().touch(session, at)


@pytest.fixture
async def sessions() -> AsyncIterator[tuple[Gateway, RecordingUpstream, Any]]:
    clock = FakeClock(wall_start=time.time())
    store = FlakyStore()
    resolver = SessionCookieResolver(
        SessionCookieConfig(
            keys={"k1": "env:K"}, active_key="k1", idle_timeout=600.0, lifetime=7200.0
        ),
        keys={"k1": os.urandom(32)},
        store=store,
        clock=clock,
    )
    edge = IdentityEdge([resolver], PassportCodec(KEYRING, clock=clock))
    upstream = RecordingUpstream(
        lambda r: (
            (200, [(b"garrison-identity-action", r.url.rsplit("/", 1)[1].encode())], b"{}")
            if "/action/" in r.url
            else (200, [], b"{}")
        )
    )
    routes = [{"prefix": "/", "service": "up", "auth": "user"}]
    gateway = make_gateway(routes, edge=edge, upstream=upstream, cookie_secure=False)
    yield gateway, upstream, (resolver, store, clock)
    await gateway.aclose()


def cookie(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"theme=dark; {COOKIE}={value}".encode())]


def seen_passport(upstream: RecordingUpstream, clock: FakeClock) -> Passport:
    (token,) = [v for k, v in upstream.requests[-1].headers if k == b"garrison-passport"]
    return PassportCodec(KEYRING, clock=clock).verify(token.decode())


async def test_sliding_renewal_sets_the_refreshed_cookie(sessions: Any) -> None:
    gateway, upstream, (resolver, _, clock) = sessions
    login = await resolver.login("alice", roles=["ops"])
    answer = await call(gateway, "GET", "/x", cookie(login.cookie))
    assert answer.status == 200
    assert answer.headers_named("set-cookie") == []  # too early to renew
    seen = dict(upstream.requests[-1].headers)
    assert seen[b"cookie"] == b"theme=dark"  # the session cookie stays at the edge
    p = seen_passport(upstream, clock)
    assert p.user is not None
    assert p.user.subject == "alice"
    clock.advance(400)  # past half the idle timeout
    answer = await call(gateway, "GET", "/x", cookie(login.cookie))
    (set_cookie,) = answer.headers_named("set-cookie")
    name, _, rest = set_cookie.partition("=")
    value, _, attributes = rest.partition("; ")
    assert name == COOKIE
    assert value != login.cookie
    assert attributes.startswith("Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=")
    # the renewed cookie works, after the old one's idle deadline
    clock.advance(400)
    answer = await call(gateway, "GET", "/x", cookie(value))
    assert answer.status == 200


async def test_services_ask_for_renewal_and_logout(sessions: Any) -> None:
    gateway, _, (resolver, _, clock) = sessions
    login = await resolver.login("alice")
    clock.advance(30)
    answer = await call(gateway, "POST", "/action/renew-session", cookie(login.cookie))
    assert answer.status == 200
    assert "garrison-identity-action" not in dict(answer.headers)
    (renewed,) = answer.headers_named("set-cookie")
    assert renewed.startswith(f"{COOKIE}=v1.")
    answer = await call(gateway, "POST", "/action/end-session", cookie(login.cookie))
    (cleared,) = answer.headers_named("set-cookie")
    assert cleared.startswith(f"{COOKIE}=; ")
    assert "Max-Age=0" in cleared
    answer = await call(gateway, "GET", "/x", cookie(login.cookie))
    assert (answer.status, answer.json()["detail"]) == (401, [{"reason": "session_revoked"}])
    answer = await call(gateway, "GET", "/action/format-disk", cookie(login.cookie))
    assert answer.status == 401  # unknown actions do nothing; the request was refused anyway


async def test_renewal_failure_is_degraded_not_a_logout(sessions: Any) -> None:
    gateway, upstream, (resolver, store, clock) = sessions
    login = await resolver.login("alice")
    clock.advance(400)
    store.fail_touch = True
    answer = await call(gateway, "GET", "/x", cookie(login.cookie))
    assert answer.status == 200
    assert answer.headers_named("set-cookie") == []
    assert seen_passport(upstream, clock).degraded
    store.fail_get = True
    answer = await call(gateway, "GET", "/x", cookie(login.cookie))
    assert answer.status == 503
    assert answer.json()["detail"] == [{"reason": "identity_unavailable"}]


async def test_conflicting_lengths_are_a_400(gw: tuple[Gateway, RecordingUpstream]) -> None:
    gateway, upstream = gw
    for lengths in ([b"3", b"4"], [b"-1"], [b"3, 3"]):
        headers = [*auth("alice"), *((b"content-length", n) for n in lengths)]
        answer = await call(gateway, "POST", "/me", headers, b"abc")
        assert answer.status == 400, answer.body
        assert answer.json()["detail"] == [{"reason": "bad_length"}]
    assert upstream.requests == []
