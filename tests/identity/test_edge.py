"""The identity edge: finding, resolving, merging and minting; route rules; service actions."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import (
    FakeClock,
    PermissionDenied,
    ServiceUnavailable,
    Unauthenticated,
    parse_config,
)
from garrison.identity import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    DeviceIdentity,
    IdentityAction,
    Passport,
    RequestCredentials,
    Resolution,
    TrustLevel,
    UserIdentity,
)
from garrison.identity._cache import VerifiedCredentialCache
from garrison.identity._edge import AccessRule, IdentityEdge
from garrison.identity._keys import Keyring
from garrison.identity._passport import PassportCodec
from garrison.identity._session import SessionCookieConfig, SessionCookieResolver
from garrison.identity._sessionstore import MemorySessionStore

KEYRING = Keyring.hmac({"t": b"k" * 32}, active="t")


class Table:
    """A resolver over a table: ``<header>: <token>`` resolves to ``table[token]``."""

    def __init__(
        self,
        name: str,
        table: dict[str, Any],
        header: str = "authorization",
        kind: CredentialKind = CredentialKind.JWT,
        generation: int = 0,
    ) -> None:
        self.name = name
        self.table = table
        self.header = header
        self.kind = kind
        self.calls = 0
        self.generation = generation

    def find(self, request: RequestCredentials) -> Credential | None:
        value = request.headers.get(self.header)
        if value is None:
            return None
        return Credential(
            kind=self.kind,
            value=value,
            resolver=self.name,
            device_id=request.headers.get("x-device-id"),
        )

    async def resolve(self, credential: Credential) -> Resolution:
        self.calls += 1
        got = self.table.get(credential.value)
        if got is None:
            raise Unauthenticated("no such token", reason="table_unknown")
        if isinstance(got, Exception):
            raise got
        assert isinstance(got, Resolution)
        return got


def res(
    *,
    user: str | None = "u1",
    device: str | None = None,
    trust: TrustLevel = TrustLevel.REGISTERED,
    kind: CredentialKind = CredentialKind.JWT,
    expires_in: float = 3600,
    degraded: bool = False,
    actions: tuple[IdentityAction, ...] = (),
    assurance: Assurance = Assurance.AAL1,
) -> Resolution:
    return Resolution(
        auth=Authentication(credential=kind, issuer="t", assurance=assurance),
        expires_at=time.time() + expires_in,
        user=None if user is None else UserIdentity(subject=user, scopes=("read",)),
        device=None if device is None else DeviceIdentity(id=device, trust=trust),
        degraded=degraded,
        actions=actions,
    )


def req(**headers: str) -> RequestCredentials:
    return RequestCredentials(headers={k.replace("_", "-"): v for k, v in headers.items()})


def edge(*resolvers: Any, cache: VerifiedCredentialCache | None = None) -> IdentityEdge:
    return IdentityEdge(resolvers, PassportCodec(KEYRING), cache)


def verify(token: str) -> Passport:
    return PassportCodec(KEYRING).verify(token)


# -- authenticate ----------------------------------------------------------------------------


async def test_no_credential_gives_an_anonymous_passport_or_a_401() -> None:
    e = edge(Table("jwt", {}))
    got = await e.authenticate(req(), txn="txn-1")
    assert got.passport.anonymous
    assert got.passport.auth.credential is CredentialKind.ANONYMOUS
    assert got.passport.txn == "txn-1"
    assert verify(got.token) == got.passport
    assert got.passport.expires_at - got.passport.issued_at == pytest.approx(60.0)
    assert (got.actions, got.credentials) == ((), ())
    with pytest.raises(Unauthenticated) as info:
        await e.authenticate(req(), anonymous=False)
    assert info.value.reason == "credential_missing"


async def test_a_valid_credential_is_minted_into_a_passport() -> None:
    e = edge(Table("jwt", {"good": res(user="alice")}))
    got = await e.authenticate(req(authorization="good"))
    assert got.passport.user is not None
    assert got.passport.user.subject == "alice"
    assert verify(got.token).user == got.passport.user
    assert [c.value for c in got.credentials] == ["good"]


async def test_a_bad_credential_is_a_401_with_the_resolvers_reason_even_on_anonymous_routes() -> (
    None
):
    e = edge(Table("jwt", {}))
    with pytest.raises(Unauthenticated) as info:
        await e.authenticate(req(authorization="bad"))
    assert info.value.reason == "table_unknown"
    # unless the route asks to ignore it
    got = await e.authenticate(req(authorization="bad"), ignore_invalid=True)
    assert got.passport.anonymous
    with pytest.raises(Unauthenticated):
        await e.authenticate(req(authorization="bad"), anonymous=False, ignore_invalid=True)


async def test_an_expired_credential_is_not_minted() -> None:
    e = edge(Table("jwt", {"old": res(expires_in=-1)}))
    with pytest.raises(Unauthenticated) as info:
        await e.authenticate(req(authorization="old"))
    assert info.value.reason == "expired"


async def test_outages_propagate_never_as_401() -> None:
    e = edge(Table("jwt", {"t": ServiceUnavailable("store down")}))
    with pytest.raises(ServiceUnavailable):
        await e.authenticate(req(authorization="t"), ignore_invalid=True)


async def test_allowed_restricts_the_resolvers() -> None:
    a = Table("a", {"x": res(user="from-a")})
    b = Table("b", {"x": res(user="from-b")}, header="x-b")
    e = edge(a, b)
    got = await e.authenticate(req(authorization="x", x_b="x"), allowed={"b"})
    assert got.passport.user is not None
    assert got.passport.user.subject == "from-b"
    got = await e.authenticate(req(authorization="x"), allowed={"b"})
    assert got.passport.anonymous
    assert a.calls == 0


async def test_the_first_user_credential_in_resolver_order_wins() -> None:
    a = Table("a", {"x": res(user="from-a")})
    b = Table("b", {"y": res(user="from-b")}, header="cookie-ish")
    got = await edge(a, b).authenticate(req(authorization="x", cookie_ish="y"))
    assert got.passport.user is not None
    assert got.passport.user.subject == "from-a"
    assert b.calls == 0


async def test_user_and_device_credentials_merge() -> None:
    renew = IdentityAction(kind="set_cookie", name="s", value="v")
    users = Table("jwt", {"u": res(user="alice", expires_in=100, actions=(renew,))})
    devices = Table(
        "dev",
        {
            "d": res(user=None, device="bat-1", kind=CredentialKind.DEVICE_TOKEN, degraded=True),
        },
        header="x-device-token",
        kind=CredentialKind.DEVICE_TOKEN,
    )
    got = await edge(devices, users).authenticate(req(authorization="u", x_device_token="d"))
    p = got.passport
    assert p.user is not None
    assert p.user.subject == "alice"
    assert p.device is not None
    assert p.device.id == "bat-1"
    assert p.auth.credential is CredentialKind.JWT  # how the user signed in
    assert p.degraded  # either credential degraded: the passport is
    assert got.actions == (renew,)
    assert len(got.credentials) == 2
    assert verify(got.token).degraded


async def test_two_credentials_naming_different_devices_are_refused() -> None:
    users = Table("sess", {"u": res(user="alice", device="phone-1", trust=TrustLevel.UNKNOWN)})
    devices = Table(
        "dev",
        {"d": res(user=None, device="phone-2", kind=CredentialKind.DEVICE_TOKEN)},
        header="x-device-token",
        kind=CredentialKind.DEVICE_TOKEN,
    )
    with pytest.raises(Unauthenticated) as info:
        await edge(devices, users).authenticate(req(authorization="u", x_device_token="d"))
    assert info.value.reason == "device_conflict"
    # the same device named twice: the device credential's (higher) trust is kept
    devices.table["d"] = res(user=None, device="phone-1", kind=CredentialKind.DEVICE_TOKEN)
    got = await edge(devices, users).authenticate(req(authorization="u", x_device_token="d"))
    assert got.passport.device == DeviceIdentity(id="phone-1", trust=TrustLevel.REGISTERED)


async def test_the_cache_fronts_pure_kinds_only() -> None:
    clock = FakeClock(wall_start=time.time())
    cache = VerifiedCredentialCache(clock=clock)
    jwt = Table("jwt", {"j": res()})
    sessions = Table("sess", {"s": res()}, header="cookie", kind=CredentialKind.SESSION)
    e = edge(jwt, sessions, cache=cache)
    for _ in range(3):
        await e.authenticate(req(authorization="j"))
        await e.authenticate(req(cookie="s"))
    assert jwt.calls == 1  # verified once
    assert sessions.calls == 3  # revocable: the store is read every time
    jwt.generation = 1  # the issuer's keys changed: verify again
    await e.authenticate(req(authorization="j"))
    assert jwt.calls == 2
    for _ in range(3):  # rejections are remembered briefly
        with pytest.raises(Unauthenticated):
            await e.authenticate(req(authorization="nope"))
    assert jwt.calls == 3


async def test_duplicate_resolver_names_are_refused() -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        edge(Table("a", {}), Table("a", {}))


# -- service-sent actions (sessions) ---------------------------------------------------------


async def session_edge(clock: FakeClock) -> tuple[IdentityEdge, SessionCookieResolver]:
    cfg = SessionCookieConfig(
        keys={"k1": "env:K1"}, active_key="k1", idle_timeout=600.0, lifetime=3600.0
    )
    sessions = SessionCookieResolver(
        cfg, keys={"k1": os.urandom(32)}, store=MemorySessionStore(), clock=clock
    )
    return IdentityEdge([sessions], PassportCodec(KEYRING, clock=clock)), sessions


async def test_renew_session_and_end_session() -> None:
    clock = FakeClock(wall_start=time.time())
    e, sessions = await session_edge(clock)
    login = await sessions.login("alice", roles=["ops"])
    request = RequestCredentials(headers={}, cookies={sessions.config.cookie_name: login.cookie})
    result = await e.authenticate(request)
    assert result.actions == ()  # too early for the resolver's own renewal
    clock.advance(60)
    (renewed,) = await e.execute("Renew-Session ", result)
    assert renewed.kind == "set_cookie"
    assert renewed.name == sessions.config.cookie_name
    assert renewed.value != login.cookie
    stored = await sessions.store.get(login.session.id)
    assert stored is not None
    assert stored.last_seen == clock.time()
    (cleared,) = await e.execute("end-session", result)
    assert (cleared.kind, cleared.max_age) == ("clear_cookie", 0)
    with pytest.raises(Unauthenticated) as info:
        await e.authenticate(request)
    assert info.value.reason == "session_revoked"
    assert await e.execute("renew-session", result) == ()  # revoked: nothing to renew
    assert await e.execute("launch-missiles", result) == ()
    anonymous = await e.authenticate(RequestCredentials(headers={}))
    assert await e.execute("renew-session", anonymous) == ()
    await e.aclose()


async def test_from_config(tmp_path: Any) -> None:
    config = parse_config(
        {
            "identity": {
                "passport": {"keys": {"p1": "env:PK"}, "active": "p1", "ttl": 30},
                "device_tokens": {"keys": {"d1": "env:DK"}, "active_key": "d1"},
            }
        },
        root=str(tmp_path),
    )
    env = {"PK": "a" * 43, "DK": "d" * 40}
    e = IdentityEdge.from_config(config, env=env)
    assert e.resolver_names == {"device_token"}
    assert e.codec.ttl == 30
    assert e.cache is not None
    assert e.codec.keyring.active_kid == "p1"
    await e.aclose()


# -- the rules of a route --------------------------------------------------------------------

NAMES = st.sampled_from(["a", "b", "c"])


@st.composite
def passports(draw: st.DrawFn) -> Passport:
    user = draw(
        st.none()
        | st.builds(
            UserIdentity,
            subject=st.just("u"),
            scopes=st.lists(NAMES, unique=True).map(tuple),
            roles=st.lists(NAMES, unique=True).map(tuple),
        )
    )
    device = draw(
        st.none() | st.builds(DeviceIdentity, id=st.just("d"), trust=st.sampled_from(TrustLevel))
    )
    assurance = draw(st.sampled_from(Assurance))
    return Passport(
        auth=Authentication(credential=CredentialKind.JWT, assurance=assurance),
        issued_at=0.0,
        expires_at=60.0,
        txn="t",
        user=user,
        device=device,
    )


rules = st.builds(
    AccessRule,
    auth=st.sampled_from(["anonymous", "user", "device", "user_or_device"]),
    scopes=st.lists(NAMES, unique=True, max_size=2).map(tuple),
    roles=st.lists(NAMES, unique=True, max_size=2).map(tuple),
    min_assurance=st.sampled_from(Assurance),
    device_trust=st.sampled_from([TrustLevel.REGISTERED, TrustLevel.ATTESTED]),
)


def outcome(rule: AccessRule, p: Passport) -> int:
    try:
        rule.check(p)
    except Unauthenticated:
        return 401
    except PermissionDenied:
        return 403
    return 200


def subset(a: Iterable[str], b: Iterable[str]) -> bool:
    return set(a) <= set(b)


@settings(max_examples=500, deadline=None)
@given(rule=rules, p=passports())
def test_rules_let_through_exactly_what_they_promise(rule: AccessRule, p: Passport) -> None:
    got = outcome(rule, p)
    trusted = p.device is not None and p.device.trust >= rule.device_trust
    if got == 200:
        assert p.auth.assurance >= rule.min_assurance
        if rule.auth == "user":
            assert p.user is not None
        if rule.auth == "device":
            assert trusted
        if rule.auth == "user_or_device":
            assert p.user is not None or trusted
        if p.user is not None:
            assert subset(rule.scopes, p.user.scopes)
            assert subset(rule.roles, p.user.roles)
        elif rule.scopes or rule.roles:
            assert rule.auth == "user_or_device"
    elif got == 403:
        # 403 only for an identity that is there but lacks something: never for "no identity"
        assert not p.anonymous
    else:
        missing = (
            (rule.auth == "user" and p.user is None)
            or (rule.auth == "device" and p.device is None)
            or (rule.auth == "user_or_device" and p.user is None and p.device is None)
            or (p.anonymous and rule.min_assurance > Assurance.NONE)
            or (p.user is None and (rule.scopes or rule.roles) and rule.auth != "user_or_device")
        )
        assert missing


@settings(max_examples=300, deadline=None)
@given(rule=rules, p=passports(), extra=st.lists(NAMES, max_size=3))
def test_more_rights_never_hurt(rule: AccessRule, p: Passport, extra: list[str]) -> None:
    before = outcome(rule, p)
    user = p.user
    if user is not None:
        user = msgspec.structs.replace(
            user, scopes=(*user.scopes, *extra), roles=(*user.roles, *extra)
        )
    device = p.device
    if device is not None:
        device = msgspec.structs.replace(device, trust=TrustLevel.ATTESTED)
    auth = msgspec.structs.replace(p.auth, assurance=Assurance.AAL3)
    after = outcome(rule, msgspec.structs.replace(p, user=user, device=device, auth=auth))
    assert not (before == 200 and after != 200)


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (AccessRule(auth="user"), "user_required"),
        (AccessRule(auth="device"), "device_required"),
        (AccessRule(auth="user_or_device"), "credential_required"),
    ],
)
def test_401_reasons(rule: AccessRule, reason: str) -> None:
    anon = Passport(
        auth=Authentication(credential=CredentialKind.ANONYMOUS),
        issued_at=0,
        expires_at=1,
        txn="t",
    )
    with pytest.raises(Unauthenticated) as info:
        rule.check(anon)
    assert info.value.reason == reason


def test_403_reasons() -> None:
    p = Passport(
        auth=Authentication(credential=CredentialKind.JWT, assurance=Assurance.AAL1),
        issued_at=0,
        expires_at=1,
        txn="t",
        user=UserIdentity(subject="u", scopes=("read",), roles=("viewer",)),
        device=DeviceIdentity(id="d", trust=TrustLevel.REGISTERED),
    )
    cases = [
        (AccessRule(auth="user", scopes=("write",)), "missing_scopes"),
        (AccessRule(auth="user", roles=("admin",)), "missing_roles"),
        (AccessRule(auth="device", device_trust=TrustLevel.ATTESTED), "insufficient_device_trust"),
        (AccessRule(min_assurance=Assurance.AAL2), "insufficient_assurance"),
    ]
    for rule, reason in cases:
        with pytest.raises(PermissionDenied) as info:
            rule.check(p)
        assert info.value.reason == reason
    AccessRule(auth="user_or_device", scopes=("read",), roles=("viewer",)).check(p)
