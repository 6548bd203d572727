"""The auth endpoints a proxy in front calls: nginx ``auth_request`` and Envoy ``ext_authz``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from garrison.gateway import Gateway, RecordingUpstream
from garrison.identity import IdentityAction

from .conftest import Answer, call, codec, make_gateway, stub_edge, user

ROUTES: list[dict[str, Any]] = [
    {"prefix": "/api", "auth": "user", "scopes": ["read"]},
    {"prefix": "/api/admin", "auth": "user", "roles": ["admin"]},
    {"prefix": "/public", "auth": "anonymous"},
    {"prefix": "/ro", "auth": "user", "methods": ["GET"]},
]
RENEW = IdentityAction(kind="set_cookie", name="s", value="fresh", max_age=60)
TOKENS = {
    "alice": user("alice", scopes=["read"]),
    "renewing": user("bob", scopes=["read"], actions=(RENEW,)),
}


@pytest.fixture
async def gw() -> AsyncIterator[Gateway]:
    gateway = make_gateway(ROUTES, edge=stub_edge(**TOKENS), upstream=RecordingUpstream())
    yield gateway
    await gateway.aclose()


async def nginx(
    gateway: Gateway,
    uri: str | None,
    method: str | None = "GET",
    token: str | None = "alice",
    extra: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = ("127.0.0.1", 40000),
) -> Answer:
    headers = list(extra or [])
    if uri is not None:
        headers.append((b"x-original-uri", uri.encode()))
    if method is not None:
        headers.append((b"x-original-method", method.encode()))
    if token is not None:
        headers.append((b"authorization", f"Stub {token}".encode()))
    return await call(gateway, "GET", "/_garrison/auth", headers, client=client)


def passport(answer: Answer) -> Any:
    token = answer.header("garrison-passport")
    assert token is not None
    return codec().verify(token)


async def test_allowed_with_the_passport(gw: Gateway) -> None:
    answer = await nginx(gw, "/api/sites?x=1", extra=[(b"garrison-passport", b"forged")])
    assert answer.status == 200
    assert answer.headers_named("garrison-passport") != ["forged"]
    p = passport(answer)
    assert p.user.subject == "alice"


async def test_identity_actions_come_back_as_cookies(gw: Gateway) -> None:
    answer = await nginx(gw, "/api/x", token="renewing")
    assert answer.status == 200
    assert answer.headers_named("set-cookie") == [
        "s=fresh; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
    ]


@pytest.mark.parametrize(
    ("uri", "method", "token", "status", "reason"),
    [
        ("/api/x", "GET", None, 401, "credential_missing"),
        ("/api/x", "GET", "mallory", 401, "stub_unknown"),
        ("/api/admin/x", "GET", "alice", 403, "missing_roles"),
        ("/public/x", "GET", None, 200, None),
        ("/ro/x", "POST", "alice", 403, "method_not_allowed"),
        ("/elsewhere", "GET", "alice", 403, "not_found"),  # nginx: only 401 and 403 deny
        ("/api/../admin", "GET", "alice", 403, "bad_path"),
        ("/api/%2e%2e/admin", "GET", "alice", 403, "bad_path"),
        ("/api/%ff", "GET", "alice", 403, "bad_path"),
        (None, "GET", "alice", 400, "missing_original_uri"),
    ],
)
async def test_decisions(
    gw: Gateway, uri: str | None, method: str, token: str | None, status: int, reason: str | None
) -> None:
    answer = await nginx(gw, uri, method, token)
    assert answer.status == status, answer.body
    if reason is not None:
        assert answer.json()["detail"] == [{"reason": reason}]
        assert answer.header("garrison-passport") is None


async def test_only_the_proxy_may_ask(gw: Gateway) -> None:
    for client in (("10.1.2.3", 5000), None):
        answer = await nginx(gw, "/api/x", client=client)
        assert answer.status == 403
        assert answer.json()["detail"] == [{"reason": "untrusted_client"}]
    open_to_all = make_gateway(ROUTES, edge=stub_edge(**TOKENS), auth_clients=[])
    answer = await nginx(open_to_all, "/api/x", client=("10.1.2.3", 5000))
    assert answer.status == 200


async def test_envoy_ext_authz(gw: Gateway) -> None:
    answer = await call(
        gw, "POST", "/_garrison/authz/api/devices/7", [(b"authorization", b"Stub alice")]
    )
    assert answer.status == 200
    assert passport(answer).user.subject == "alice"
    answer = await call(gw, "POST", "/_garrison/authz/ro/x", [(b"authorization", b"Stub alice")])
    assert answer.status == 403
    answer = await call(gw, "GET", "/_garrison/authz", [])
    assert answer.status == 403  # "/" has no route


async def test_can_be_turned_off() -> None:
    gateway = make_gateway(ROUTES, edge=stub_edge(**TOKENS), auth_endpoint=False)
    answer = await nginx(gateway, "/api/x")
    assert answer.status == 404
