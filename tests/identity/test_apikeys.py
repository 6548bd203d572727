"""API keys: issue once, store only a keyed hash, look up by id, compare in constant time."""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock, Unauthenticated, parse_config
from garrison.identity._apikeys import (
    ApiKeyConfig,
    ApiKeyResolver,
    ApiKeyStore,
    MemoryApiKeyStore,
    SqliteApiKeyStore,
)
from garrison.identity._model import CredentialKind, RequestCredentials, Resolution

PEPPER = os.urandom(32)
KEY_SHAPE = re.compile(r"^gk_live_[0-9A-Za-z]{12}_[0-9A-Za-z]{40}$")


def make(
    store: ApiKeyStore | None = None, clock: FakeClock | None = None, **kw: Any
) -> ApiKeyResolver:
    return ApiKeyResolver(
        ApiKeyConfig(pepper="env:PEPPER", **kw),
        pepper=PEPPER,
        store=store or MemoryApiKeyStore(),
        clock=clock or FakeClock(),
    )


async def resolve(r: ApiKeyResolver, key: str) -> Resolution:
    cred = r.find(RequestCredentials(headers={"x-api-key": key}))
    assert cred is not None
    return await r.resolve(cred)


async def reason(r: ApiKeyResolver, key: str) -> str:
    with pytest.raises(Unauthenticated) as info:
        await resolve(r, key)
    return info.value.reason


def any_file_contains(folder: Path, needle: bytes) -> bool:
    return any(needle in f.read_bytes() for f in folder.iterdir())


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ApiKeyStore]:
    s: ApiKeyStore = (
        MemoryApiKeyStore() if request.param == "memory" else SqliteApiKeyStore(tmp_path / "k.db")
    )
    try:
        yield s
    finally:
        await s.aclose()


# -- issue and resolve --------------------------------------------------------------------------


async def test_issue_then_resolve(store: ApiKeyStore) -> None:
    clock = FakeClock()
    r = make(store, clock)
    issued = await r.issue(
        "svc-ci", tenant="t1", roles=["deployer"], scopes=["deploy"], label="ci", lifetime=3600
    )
    assert KEY_SHAPE.match(issued.key)
    assert issued.record.id == issued.key.split("_")[2]
    res = await resolve(r, issued.key)
    assert res.user is not None
    assert (res.user.subject, res.user.tenant, res.user.roles, res.user.scopes) == (
        "svc-ci",
        "t1",
        ("deployer",),
        ("deploy",),
    )
    assert res.auth.credential is CredentialKind.API_KEY
    assert (res.auth.issuer, res.auth.method, res.auth.assurance) == ("api-keys", "api_key", 1)
    assert res.expires_at == clock.time() + 3600


async def test_only_a_keyed_hash_is_stored(tmp_path: Path) -> None:
    store = SqliteApiKeyStore(tmp_path / "k.db")
    r = make(store)
    issued = await r.issue("u1")
    secret = issued.key.rsplit("_", 1)[1]
    record = await store.get(issued.record.id)
    assert record is not None
    assert secret not in msgspec.json.encode(record).decode()
    assert record.digest == r.digest("gk_live", record.id, secret)
    await store.aclose()
    assert not any_file_contains(tmp_path, secret.encode())


async def test_keys_persist_across_reopen(tmp_path: Path) -> None:
    store = SqliteApiKeyStore(tmp_path / "k.db")
    issued = await make(store).issue("u1")
    await store.aclose()
    again = SqliteApiKeyStore(tmp_path / "k.db")
    try:
        assert (await resolve(make(again), issued.key)).user is not None
    finally:
        await again.aclose()


async def test_the_pepper_matters() -> None:
    store = MemoryApiKeyStore()
    issued = await make(store).issue("u1")
    other = ApiKeyResolver(
        ApiKeyConfig(pepper="env:P"), pepper=os.urandom(32), store=store, clock=FakeClock()
    )
    assert await reason(other, issued.key) == "api_key_invalid"


# -- where keys are found -----------------------------------------------------------------------


def test_find() -> None:
    r = make()
    key = "gk_live_" + "A" * 12 + "_" + "b" * 40

    def found(headers: dict[str, str]) -> str | None:
        cred = r.find(RequestCredentials(headers=headers))
        return None if cred is None else cred.value

    assert found({"x-api-key": key}) == key
    assert found({"x-api-key": f" {key} "}) == key
    assert found({"authorization": f"Bearer {key}"}) == key
    assert found({"authorization": f"bearer  {key}"}) == key
    assert found({"authorization": "Bearer eyJhbGciOi.eyJzdWIi.sig"}) is None  # a JWT: not ours
    assert found({"authorization": "Bearer gk_test_" + "A" * 12 + "_" + "b" * 40}) is None
    assert found({"authorization": f"Basic {key}"}) is None
    assert found({}) is None
    cred = r.find(RequestCredentials(headers={"x-api-key": key}))
    assert cred is not None
    assert (cred.kind, cred.resolver) == (CredentialKind.API_KEY, "api_key")


# -- rejections ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "",
        "gk_live",
        "gk_live_",
        "gk_test_AAAAAAAAAAAA_" + "b" * 40,
        "gk_live_AAAAAAAAAAA_" + "b" * 40,  # 11-char id
        "gk_live_AAAAAAAAAAAAA_" + "b" * 40,  # 13-char id
        "gk_live_AAAAAAAAAA-A_" + "b" * 40,
        "gk_live_AAAAAAAAAAAA_" + "b" * 31,  # short secret
        "gk_live_AAAAAAAAAAAA_" + "b" * 65,
        "gk_live_AAAAAAAAAAAA_" + "b" * 39 + "_",
        "gk_live_AAAAAAAAAAAA_" + "b" * 40 + "\n",
        "gk_live_AAAAAAAAAAAA_" + "b" * 39 + "é",
        "gk_live_AAAAAAAAAAAA" + "b" * 40,
        "x" * 10_000,
    ],
)
async def test_malformed_keys(key: str) -> None:
    r = make()
    cred = r.find(RequestCredentials(headers={"x-api-key": "placeholder"}))
    assert cred is not None
    with pytest.raises(Unauthenticated) as info:
        await r.resolve(msgspec.structs.replace(cred, value=key))
    assert info.value.reason == "malformed_api_key"


async def test_unknown_id() -> None:
    assert await reason(make(), "gk_live_AAAAAAAAAAAA_" + "b" * 40) == "api_key_unknown"


async def test_wrong_secret(store: ApiKeyStore) -> None:
    r = make(store)
    issued = await r.issue("u1")
    last = issued.key[-1]
    wrong = issued.key[:-1] + ("a" if last != "a" else "b")
    assert await reason(r, wrong) == "api_key_invalid"


async def test_a_stored_hash_moved_to_another_id_does_not_verify() -> None:
    store = MemoryApiKeyStore()
    r = make(store)
    a, b = await r.issue("alice"), await r.issue("mallory")
    # mallory's row gets alice's digest: mallory's key still fails, alice's secret with
    # mallory's id fails too (the id is inside the MAC)
    store._rows[b.record.id] = msgspec.structs.replace(b.record, digest=a.record.digest)
    alice_secret = a.key.rsplit("_", 1)[1]
    assert await reason(r, f"gk_live_{b.record.id}_{alice_secret}") == "api_key_invalid"


async def test_revocation_takes_effect_at_the_next_request(store: ApiKeyStore) -> None:
    r = make(store)
    issued = await r.issue("u1")
    await resolve(r, issued.key)
    assert await r.revoke(issued.record.id) is True
    assert await reason(r, issued.key) == "api_key_revoked"
    assert await r.revoke("AAAAAAAAAAAA") is False


async def test_secret_is_checked_before_the_status() -> None:
    r = make()
    issued = await r.issue("u1")
    await r.revoke(issued.record.id)
    wrong = issued.key[:-1] + ("a" if issued.key[-1] != "a" else "b")
    assert await reason(r, wrong) == "api_key_invalid"  # reveals nothing about revocation


async def test_expiry(store: ApiKeyStore) -> None:
    clock = FakeClock()
    r = make(store, clock)
    issued = await r.issue("u1", lifetime=60)
    clock.advance(59.9)
    await resolve(r, issued.key)
    clock.advance(0.1)
    assert await reason(r, issued.key) == "api_key_expired"


async def test_lifetime_bounds() -> None:
    r = make(default_lifetime=10.0, max_lifetime=100.0)
    issued = await r.issue("u1")
    assert issued.record.expires - issued.record.created == 10.0
    for bad in (0, -1, 101):
        with pytest.raises(ValueError, match="lifetime"):
            await r.issue("u1", lifetime=bad)


async def test_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module _apikeys calls through
    r = make()
    issued = await r.issue("u1")
    await resolve(r, issued.key)
    assert calls == [(issued.record.digest, issued.record.digest)]


async def test_revoke_subject_and_list(store: ApiKeyStore) -> None:
    clock = FakeClock()
    r = make(store, clock)
    a = await r.issue("alice", label="one")
    clock.advance(1)
    b = await r.issue("alice", label="two")
    c = await r.issue("bob")
    listed = await store.list_for_subject("alice")
    assert [k.label for k in listed] == ["one", "two"]
    assert await r.revoke_subject("alice") == 2
    assert await r.revoke_subject("alice") == 0
    assert await reason(r, a.key) == "api_key_revoked"
    assert await reason(r, b.key) == "api_key_revoked"
    await resolve(r, c.key)
    assert all(k.revoked for k in await store.list_for_subject("alice"))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
async def test_arbitrary_text_is_only_ever_unauthenticated(text: str) -> None:
    r = make()
    cred = r.find(RequestCredentials(headers={"x-api-key": "x"}))
    assert cred is not None
    with pytest.raises(Unauthenticated):
        await r.resolve(msgspec.structs.replace(cred, value=text))


# -- configuration ------------------------------------------------------------------------------


async def test_from_config(tmp_path: Path) -> None:
    pepper = tmp_path / "pepper"
    pepper.write_bytes(os.urandom(24).hex().encode() + b"\n")
    app = parse_config({}, root=str(tmp_path))
    r = ApiKeyResolver.from_config({"pepper": f"file:{pepper}", "prefix": "gk_test"}, app=app)
    try:
        issued = await r.issue("u1")
        assert issued.key.startswith("gk_test_")
        assert (tmp_path / ".garrison" / "api_keys.db").exists()
        await resolve(r, issued.key)
    finally:
        await r.aclose()
    mem = ApiKeyResolver.from_config(
        {"pepper": "env:P", "store": {"backend": "memory"}}, env={"P": "p" * 32}
    )
    assert isinstance(mem.store, MemoryApiKeyStore)
    await mem.aclose()


@pytest.mark.parametrize(
    ("raw", "env", "key"),
    [
        ({}, {}, "identity.api_keys.pepper"),
        ({"pepper": "literal-pepper"}, {}, "identity.api_keys.pepper"),
        ({"pepper": "env:P"}, {}, "identity.api_keys.pepper"),
        ({"pepper": "env:P"}, {"P": "short"}, "identity.api_keys.pepper"),
        ({"pepper": "env:P", "prefix": "GK"}, {}, "identity.api_keys.prefix"),
        ({"pepper": "env:P", "prefix": "gk_live_x"}, {}, "identity.api_keys.prefix"),
        ({"pepper": "env:P", "header": "X-Api-Key"}, {}, "identity.api_keys.header"),
        ({"pepper": "env:P", "max_lifetime": 0}, {}, "identity.api_keys.max_lifetime"),
        (
            {"pepper": "env:P", "default_lifetime": 10, "max_lifetime": 5},
            {},
            "identity.api_keys.default_lifetime",
        ),
        ({"pepper": "env:P", "store": {"backend": "redis"}}, {}, "identity.api_keys.store.backend"),
        ({"pepper": "env:P", "store": {"path": ""}}, {}, "identity.api_keys.store.path"),
    ],
)
def test_config_errors_name_the_key(raw: dict[str, Any], env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ApiKeyResolver.from_config(raw, env=env)
    assert info.value.key == key


def test_constructor_rejects_a_short_pepper() -> None:
    with pytest.raises(ConfigError, match="pepper"):
        ApiKeyResolver(ApiKeyConfig(pepper="env:P"), pepper=b"x", store=MemoryApiKeyStore())
