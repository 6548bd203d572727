"""RFC 7662 introspection against a real tiny server on 127.0.0.1 that counts its calls."""

from __future__ import annotations

import asyncio
import base64
import socket
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web

from garrison.core import ConfigError, FakeClock, ServiceUnavailable, Unauthenticated
from garrison.identity._introspect import IntrospectionConfig, IntrospectionResolver
from garrison.identity._model import CredentialKind, RequestCredentials, Resolution

CLIENT_ID = "edge gateway"  # a space: must be form-encoded inside Basic auth
CLIENT_SECRET = "s3cr:et/+"


@dataclass
class AuthServer:
    """The token table and the log of an introspection endpoint."""

    url: str = ""
    tokens: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[dict[str, str]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    status: int = 200
    raw: bytes | None = None
    delay: float = 0.0
    gate: asyncio.Event | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def answer(self, form: dict[str, str]) -> dict[str, Any]:
        return self.tokens.get(form.get("token", ""), {"active": False})


@pytest.fixture
async def server() -> AsyncIterator[AuthServer]:
    state = AuthServer()

    async def introspect(request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        state.calls.append(form)
        state.auth_headers.append(request.headers.get("Authorization"))
        state.arrived.set()
        if state.gate is not None:
            await state.gate.wait()
        if state.delay:
            await asyncio.sleep(state.delay)
        if state.raw is not None:
            return web.Response(body=state.raw, status=state.status)
        return web.json_response(state.answer(form), status=state.status)

    app = web.Application()
    app.router.add_post("/introspect", introspect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/introspect"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make(
    server: AuthServer, clock: FakeClock
) -> AsyncIterator[Callable[..., IntrospectionResolver]]:
    made: list[IntrospectionResolver] = []

    def factory(**kw: Any) -> IntrospectionResolver:
        base: dict[str, Any] = {
            "endpoint": server.url,
            "client_id": CLIENT_ID,
            "client_secret": "env:SECRET",
        }
        base.update(kw)
        r = IntrospectionResolver(
            IntrospectionConfig(**base), client_secret=CLIENT_SECRET, clock=clock
        )
        made.append(r)
        return r

    yield factory
    for r in made:
        await r.aclose()


def active(clock: FakeClock, **kw: Any) -> dict[str, Any]:
    now = clock.time()
    body: dict[str, Any] = {
        "active": True,
        "sub": "user-1",
        "scope": "read write read",
        "client_id": "app-1",
        "iss": "https://as.example",
        "aud": ["api", "other"],
        "iat": now - 10,
        "exp": now + 600,
        "username": "alice@example.com",
    }
    body.update(kw)
    return body


async def resolve(r: IntrospectionResolver, token: str) -> Resolution:
    cred = r.find(RequestCredentials(headers={"authorization": f"Bearer {token}"}))
    assert cred is not None
    return await r.resolve(cred)


async def reason(r: IntrospectionResolver, token: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await resolve(r, token)
    return info.value.reason


# -- the protocol -------------------------------------------------------------------------------


async def test_active_token_is_mapped(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["tok-1"] = active(clock)
    r = make(issuer="https://as.example", audience="api")
    res = await resolve(r, "tok-1")
    assert res.user is not None
    assert res.user.subject == "user-1"
    assert res.user.scopes == ("read", "write")
    assert res.auth.credential is CredentialKind.OPAQUE
    assert res.auth.issuer == "https://as.example"
    assert res.auth.method == "oauth2"
    assert res.auth.at == clock.time() - 10
    assert res.expires_at == clock.time() + 600
    assert "alice" not in repr(res)  # no PII in what the edge keeps
    (form,) = server.calls
    assert form == {"token": "tok-1", "token_type_hint": "access_token"}
    (auth,) = server.auth_headers
    assert auth is not None
    user, _, pw = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
    assert urllib.parse.unquote_plus(user) == CLIENT_ID
    assert urllib.parse.unquote_plus(pw) == CLIENT_SECRET


async def test_client_secret_post(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["t"] = active(clock)
    await resolve(make(auth_method="client_secret_post"), "t")
    assert server.calls[0]["client_id"] == CLIENT_ID
    assert server.calls[0]["client_secret"] == CLIENT_SECRET
    assert server.auth_headers == [None]


async def test_client_credentials_token_acts_for_its_client(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["t"] = active(clock, sub=None, scope=None, iss=None)
    res = await resolve(make(), "t")
    assert res.user is not None
    assert res.user.subject == "client:app-1"
    assert res.user.scopes == ()
    assert res.auth.issuer == server.url


async def test_token_without_exp_is_bounded_by_the_cache_ttl(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["t"] = active(clock, exp=None)
    res = await resolve(make(cache_max_ttl=45.0), "t")
    assert res.expires_at == clock.time() + 45


@pytest.mark.parametrize(
    ("answer", "config", "why"),
    [
        ({"active": False}, {}, "token_inactive"),
        ({"active": "true"}, {}, "token_inactive"),
        ({"exp": -31.0}, {}, "token_expired"),
        ({"nbf": 31.0}, {}, "token_not_yet_valid"),
        ({"iss": "https://evil.example"}, {"issuer": "https://as.example"}, "wrong_issuer"),
        ({"aud": "other"}, {"audience": "api"}, "wrong_audience"),
        ({"aud": None}, {"audience": "api"}, "wrong_audience"),
        ({"sub": None, "client_id": None}, {}, "no_subject"),
        ({"exp": "tomorrow"}, {}, "malformed_token_info"),
        ({"sub": 42}, {}, "malformed_token_info"),
        ({"sub": "x" * 2000}, {}, "malformed_token_info"),
        ({"scope": ["read"]}, {}, "malformed_token_info"),
    ],
)
async def test_rejections(
    make: Callable[..., IntrospectionResolver],
    server: AuthServer,
    clock: FakeClock,
    answer: dict[str, Any],
    config: dict[str, Any],
    why: str,
) -> None:
    body = active(clock)
    for k in ("exp", "nbf"):
        if isinstance(answer.get(k), float):
            answer = {**answer, k: clock.time() + answer[k]}
    body.update(answer)
    server.tokens["t"] = {k: v for k, v in body.items() if v is not None}
    assert await reason(make(**config), "t") == why


async def test_leeway_is_applied_to_exp_and_nbf(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    now = clock.time()
    server.tokens["a"] = active(clock, exp=now - 29)
    server.tokens["b"] = active(clock, nbf=now + 29)
    r = make()
    await resolve(r, "a")
    await resolve(r, "b")


# -- where tokens are found ---------------------------------------------------------------------


def test_find(make: Callable[..., IntrospectionResolver]) -> None:
    r = make(exclude_prefixes=["gk_"])

    def found(auth: str) -> str | None:
        cred = r.find(RequestCredentials(headers={"authorization": auth}))
        return None if cred is None else cred.value

    assert found("Bearer abc.def-ghi") == "abc.def-ghi"
    assert found("bearer  abc ") == "abc"
    assert found("Bearer eyJhbGc.eyJzdWI.c2ln") is None  # JWT-shaped: the JWT resolver's
    assert found("Bearer gk_live_x_y") is None
    assert found("Basic abc") is None
    assert found("Bearer ") is None
    assert r.find(RequestCredentials(headers={})) is None
    jwt_too = make(accept_jwt_shaped=True)
    assert jwt_too.find(RequestCredentials(headers={"authorization": "Bearer a.b.c"})) is not None


@pytest.mark.parametrize("token", ["a b", "tok\x00", "tök", "x" * 5000])
async def test_malformed_tokens_never_reach_the_server(
    make: Callable[..., IntrospectionResolver], server: AuthServer, token: str
) -> None:
    r = make()
    cred = r.find(RequestCredentials(headers={"authorization": "Bearer placeholder"}))
    assert cred is not None
    with pytest.raises(Unauthenticated) as info:
        await r.resolve(msgspec.structs.replace(cred, value=token))
    assert info.value.reason == "malformed_token"
    assert server.calls == []


# -- caching ------------------------------------------------------------------------------------


async def test_positive_cache_is_bounded_by_exp(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["t"] = active(clock, exp=clock.time() + 10)
    r = make(cache_max_ttl=60.0, leeway=0.0)
    for _ in range(5):
        await resolve(r, "t")
    assert len(server.calls) == 1
    clock.advance(10)
    assert await reason(r, "t") == "token_expired"  # asked again: the answer says expired
    assert len(server.calls) == 2


async def test_positive_cache_is_bounded_by_max_ttl(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["t"] = active(clock, exp=clock.time() + 3600)
    r = make(cache_max_ttl=30.0)
    await resolve(r, "t")
    clock.advance(29)
    await resolve(r, "t")
    assert len(server.calls) == 1
    clock.advance(1)
    server.tokens["t"] = {"active": False}  # revoked at the AS meanwhile
    assert await reason(r, "t") == "token_inactive"
    assert len(server.calls) == 2


async def test_negative_cache_is_short(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    r = make(negative_ttl=5.0)
    for _ in range(10):
        assert await reason(r, "nope") == "token_inactive"
    assert len(server.calls) == 1
    clock.advance(5)
    server.tokens["nope"] = active(clock)  # became valid: accepted within negative_ttl
    await resolve(r, "nope")
    assert len(server.calls) == 2


async def test_negative_cache_is_bounded(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["good"] = active(clock)
    r = make(negative_max_entries=3, cache_max_entries=10)
    await resolve(r, "good")
    for i in range(20):
        await reason(r, f"junk-{i}")
    assert r.cache.stats.negative_size == 3
    await resolve(r, "good")
    assert server.calls[-1]["token"] == "junk-19"  # good was served from the cache


async def test_concurrent_lookups_share_one_call(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["t"] = active(clock)
    server.gate = asyncio.Event()
    r = make()
    tasks = [asyncio.create_task(resolve(r, "t")) for _ in range(50)]
    await server.arrived.wait()
    server.gate.set()
    results = await asyncio.gather(*tasks)
    assert len(server.calls) == 1
    assert len({id(x) for x in results}) == 1


async def test_concurrent_lookups_of_a_bad_token_share_one_call(
    make: Callable[..., IntrospectionResolver], server: AuthServer
) -> None:
    server.gate = asyncio.Event()
    r = make()
    tasks = [asyncio.create_task(reason(r, "bad")) for _ in range(20)]
    await server.arrived.wait()
    server.gate.set()
    assert set(await asyncio.gather(*tasks)) == {"token_inactive"}
    assert len(server.calls) == 1


# -- the AS failing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "raw", "delay", "config", "text"),
    [
        (500, None, 0.0, {}, "status 500"),
        (401, None, 0.0, {}, "status 401"),
        (200, b"not json", 0.0, {}, "not JSON"),
        (200, b"[1, 2]", 0.0, {}, "not a JSON object"),
        (200, b'{"active": true, "pad": "' + b"x" * 5000 + b'"}', 0.0, {}, "exceeds"),
        (200, None, 1.0, {"timeout": 0.2}, "Timeout"),
    ],
)
async def test_as_failures_are_503_not_401(
    make: Callable[..., IntrospectionResolver],
    server: AuthServer,
    clock: FakeClock,
    status: int,
    raw: bytes | None,
    delay: float,
    config: dict[str, Any],
    text: str,
) -> None:
    server.tokens["t"] = active(clock)
    server.status, server.raw, server.delay = status, raw, delay
    r = make(max_response_bytes=4096, **config)
    with pytest.raises(ServiceUnavailable, match=text):
        await resolve(r, "t")
    assert r.cache.stats.negative_size == 0  # an outage is not remembered as a rejection


async def test_unreachable_as(clock: FakeClock) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = IntrospectionResolver(
        IntrospectionConfig(
            endpoint=f"http://127.0.0.1:{port}/x", client_id="c", client_secret="env:S"
        ),
        client_secret="s",
        clock=clock,
    )
    try:
        with pytest.raises(ServiceUnavailable, match="ConnectError"):
            await resolve(r, "t")
    finally:
        await r.aclose()


async def test_stale_answer_is_served_degraded_while_the_as_is_down(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["t"] = active(clock, exp=clock.time() + 3600)
    r = make(cache_max_ttl=60.0, stale_if_error=120.0)
    assert not (await resolve(r, "t")).degraded
    clock.advance(61)
    server.status = 503
    res = await resolve(r, "t")
    assert res.degraded
    assert res.user is not None
    assert res.user.subject == "user-1"
    clock.advance(120)  # beyond stale_if_error
    with pytest.raises(ServiceUnavailable):
        await resolve(r, "t")
    server.status = 200
    assert not (await resolve(r, "t")).degraded


async def test_stale_never_outlives_the_token(
    make: Callable[..., IntrospectionResolver], server: AuthServer, clock: FakeClock
) -> None:
    server.tokens["t"] = active(clock, exp=clock.time() + 70)
    r = make(cache_max_ttl=60.0, stale_if_error=300.0)
    await resolve(r, "t")
    clock.advance(71)
    server.status = 503
    with pytest.raises(ServiceUnavailable):
        await resolve(r, "t")


# -- configuration ------------------------------------------------------------------------------


async def test_from_config_reads_the_secret(server: AuthServer, clock: FakeClock) -> None:
    server.tokens["t"] = active(clock)
    r = IntrospectionResolver.from_config(
        {"endpoint": server.url, "client_id": "c", "client_secret": "env:S"},
        env={"S": "from-env"},
        clock=clock,
    )
    try:
        await resolve(r, "t")
        assert server.auth_headers[0] == "Basic " + base64.b64encode(b"c:from-env").decode()
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    ("extra", "env", "key"),
    [
        ({"endpoint": "http://as.example/introspect"}, {"S": "x"}, "endpoint"),
        ({"endpoint": "ftp://as.example/"}, {"S": "x"}, "endpoint"),
        ({"endpoint": "https:///nohost"}, {"S": "x"}, "endpoint"),
        ({"client_id": ""}, {"S": "x"}, "client_id"),
        ({"client_secret": "plain"}, {}, "client_secret"),
        ({}, {}, "client_secret"),
        ({"auth_method": "private_key_jwt"}, {"S": "x"}, "auth_method"),
        ({"timeout": 0}, {"S": "x"}, "timeout"),
        ({"leeway": 301}, {"S": "x"}, "leeway"),
        ({"negative_ttl": 61}, {"S": "x"}, "negative_ttl"),
        ({"cache_max_ttl": 0}, {"S": "x"}, "cache_max_ttl"),
        ({"max_response_bytes": 0}, {"S": "x"}, "max_response_bytes"),
        ({"cache_max_entries": True}, {"S": "x"}, "cache_max_entries"),
        ({"stale_if_error": -1}, {"S": "x"}, "stale_if_error"),
    ],
)
def test_config_errors_name_the_key(extra: dict[str, Any], env: dict[str, str], key: str) -> None:
    raw = {"endpoint": "https://as.example/i", "client_id": "c", "client_secret": "env:S"}
    raw.update(extra)
    with pytest.raises(ConfigError) as info:
        IntrospectionResolver.from_config(raw, env=env)
    assert info.value.key == f"identity.introspection.{key}"


async def test_insecure_http_needs_opting_in() -> None:
    cfg = IntrospectionConfig(
        endpoint="http://as.internal/i",
        client_id="c",
        client_secret="env:S",
        allow_insecure_http=True,
    )
    assert cfg.endpoint.startswith("http://")
