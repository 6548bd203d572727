"""Session cookies: sealing, device binding, rotation, revocation, renewal and degradation."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock, Unauthenticated, parse_config
from garrison.identity._model import (
    Assurance,
    CredentialKind,
    RequestCredentials,
    Resolution,
)
from garrison.identity._session import (
    SessionCookieConfig,
    SessionCookieResolver,
    decode_key,
)
from garrison.identity._sessionstore import (
    MemorySessionStore,
    RedisSessionStore,
    Session,
    SqliteSessionStore,
    StoreUnavailable,
)

K1, K2 = os.urandom(32), os.urandom(32)
COOKIE = "__Host-garrison-session"
DEV = "x-device-id"
REDIS_URL = "redis://127.0.0.1:6379/0"


def config(**kw: Any) -> SessionCookieConfig:
    base: dict[str, Any] = {
        "keys": {"k1": "env:K1", "k2": "env:K2"},
        "active_key": "k1",
        "idle_timeout": 600.0,
        "lifetime": 3600.0,
    }
    base.update(kw)
    return SessionCookieConfig(**base)


def resolver(
    store: Any = None,
    clock: FakeClock | None = None,
    keys: dict[str, bytes] | None = None,
    **kw: Any,
) -> SessionCookieResolver:
    return SessionCookieResolver(
        config(**kw),
        keys=keys if keys is not None else {"k1": K1, "k2": K2},
        store=store if store is not None else MemorySessionStore(),
        clock=clock or FakeClock(),
    )


def request(cookie: str | None, device: str | None = None) -> RequestCredentials:
    headers = {DEV: device} if device is not None else {}
    cookies = {COOKIE: cookie} if cookie is not None else {}
    return RequestCredentials(headers=headers, cookies=cookies)


async def resolve(r: SessionCookieResolver, cookie: str, device: str | None = None) -> Resolution:
    cred = r.find(request(cookie, device))
    assert cred is not None
    return await r.resolve(cred)


async def reason(r: SessionCookieResolver, cookie: str, device: str | None = None) -> str:
    with pytest.raises(Unauthenticated) as info:
        await resolve(r, cookie, device)
    return info.value.reason


async def redis_or_skip() -> None:
    """Skip when the local Redis is unreachable, except in CI where that is a failure."""
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        await client.ping()
    except (redis.exceptions.RedisError, OSError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable in CI: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    finally:
        await client.aclose()


class FlakyStore(MemorySessionStore):
    """A memory store whose reads or writes can be made to fail like an unreachable backend."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_get = False
        self.fail_touch = False
        self.touches = 0

    async def get(self, session_id: str) -> Session | None:
        if self.fail_get:
            raise StoreUnavailable("store down")
        return await super().get(session_id)

    async def touch(self, session: Session, at: float) -> bool:
        self.touches += 1
        if self.fail_touch:
            raise StoreUnavailable("store down")
        return await super().touch(session, at)


# -- the happy path -----------------------------------------------------------------------------


async def test_login_then_resolve() -> None:
    clock = FakeClock()
    r = resolver(clock=clock)
    new = await r.login(
        "u1", tenant="t1", roles=["admin"], scopes=["read"], method="mfa", assurance=Assurance.AAL2
    )
    assert new.action.kind == "set_cookie"
    assert new.action.name == COOKIE
    assert new.action.value == new.cookie
    assert new.action.max_age == 600
    assert new.cookie.startswith("v1.k1.-.")
    res = await resolve(r, new.cookie)
    assert res.user is not None
    assert (res.user.subject, res.user.tenant, res.user.roles, res.user.scopes) == (
        "u1",
        "t1",
        ("admin",),
        ("read",),
    )
    assert res.auth.credential is CredentialKind.SESSION
    assert (res.auth.method, res.auth.assurance, res.auth.issuer) == ("mfa", 2, "session")
    assert res.auth.at == clock.time()
    assert res.expires_at == clock.time() + 600
    assert res.device is None
    assert not res.degraded
    assert res.actions == ()


async def test_find() -> None:
    r = resolver()
    assert r.find(request(None)) is None
    cred = r.find(request("v1.x", device="d1"))
    assert cred is not None
    assert (cred.kind, cred.value, cred.device_id, cred.resolver) == (
        CredentialKind.SESSION,
        "v1.x",
        "d1",
        "session",
    )


async def test_cookie_never_contains_the_session_id() -> None:
    r = resolver()
    new = await r.login("u1")
    raw = base64.urlsafe_b64decode(new.session.id + "=")
    assert new.session.id not in new.cookie
    assert raw not in base64.urlsafe_b64decode(new.cookie.split(".")[3] + "==")


async def test_two_logins_give_unrelated_cookies() -> None:
    r = resolver()
    a, b = await r.login("u1"), await r.login("u1")
    assert a.session.id != b.session.id
    assert a.cookie != b.cookie


# -- device binding -----------------------------------------------------------------------------


async def test_device_bound_session() -> None:
    r = resolver()
    new = await r.login("u1", device_id="phone-1")
    assert new.cookie.split(".")[2] != "-"
    res = await resolve(r, new.cookie, "phone-1")
    assert res.device is not None
    assert res.device.id == "phone-1"
    assert await reason(r, new.cookie) == "device_missing"
    assert await reason(r, new.cookie, "laptop-2") == "device_mismatch"


async def test_cookie_moved_to_another_device_with_forged_fingerprint_fails() -> None:
    """Rewriting the fingerprint for the thief's device id only breaks the seal."""
    r = resolver()
    new = await r.login("u1", device_id="phone-1")
    thief = (await r.login("u2", device_id="laptop-2")).cookie.split(".")[2]
    v, kid, _, body = new.cookie.split(".")
    forged = f"{v}.{kid}.{thief}.{body}"
    assert await reason(r, forged, "laptop-2") == "bad_seal"


async def test_unbound_session_ignores_the_device_header() -> None:
    r = resolver()
    new = await r.login("u1")
    res = await resolve(r, new.cookie, "anything")
    assert res.device is None


async def test_bad_device_ids_at_login() -> None:
    r = resolver()
    for bad in ["", "x" * 129, "a\nb"]:
        with pytest.raises(ValueError):
            await r.login("u1", device_id=bad)


async def test_cookie_under_another_name_fails() -> None:
    """The cookie name is bound into the seal: a cookie replayed under another name fails."""
    store = MemorySessionStore()
    r = resolver(store)
    other = resolver(store, cookie_name="other")
    new = await r.login("u1")
    cred = other.find(RequestCredentials(headers={}, cookies={"other": new.cookie}))
    assert cred is not None
    with pytest.raises(Unauthenticated) as info:
        await other.resolve(cred)
    assert info.value.reason == "bad_seal"


# -- bad cookies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cookie", "why"),
    [
        ("", "malformed_cookie"),
        ("garbage", "malformed_cookie"),
        ("v1.k1.-", "malformed_cookie"),
        ("v1.k1.-.a.b", "malformed_cookie"),
        ("v2.k1.-.AAAA", "unsupported_version"),
        ("v1.k9.-.AAAA", "unknown_key"),
        ("v1.k1.-.not base64!", "malformed_cookie"),
        ("v1.k1.-.AAAA", "malformed_cookie"),
        ("v1.k1.-.A", "malformed_cookie"),
        ("v1.k1.-.AAAA=", "malformed_cookie"),
        ("v1.k1.toolongfp.AAAA", "malformed_cookie"),
        ("v1.k1.-." + "A" * 300, "malformed_cookie"),
        ("v1.k1.-." + "A" * 91, "bad_seal"),
    ],
)
async def test_malformed_cookies(cookie: str, why: str) -> None:
    assert await reason(resolver(), cookie) == why


async def test_non_canonical_base64_is_malformed() -> None:
    """Unused low bits of the last character would otherwise decode to the same bytes."""
    r = resolver()
    new = await r.login("u1")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(new.cookie[-1])
    sibling = alphabet[last ^ 0b01]  # 68 bytes -> 91 chars: the last char has 2 spare bits
    assert await reason(r, new.cookie[:-1] + sibling) == "malformed_cookie"
    assert await reason(r, new.cookie[:20] + "\n" + new.cookie[20:]) == "malformed_cookie"


async def test_unprintable_device_header_is_a_mismatch() -> None:
    r = resolver()
    new = await r.login("u1", device_id="d1")
    assert await reason(r, new.cookie, "d1\x00") == "device_mismatch"
    assert await reason(r, new.cookie, "\ud800") == "device_mismatch"


async def test_every_truncation_is_rejected() -> None:
    r = resolver()
    new = await r.login("u1", device_id="d1")
    reasons = set()
    for n in range(len(new.cookie)):
        reasons.add(await reason(r, new.cookie[:n], "d1"))
    assert reasons <= {"malformed_cookie", "unsupported_version", "unknown_key"}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
async def test_any_bit_flip_is_rejected(data: st.DataObject) -> None:
    r = resolver()
    new = await r.login("u1", device_id="d1")
    raw = bytearray(new.cookie.encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    bit = data.draw(st.integers(0, 7))
    raw[i] ^= 1 << bit
    try:
        cookie = raw.decode()
    except UnicodeDecodeError:
        return  # not even text: it could not be a cookie value
    if cookie == new.cookie:
        return
    assert await reason(r, cookie, "d1") in {
        "malformed_cookie",
        "unsupported_version",
        "unknown_key",
        "device_mismatch",
        "bad_seal",
    }


async def test_flipping_any_bit_of_the_sealed_part_breaks_the_seal() -> None:
    r = resolver()
    new = await r.login("u1")
    head, body = new.cookie.rsplit(".", 1)
    data = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        cookie = f"{head}.{base64.urlsafe_b64encode(bytes(flipped)).rstrip(b'=').decode()}"
        assert await reason(r, cookie) == "bad_seal"


# -- key rotation -------------------------------------------------------------------------------


async def test_rotation_accepts_old_key_and_reseals_with_the_active_one() -> None:
    store = MemorySessionStore()
    clock = FakeClock()
    old = resolver(store, clock)
    new = await old.login("u1")
    rotated = resolver(store, clock, active_key="k2")
    res = await resolve(rotated, new.cookie)
    (action,) = res.actions
    assert action.kind == "set_cookie"
    assert action.value.startswith("v1.k2.")
    res2 = await resolve(rotated, action.value)
    assert res2.actions == ()  # already on the active key, renewal not due


async def test_retired_and_removed_keys() -> None:
    store = MemorySessionStore()
    new = await resolver(store).login("u1")
    retired = resolver(store, active_key="k2", retired_keys=["k1"])
    assert await reason(retired, new.cookie) == "retired_key"
    removed = SessionCookieResolver(
        SessionCookieConfig(keys={"k2": "env:K2"}, active_key="k2"),
        keys={"k2": K2},
        store=store,
    )
    assert await reason(removed, new.cookie) == "unknown_key"


async def test_same_key_id_with_other_key_material_fails() -> None:
    store = MemorySessionStore()
    new = await resolver(store).login("u1")
    impostor = resolver(store, keys={"k1": os.urandom(32), "k2": K2})
    assert await reason(impostor, new.cookie) == "bad_seal"


# -- revocation and expiry ----------------------------------------------------------------------


async def test_revocation_takes_effect_at_the_next_request() -> None:
    r = resolver()
    new = await r.login("u1")
    await resolve(r, new.cookie)
    await r.store.revoke(new.session.id)
    assert await reason(r, new.cookie) == "session_revoked"


async def test_logout_revokes_and_clears() -> None:
    r = resolver()
    new = await r.login("u1")
    action = await r.logout(new.cookie)
    assert (action.kind, action.name, action.max_age) == ("clear_cookie", COOKIE, 0)
    assert await reason(r, new.cookie) == "session_revoked"
    junk = await r.logout("garbage")  # a cookie that does not open is still cleared
    assert junk.kind == "clear_cookie"


async def test_revoke_subject() -> None:
    r = resolver()
    a, b = await r.login("alice"), await r.login("alice")
    c = await r.login("bob")
    assert await r.revoke_subject("alice") == 2
    assert await reason(r, a.cookie) == "session_revoked"
    assert await reason(r, b.cookie) == "session_revoked"
    await resolve(r, c.cookie)


async def test_unknown_session() -> None:
    r = resolver()
    new = await r.login("u1")
    fresh = resolver(MemorySessionStore())  # same keys, empty store
    assert await reason(fresh, new.cookie) == "session_unknown"


async def test_idle_cookie_expires_without_a_store_read() -> None:
    clock = FakeClock()
    store = FlakyStore()
    r = resolver(store, clock)
    new = await r.login("u1")
    clock.advance(600)
    store.fail_get = True  # proves the store is not consulted
    assert await reason(r, new.cookie) == "cookie_expired"


async def test_absolute_expiry_caps_renewal() -> None:
    clock = FakeClock()
    t0 = clock.time()
    r = resolver(clock=clock, lifetime=1000.0)
    cookie = (await r.login("u1")).cookie
    clock.advance(400)
    cookie = (await resolve(r, cookie)).actions[0].value
    clock.advance(400)
    res = await resolve(r, cookie)
    assert res.expires_at == t0 + 1000  # the renewal cannot pass the absolute expiry
    (action,) = res.actions
    assert action.max_age == 200
    clock.advance(200)
    assert await reason(r, action.value) == "cookie_expired"


async def test_store_side_expiry_reasons() -> None:
    """The store is checked too: a cookie sealed with a later expiry cannot outlive its session."""
    clock = FakeClock()
    r = resolver(clock=clock, renew=False)
    new = await r.login("u1", lifetime=700.0)
    late = r.seal(new.session, clock.time() + 10_000)
    clock.advance(650)
    assert await reason(r, late) == "session_idle_expired"
    clock.advance(100)
    assert await reason(r, late) == "session_expired"


async def test_session_bound_to_another_device_in_the_store() -> None:
    """Belt and braces: the stored binding is compared after the seal opens."""
    r = resolver()
    new = await r.login("u1", device_id="d1")
    unbound = msgspec.structs.replace(new.session, device_id=None)
    cookie = r.seal(unbound, new.session.valid_until)
    assert await reason(r, cookie, "d1") == "device_mismatch"


# -- sliding renewal and degradation ------------------------------------------------------------


async def test_sliding_renewal_after_half_the_idle_timeout() -> None:
    clock = FakeClock()
    store = FlakyStore()
    r = resolver(store, clock)
    new = await r.login("u1")
    clock.advance(299)
    res = await resolve(r, new.cookie)
    assert res.actions == ()
    assert store.touches == 0
    clock.advance(1)
    res = await resolve(r, new.cookie)
    (action,) = res.actions
    assert action.kind == "set_cookie"
    assert action.max_age == 600
    assert res.expires_at == clock.time() + 600
    assert store.touches == 1
    stored = await store.get(new.session.id)
    assert stored is not None
    assert stored.last_seen == clock.time()
    clock.advance(500)  # past the first cookie's sealed expiry, within the renewed one
    assert await reason(r, new.cookie) == "cookie_expired"
    res = await resolve(r, action.value)
    assert res.actions  # renewal due again


async def test_no_renewal_when_disabled() -> None:
    clock = FakeClock()
    r = resolver(clock=clock, renew=False)
    new = await r.login("u1")
    clock.advance(500)
    assert (await resolve(r, new.cookie)).actions == ()


async def test_renewal_failure_degrades_instead_of_logging_out() -> None:
    clock = FakeClock()
    store = FlakyStore()
    r = resolver(store, clock)
    new = await r.login("u1")
    clock.advance(400)
    store.fail_touch = True
    res = await resolve(r, new.cookie)
    assert res.degraded
    assert res.actions == ()
    assert res.user is not None
    assert res.user.subject == "u1"
    assert res.expires_at == new.session.valid_until  # not extended
    store.fail_touch = False
    res = await resolve(r, new.cookie)
    assert not res.degraded
    assert res.actions


async def test_unreadable_store_is_a_503_not_a_401() -> None:
    store = FlakyStore()
    r = resolver(store)
    new = await r.login("u1")
    store.fail_get = True
    with pytest.raises(StoreUnavailable):
        await resolve(r, new.cookie)


async def test_revoked_between_read_and_renewal() -> None:
    clock = FakeClock()
    store = FlakyStore()
    r = resolver(store, clock)
    new = await r.login("u1")
    clock.advance(400)
    real_get = store.get

    async def get_then_revoke(session_id: str) -> Session | None:
        got = await real_get(session_id)
        await store.revoke(session_id)
        return got

    store.get = get_then_revoke  # type: ignore[method-assign]
    assert await reason(r, new.cookie) == "session_revoked"


# -- real stores --------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
async def real_resolver(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[SessionCookieResolver, FakeClock]]:
    clock = FakeClock()
    if request.param == "sqlite":
        store: Any = SqliteSessionStore(tmp_path / "sessions.db", clock=clock)
    else:
        await redis_or_skip()
        store = RedisSessionStore.from_url(
            REDIS_URL, prefix=f"garrison-test:{uuid.uuid4().hex}:", clock=clock
        )
    r = resolver(store, clock)
    try:
        yield r, clock
    finally:
        if isinstance(store, RedisSessionStore):
            keys = [k async for k in store._r.scan_iter(match=f"{store._prefix}*")]
            if keys:
                await store._r.delete(*keys)
        await store.aclose()


async def test_real_store_login_renew_revoke(
    real_resolver: tuple[SessionCookieResolver, FakeClock],
) -> None:
    r, clock = real_resolver
    new = await r.login("u1", device_id="d1")
    await resolve(r, new.cookie, "d1")
    clock.advance(301)
    res = await resolve(r, new.cookie, "d1")
    assert res.actions
    await r.logout(res.actions[0].value, device_id="d1")
    assert await reason(r, res.actions[0].value, "d1") == "session_revoked"
    assert await reason(r, new.cookie, "d1") == "session_revoked"


# -- configuration ------------------------------------------------------------------------------


def test_decode_key() -> None:
    key = os.urandom(32)
    assert decode_key(base64.urlsafe_b64encode(key), key="k") == key
    assert decode_key(base64.urlsafe_b64encode(key).rstrip(b"="), key="k") == key
    assert decode_key(base64.b64encode(key), key="k") == key
    assert decode_key(key.hex().encode(), key="k") == key
    for bad in [b"short", base64.b64encode(os.urandom(16)), b"!" * 44]:
        with pytest.raises(ConfigError, match="32-byte key"):
            decode_key(bad, key="k")


async def test_from_config_reads_keys_and_puts_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    app = parse_config({"app": {"data_dir": "state"}}, root=str(tmp_path))
    env = {"K1": base64.urlsafe_b64encode(K1).decode(), "K2": K2.hex()}
    r = SessionCookieResolver.from_config(
        {"keys": {"k1": "env:K1", "k2": "env:K2"}, "active_key": "k1"}, app=app, env=env
    )
    try:
        new = await r.login("u1")
        assert (tmp_path / "state" / "sessions.db").exists()
        assert new.cookie.startswith("v1.k1.")
        assert (await resolve(r, new.cookie)).user is not None
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    ("raw", "env", "key"),
    [
        ({"keys": {}, "active_key": "k1"}, {}, "identity.session.keys"),
        ({"keys": {"k/1": "env:K1"}, "active_key": "k/1"}, {}, "identity.session.keys.k/1"),
        ({"keys": {"k1": "env:K1"}, "active_key": "k2"}, {}, "identity.session.active_key"),
        (
            {"keys": {"k1": "env:K1"}, "active_key": "k1", "retired_keys": ["k1"]},
            {},
            "identity.session.active_key",
        ),
        ({"keys": {"k1": "env:K1"}, "active_key": "k1"}, {}, "identity.session.keys.k1"),
        ({"keys": {"k1": "env:K1"}, "active_key": "k1"}, {"K1": "abc"}, "identity.session.keys.k1"),
        ({"keys": {"k1": "s3cret"}, "active_key": "k1"}, {}, "identity.session.keys.k1"),
        (
            {"keys": {"k1": "env:K1"}, "active_key": "k1", "cookie_name": "a b"},
            {},
            "identity.session.cookie_name",
        ),
        (
            {"keys": {"k1": "env:K1"}, "active_key": "k1", "device_header": "X-Dev"},
            {},
            "identity.session.device_header",
        ),
        (
            {"keys": {"k1": "env:K1"}, "active_key": "k1", "idle_timeout": 0},
            {},
            "identity.session.idle_timeout",
        ),
        (
            {"keys": {"k1": "env:K1"}, "active_key": "k1", "idle_timeout": 10, "lifetime": 5},
            {},
            "identity.session.idle_timeout",
        ),
        (
            {"keys": {"k1": "env:K1"}, "active_key": "k1", "store": {"backend": "x"}},
            {},
            "identity.session.store.backend",
        ),
        (
            {"keys": {"k1": "env:K1"}, "active_key": "k1", "cookie": "x"},
            {},
            "identity.session.cookie",
        ),
    ],
)
def test_config_errors_name_the_key(raw: dict[str, Any], env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SessionCookieResolver.from_config(raw, env=env)
    assert info.value.key == key


def test_constructor_rejects_short_keys() -> None:
    with pytest.raises(ConfigError, match="32-byte"):
        resolver(keys={"k1": b"short", "k2": K2})
