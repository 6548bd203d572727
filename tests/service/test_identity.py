"""The passport on a service: verification, handler parameters, requirements, forwarding."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from garrison.core import ConfigError, FakeClock, Unauthenticated, parse_config
from garrison.identity import (
    Assurance,
    Authentication,
    CredentialKind,
    DeviceIdentity,
    Passport,
    Requires,
    Resolution,
    TrustLevel,
    UserIdentity,
)
from garrison.identity._keys import Keyring, PassportKey
from garrison.identity._passport import PASSPORT_HEADER, PassportCodec
from garrison.identity._verify import PassportVerifier, load_passport_codec
from garrison.service import MockTransport, Service, current_passport

SECRET = b"s" * 32
OTHER_SECRET = b"o" * 32


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.hmac({"k1": SECRET}, active="k1")


@pytest.fixture
def codec(keyring: Keyring, clock: FakeClock) -> PassportCodec:
    return PassportCodec(keyring, clock=clock)


def resolution(
    *,
    subject: str | None = "u-1",
    scopes: tuple[str, ...] = ("fleet:read",),
    roles: tuple[str, ...] = ("operator",),
    assurance: Assurance = Assurance.AAL1,
    device: DeviceIdentity | None = None,
    degraded: bool = False,
    expires_at: float = 2_000_000_000.0,
) -> Resolution:
    kind = CredentialKind.JWT if subject else CredentialKind.ANONYMOUS
    return Resolution(
        auth=Authentication(credential=kind, issuer="https://idp", assurance=assurance),
        expires_at=expires_at,
        user=None if subject is None else UserIdentity(subject, roles=roles, scopes=scopes),
        device=device,
        degraded=degraded,
    )


def mint(codec: PassportCodec, *, txn: str | None = None, **kw: Any) -> str:
    return codec.mint_for(resolution(**kw), txn=txn)[1]


async def call(
    svc: Service, method: str, url: str, token: str | None = None, **kw: Any
) -> httpx.Response:
    headers = dict(kw.pop("headers", {}))
    if token is not None:
        headers[PASSPORT_HEADER] = token
    transport = httpx.ASGITransport(app=svc.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        return await client.request(method, url, headers=headers, **kw)


def reason(r: httpx.Response) -> str:
    detail: list[dict[str, Any]] = r.json()["detail"]
    value: str = detail[0]["reason"]
    return value


class View(msgspec.Struct):
    subject: str | None
    txn: str
    scopes: list[str]
    degraded: bool


def view(p: Passport | None) -> View | None:
    if p is None:
        return None
    user = p.user
    return View(
        user.subject if user else None, p.txn, list(user.scopes) if user else [], p.degraded
    )


@pytest.fixture
def svc(codec: PassportCodec) -> Service:
    s = Service("orders")
    s.identity.use(codec)

    @s.get("/me")
    async def me(passport: Passport) -> View | None:
        return view(passport)

    @s.get("/maybe")
    async def maybe(passport: Passport | None) -> dict[str, Any]:
        return {"passport": view(passport), "current": view(current_passport())}

    @s.get("/open")
    async def open_route() -> dict[str, str]:
        return {"ok": "yes"}

    return s


# -- the passport as a handler parameter -----------------------------------------------------


async def test_a_handler_gets_the_verified_passport(svc: Service, codec: PassportCodec) -> None:
    token = mint(codec, txn="txn-1", scopes=("fleet:read", "fleet:write"))
    r = await call(svc, "GET", "/me", token)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "subject": "u-1",
        "txn": "txn-1",
        "scopes": ["fleet:read", "fleet:write"],
        "degraded": False,
    }


async def test_an_absent_passport_is_a_401_where_one_is_required(svc: Service) -> None:
    r = await call(svc, "GET", "/me")
    assert r.status_code == 401
    assert r.json()["error"] == "unauthenticated"
    assert reason(r) == "passport_required"
    assert r.headers["www-authenticate"]


async def test_optional_and_anonymous_routes_need_no_passport(
    svc: Service, codec: PassportCodec
) -> None:
    r = await call(svc, "GET", "/maybe")
    assert r.json() == {"passport": None, "current": None}
    assert (await call(svc, "GET", "/open")).json() == {"ok": "yes"}
    r = await call(svc, "GET", "/maybe", mint(codec, txn="t-2"))
    assert r.json()["passport"]["txn"] == r.json()["current"]["txn"] == "t-2"


async def test_an_anonymous_passport_is_a_passport(svc: Service, codec: PassportCodec) -> None:
    r = await call(svc, "GET", "/me", mint(codec, subject=None, txn="anon"))
    assert r.status_code == 200
    assert r.json()["subject"] is None


async def test_a_sync_handler_gets_the_passport_too(svc: Service, codec: PassportCodec) -> None:
    @svc.get("/sync")
    def sync(passport: Passport) -> str:
        return passport.txn

    assert (await call(svc, "GET", "/sync", mint(codec, txn="sync-1"))).json() == "sync-1"


# -- bad passports: always a 401, on every route ---------------------------------------------


def flip(token: str, i: int) -> str:
    c = token[i]
    return token[:i] + ("A" if c != "A" else "B") + token[i + 1 :]


def bad_tokens(codec: PassportCodec, clock: FakeClock) -> dict[str, tuple[str, set[str]]]:
    good = mint(codec)
    other_secret = PassportCodec(Keyring.hmac({"k1": OTHER_SECRET}, active="k1"), clock=clock)
    other_kid = PassportCodec(Keyring.hmac({"k9": SECRET}, active="k9"), clock=clock)
    ed = PassportCodec(
        Keyring.ed25519(private_keys={"k1": Ed25519PrivateKey.generate()}, active="k1"),
        clock=clock,
    )
    return {
        "forged with another secret": (mint(other_secret), {"bad_signature"}),
        "replayed from another key": (mint(other_kid), {"unknown_key"}),
        "another algorithm under a known kid": (mint(ed), {"unknown_key"}),
        "tampered body": (flip(good, len(good) // 2), {"bad_signature"}),
        "tampered tag": (flip(good, len(good) - 5), {"bad_signature"}),
        "truncated": (good[:-12], {"bad_signature", "malformed"}),
        "header only": (good[:10], {"malformed"}),
        "garbage": ("not-a-passport", {"malformed"}),
        "padded": (good + "=", {"malformed"}),
        "oversized": ("A" * 5000, {"too_large"}),
        "a JWT instead": ("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", {"malformed"}),
    }


@pytest.mark.parametrize("route", ["/me", "/maybe", "/open"])
async def test_a_bad_passport_is_a_401_naming_the_reason_on_every_route(
    svc: Service, codec: PassportCodec, clock: FakeClock, route: str
) -> None:
    for name, (token, reasons) in bad_tokens(codec, clock).items():
        r = await call(svc, "GET", route, token)
        assert r.status_code == 401, (name, r.text)
        body = r.json()
        assert body["error"] == "unauthenticated"
        assert body["detail"][0]["reason"] in reasons, (name, body)
        assert body["detail"][0]["loc"] == ["header", PASSPORT_HEADER]


async def test_an_expired_passport_is_a_401(
    svc: Service, codec: PassportCodec, clock: FakeClock
) -> None:
    token = mint(codec)
    assert (await call(svc, "GET", "/me", token)).status_code == 200  # now it is cached
    clock.advance(codec.ttl + codec.leeway + 0.5)
    r = await call(svc, "GET", "/open", token)
    assert r.status_code == 401
    assert reason(r) == "expired"


async def test_a_passport_from_the_future_is_a_401(
    svc: Service, codec: PassportCodec, clock: FakeClock
) -> None:
    ahead = FakeClock(wall_start=clock.time() + 60)  # the edge's clock, beyond the leeway
    token = mint(PassportCodec(codec.keyring, clock=ahead))
    r = await call(svc, "GET", "/me", token)
    assert (r.status_code, reason(r)) == (401, "not_yet_valid")


async def test_two_passport_headers_are_a_401(svc: Service, codec: PassportCodec) -> None:
    token = mint(codec)
    transport = httpx.ASGITransport(app=svc.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
        r = await client.get("/open", headers=[(PASSPORT_HEADER, token), (PASSPORT_HEADER, token)])
    assert (r.status_code, reason(r)) == (401, "malformed")


async def test_probes_ignore_the_passport(svc: Service) -> None:
    r = await call(svc, "GET", "/healthz", "garbage")
    assert r.status_code == 200


async def test_a_retired_key_stops_even_a_cached_passport(
    svc: Service, codec: PassportCodec, keyring: Keyring
) -> None:
    token = mint(codec)
    assert (await call(svc, "GET", "/me", token)).status_code == 200
    keyring.add(PassportKey.hmac("k2", OTHER_SECRET))
    keyring.activate("k2")
    assert (await call(svc, "GET", "/me", token)).status_code == 200  # overlap: still fine
    keyring.retire("k1")
    r = await call(svc, "GET", "/me", token)
    assert (r.status_code, reason(r)) == (401, "unknown_key")
    assert (await call(svc, "GET", "/me", mint(codec))).status_code == 200


async def test_rejections_are_counted_on_the_route(svc: Service, codec: PassportCodec) -> None:
    @svc.get("/admin", requires=Requires(roles=("admin",)))
    async def admin() -> None: ...

    await call(svc, "GET", "/admin", mint(codec))
    labels = {"service": "orders", "method": "GET", "route": "/admin", "outcome": "client_error"}
    registry = svc.metrics.registry
    assert registry.get_sample_value("garrison_http_requests_total", labels) == 1.0


# -- route requirements ----------------------------------------------------------------------


@pytest.fixture
def guarded(svc: Service) -> Service:
    @svc.post("/dispatch", requires=Requires(scopes=("fleet:write", "fleet:admin")))
    async def dispatch(body: dict[str, int]) -> dict[str, int]:
        return body

    @svc.get("/roles", requires=Requires(roles=("operator", "admin")))
    async def roles() -> str:
        return "ok"

    @svc.get("/mfa", requires=Requires(min_assurance=Assurance.AAL2))
    async def mfa() -> str:
        return "ok"

    @svc.get("/device", requires=Requires(user=False, device=True))
    async def device(passport: Passport) -> str:
        assert passport.device is not None
        return passport.device.id

    @svc.get("/attested", requires=Requires(user=False, min_device_trust=TrustLevel.ATTESTED))
    async def attested() -> str:
        return "ok"

    @svc.get("/anyone", requires=Requires(user=False))
    async def anyone() -> str:
        return "ok"

    @svc.delete("/sensitive", requires=Requires(allow_degraded=False))
    async def sensitive() -> str:
        return "ok"

    @svc.get("/tolerant", requires=Requires())
    async def tolerant(passport: Passport) -> bool:
        return passport.degraded

    return svc


async def test_missing_scopes_are_a_403_naming_them(guarded: Service, codec: PassportCodec) -> None:
    r = await call(guarded, "POST", "/dispatch", mint(codec, scopes=("fleet:write",)), json={})
    assert r.status_code == 403
    body = r.json()
    assert body["error"] == "forbidden"
    assert body["detail"] == [{"reason": "missing_scopes", "missing": ["fleet:admin"]}]
    assert "fleet:admin" in body["message"]
    ok = mint(codec, scopes=("fleet:write", "fleet:admin"))
    r = await call(guarded, "POST", "/dispatch", ok, json={"kw": 5})
    assert (r.status_code, r.json()) == (200, {"kw": 5})


async def test_requirements_come_before_the_body(guarded: Service) -> None:
    r = await call(guarded, "POST", "/dispatch", content=b"{not json")
    assert (r.status_code, reason(r)) == (401, "passport_required")


async def test_missing_roles_are_a_403_naming_them(guarded: Service, codec: PassportCodec) -> None:
    r = await call(guarded, "GET", "/roles", mint(codec, roles=("viewer",)))
    assert r.status_code == 403
    assert r.json()["detail"] == [{"reason": "missing_roles", "missing": ["operator", "admin"]}]
    r = await call(guarded, "GET", "/roles", mint(codec, roles=("admin", "operator")))
    assert r.status_code == 200


async def test_insufficient_assurance_is_a_403_naming_the_level(
    guarded: Service, codec: PassportCodec
) -> None:
    r = await call(guarded, "GET", "/mfa", mint(codec, assurance=Assurance.AAL1))
    assert r.status_code == 403
    body = r.json()
    assert body["detail"] == [{"reason": "insufficient_assurance", "missing": ["AAL2"]}]
    assert "AAL2" in body["message"]
    assert "AAL1" in body["message"]
    for level in (Assurance.AAL2, Assurance.AAL3):
        r = await call(guarded, "GET", "/mfa", mint(codec, assurance=level))
        assert r.status_code == 200


async def test_device_requirements(guarded: Service, codec: PassportCodec) -> None:
    battery = DeviceIdentity("bat-7", "battery", TrustLevel.REGISTERED)
    r = await call(guarded, "GET", "/device", mint(codec))
    assert (r.status_code, reason(r)) == (401, "device_required")
    r = await call(guarded, "GET", "/device", mint(codec, subject=None, device=battery))
    assert (r.status_code, r.json()) == (200, "bat-7")
    r = await call(guarded, "GET", "/attested", mint(codec, subject=None, device=battery))
    assert r.status_code == 403
    assert r.json()["detail"] == [{"reason": "insufficient_device_trust", "missing": ["ATTESTED"]}]
    r = await call(guarded, "GET", "/attested", mint(codec))
    assert (r.status_code, reason(r)) == (401, "device_required")
    cert = DeviceIdentity("bat-7", "battery", TrustLevel.ATTESTED)
    r = await call(guarded, "GET", "/attested", mint(codec, subject=None, device=cert))
    assert r.status_code == 200


async def test_a_user_is_required_by_default(guarded: Service, codec: PassportCodec) -> None:
    anonymous = mint(codec, subject=None)
    r = await call(guarded, "GET", "/tolerant", anonymous)
    assert (r.status_code, reason(r)) == (401, "user_required")
    assert (await call(guarded, "GET", "/anyone", anonymous)).status_code == 200
    r = await call(guarded, "GET", "/anyone")
    assert (r.status_code, reason(r)) == (401, "passport_required")


async def test_degraded_passports(guarded: Service, codec: PassportCodec) -> None:
    degraded = mint(codec, degraded=True)
    r = await call(guarded, "GET", "/tolerant", degraded)
    assert (r.status_code, r.json()) == (200, True)
    r = await call(guarded, "DELETE", "/sensitive", degraded)
    assert (r.status_code, reason(r)) == (403, "degraded_not_allowed")
    assert (await call(guarded, "DELETE", "/sensitive", mint(codec))).status_code == 200


def test_requires_is_checked_when_declared() -> None:
    with pytest.raises(TypeError, match="tuple of strings"):
        Requires(scopes="fleet:write")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="non-empty"):
        Requires(roles=("",))
    assert Requires(scopes=["a", "b"]).scopes == ("a", "b")  # type: ignore[arg-type]
    assert Requires(min_assurance=2).min_assurance is Assurance.AAL2  # type: ignore[arg-type]
    svc = Service("x")
    with pytest.raises(TypeError, match="Requires"):

        @svc.get("/x", requires={"scopes": ["a"]})  # type: ignore[arg-type]
        async def x() -> None: ...


def test_requires_is_plain_data_loadable_from_config() -> None:
    rule = msgspec.convert(
        {"scopes": ["fleet:write"], "min_assurance": 2, "allow_degraded": False}, Requires
    )
    assert rule == Requires(
        scopes=("fleet:write",), min_assurance=Assurance.AAL2, allow_degraded=False
    )
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"scope": ["x"]}, Requires)


def test_requires_check_raises_the_core_errors(codec: PassportCodec) -> None:
    from garrison.core import PermissionDenied, Unauthenticated

    rule = Requires(scopes=("a",))
    with pytest.raises(Unauthenticated) as no:
        rule.check(None)
    assert no.value.reason == "passport_required"
    passport = codec.verify(mint(codec, scopes=("b",)))
    with pytest.raises(PermissionDenied) as denied:
        rule.check(passport)
    assert denied.value.reason == "missing_scopes"
    assert not rule.allows(passport)
    assert rule.allows(codec.verify(mint(codec, scopes=("a", "b"))))


# -- forwarding ------------------------------------------------------------------------------


def recorder() -> MockTransport:
    return MockTransport(lambda method, url, headers, body: (200, {}, b"{}"))


def route_to(svc: Service, callee: str, transport: MockTransport) -> None:
    client = svc.client(callee)
    client.balancer.update([f"http://{callee}"])
    client._transport = transport


async def test_the_client_forwards_the_passport_as_received(
    svc: Service, codec: PassportCodec
) -> None:
    transport = recorder()
    route_to(svc, "stock", transport)

    @svc.get("/relay")
    async def relay() -> int:  # no passport code at all
        r = await svc.client("stock").get("/levels")
        await svc.client("stock").get("/levels", headers={PASSPORT_HEADER: "explicit"})
        return r.status

    token = mint(codec)
    assert (await call(svc, "GET", "/relay", token)).status_code == 200
    assert transport.requests[0][2][PASSPORT_HEADER] == token
    assert transport.requests[1][2][PASSPORT_HEADER] == "explicit"  # the caller's choice wins

    transport.requests.clear()
    assert (await call(svc, "GET", "/relay")).status_code == 200
    assert PASSPORT_HEADER not in transport.requests[0][2]


async def test_a_call_outside_a_request_carries_no_passport(
    svc: Service, codec: PassportCodec
) -> None:
    transport = recorder()
    route_to(svc, "stock", transport)
    background: list[asyncio.Task[Any]] = []

    @svc.get("/later")
    async def later() -> None:
        # A task started from the handler inherits the request's context: work done on behalf
        # of the request keeps its identity.
        background.append(asyncio.create_task(svc.client("stock").get("/from-task")))

    await call(svc, "GET", "/later", mint(codec))
    await asyncio.gather(*background)
    await svc.client("stock").get("/outside")  # no request being handled
    sent = {url.rpartition("/")[2]: headers for _, url, headers, _ in transport.requests}
    assert PASSPORT_HEADER in sent["from-task"]
    assert PASSPORT_HEADER not in sent["outside"]
    assert current_passport() is None


def asgi_transport(target: Service) -> MockTransport:
    """A client transport that delivers the call to ``target``'s ASGI app, in process."""

    async def handler(
        method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        transport = httpx.ASGITransport(app=target.asgi())
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.request(method, url, headers=dict(headers), content=body)
        return r.status_code, dict(r.headers), r.content

    return MockTransport(handler)


async def test_a_chain_keeps_the_identity_with_no_code_in_between(
    codec: PassportCodec,
) -> None:
    a, b, c = Service("a"), Service("b"), Service("c")
    for s in (a, b, c):
        s.identity.use(codec)
    route_to(a, "b", asgi_transport(b))
    route_to(b, "c", asgi_transport(c))

    @a.get("/go")
    async def go() -> Any:
        return (await a.client("b").get("/go")).json()

    @b.get("/go")
    async def b_go() -> Any:
        return (await b.client("c").get("/whoami")).json()

    @c.get("/whoami")
    async def whoami(passport: Passport) -> View | None:
        return view(passport)

    token = mint(codec, txn="chain-1")
    r = await call(a, "GET", "/go", token)
    assert r.json() == {"subject": "u-1", "txn": "chain-1", "scopes": ["fleet:read"]} | {
        "degraded": False
    }
    r = await call(a, "GET", "/go")  # none at A: none at C, and C requires one
    assert r.json()["detail"][0]["reason"] == "passport_required"


# -- which keys ------------------------------------------------------------------------------


def app_config(root: Path, identity: dict[str, Any] | None = None) -> Any:
    data: dict[str, Any] = {"app": {"name": "t"}}
    if identity is not None:
        data["identity"] = identity
    return parse_config(data, root=str(root))


async def test_the_development_key_is_used_when_none_is_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GARRISON_ENV", raising=False)
    svc = Service("dev-svc")
    svc.configure(app_config(tmp_path))

    @svc.get("/me")
    async def me(passport: Passport) -> str:
        return passport.txn

    edge = PassportCodec(Keyring.dev_default(tmp_path))  # what the gateway mints with in dev
    token = edge.mint_for(resolution(), txn="dev-1")[1]
    assert (await call(svc, "GET", "/me", token)).json() == "dev-1"
    assert (tmp_path / ".garrison" / "passport.key").exists()


async def test_configured_keys_win_and_may_be_verify_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    monkeypatch.setenv("PASSPORT_PUB", base64.urlsafe_b64encode(public).decode())
    identity = {"passport": {"alg": "EdDSA", "public_keys": {"e1": "env:PASSPORT_PUB"}}}
    svc = Service("edsvc")
    svc.configure(app_config(tmp_path, identity))

    @svc.get("/me")
    async def me(passport: Passport) -> str:
        return passport.txn

    edge = PassportCodec(Keyring.ed25519(private_keys={"e1": private}, active="e1"))
    token = edge.mint_for(resolution(), txn="ed-1")[1]
    assert (await call(svc, "GET", "/me", token)).json() == "ed-1"
    verifier = svc.identity.verifier
    assert verifier is not None
    assert not verifier.codec.keyring.can_sign
    dev = PassportCodec(Keyring.dev_default(tmp_path)).mint_for(resolution())[1]
    r = await call(svc, "GET", "/me", dev)
    assert (r.status_code, reason(r)) == (401, "unknown_key")


async def test_production_without_keys_passes_passports_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GARRISON_ENV", "production")
    svc = Service("prod")
    svc.configure(app_config(tmp_path))
    transport = recorder()
    route_to(svc, "next", transport)

    @svc.get("/relay")
    async def relay() -> None:
        await svc.client("next").get("/x")

    @svc.get("/me")
    async def me(passport: Passport) -> str:
        return passport.txn

    assert svc.identity.verifier is None
    assert (await call(svc, "GET", "/relay", "whatever-it-is")).status_code == 204
    assert transport.requests[0][2][PASSPORT_HEADER] == "whatever-it-is"  # the next hop judges
    r = await call(svc, "GET", "/me", "whatever-it-is")
    assert r.status_code == 500  # the service's fault: it has no keys
    assert (await call(svc, "GET", "/me")).status_code == 401
    assert not (tmp_path / ".garrison").exists()


async def test_a_bad_key_configuration_fails_at_startup(tmp_path: Path) -> None:
    identity = {"passport": {"keys": {"k1": "env:GARRISON_TEST_NOT_SET"}}}
    svc = Service("broken")
    svc.configure(app_config(tmp_path, identity))
    with pytest.raises(ConfigError, match=r"identity\.passport\.keys\.k1.*GARRISON_TEST_NOT_SET"):
        await run_startup(svc)


async def run_startup(svc: Service) -> None:
    app = svc.asgi()
    messages: list[dict[str, Any]] = []
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: Any) -> None:
        messages.append(message)
        if message["type"].startswith("lifespan.startup"):
            await inbox.put({"type": "lifespan.shutdown"})

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    await app(scope, receive, send)


def test_load_passport_codec_choices(tmp_path: Path) -> None:
    config = app_config(tmp_path)
    assert load_passport_codec(config, env={"GARRISON_ENV": "production"}) is None
    assert load_passport_codec(config, env={}, create_dev_key=False) is None
    codec = load_passport_codec(config, env={})
    assert codec is not None
    assert codec.keyring.kids == ("dev",)
    assert load_passport_codec(config, env={}, create_dev_key=False) is not None
    with pytest.raises(ConfigError, match=r"identity\.passport"):
        load_passport_codec(app_config(tmp_path, {"passport": {"ttl": -1}}), env={})


# -- the verifier's cache --------------------------------------------------------------------


def test_the_verifier_caches_until_expiry(codec: PassportCodec, clock: FakeClock) -> None:
    verifier = PassportVerifier(codec, max_entries=2)
    t1, t2, t3 = (mint(codec, txn=f"t{i}") for i in range(3))
    assert verifier.verify(t1) is verifier.verify(t1)
    assert (verifier.hits, verifier.misses) == (1, 1)
    verifier.verify(t2.encode())  # bytes, as ASGI has headers
    verifier.verify(t3)
    assert len(verifier) == 2  # bounded: t1 went first
    verifier.verify(t1)
    assert verifier.misses == 4
    clock.advance(codec.ttl + codec.leeway + 1)
    with pytest.raises(Exception, match="expired"):
        verifier.verify(t1)
    verifier.clear()
    assert len(verifier) == 0
    with pytest.raises(ValueError, match="max_entries"):
        PassportVerifier(codec, max_entries=-1)


def test_the_verifier_evicts_oldest_first_in_constant_time(codec: PassportCodec) -> None:
    verifier = PassportVerifier(codec, max_entries=3)
    tokens = [mint(codec, txn=f"t{i}") for i in range(50)]
    for t in tokens:
        verifier.verify(t)
    assert list(verifier._cache) == tokens[-3:]
    assert verifier.verify(tokens[-1]) is verifier.verify(tokens[-1])
    assert (verifier.hits, verifier.misses) == (2, 50)


def test_a_keyring_change_makes_the_verifier_verify_afresh(
    codec: PassportCodec, keyring: Keyring
) -> None:
    verifier = PassportVerifier(codec)
    token = mint(codec)
    first = verifier.verify(token)
    keyring.add(PassportKey.hmac("k2", OTHER_SECRET))
    assert verifier.verify(token) == first  # verified again: k1 is still there
    assert (verifier.hits, verifier.misses) == (0, 2)
    assert verifier.verify(token) == first
    assert verifier.hits == 1
    keyring.activate("k2")
    keyring.retire("k1")
    with pytest.raises(Unauthenticated) as info:
        verifier.verify(token)
    assert info.value.reason == "unknown_key"
    assert len(verifier) == 0


def test_a_keyring_change_during_a_verify_leaves_its_entry_stale(
    codec: PassportCodec, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = PassportVerifier(codec)
    token = mint(codec)
    real = verifier._verify

    def racing(t: str | bytes) -> Passport:
        passport = real(t)
        keyring.retire("k2")  # as if another thread retired a key right after the tag checked
        return passport

    keyring.add(PassportKey.hmac("k2", OTHER_SECRET))
    monkeypatch.setattr(verifier, "_verify", racing)
    verifier.verify(token)
    monkeypatch.undo()
    verifier.verify(token)
    assert (verifier.hits, verifier.misses) == (0, 2)


def test_failures_are_not_cached(codec: PassportCodec) -> None:
    verifier = PassportVerifier(codec)
    bad = flip(mint(codec), 40)
    for _ in range(2):
        with pytest.raises(Exception, match="does not verify"):
            verifier.verify(bad)
    assert (len(verifier), verifier.hits, verifier.misses) == (0, 0, 2)
