"""The verified-credential cache: keys, bounds, expiry, rotation, invalidation, single flight."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock, Unauthenticated, convert_section
from garrison.identity import _cache
from garrison.identity._cache import (
    CacheConfig,
    CachedRejection,
    CachedResolver,
    SingleFlight,
    VerifiedCredentialCache,
    credential_digest,
)
from garrison.identity._model import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    DeviceIdentity,
    IdentityAction,
    RequestCredentials,
    Resolution,
    UserIdentity,
)


def cred(value: str = "tok", *, resolver: str = "jwt", device: str | None = None) -> Credential:
    return Credential(kind=CredentialKind.JWT, value=value, resolver=resolver, device_id=device)


def res(
    expires_at: float, *, subject: str | None = "u1", device: str | None = None, **kw: Any
) -> Resolution:
    return Resolution(
        auth=Authentication(credential=CredentialKind.JWT, assurance=Assurance.AAL1),
        expires_at=expires_at,
        user=UserIdentity(subject=subject) if subject else None,
        device=DeviceIdentity(id=device) if device else None,
        **kw,
    )


def make(**kw: Any) -> tuple[VerifiedCredentialCache, FakeClock]:
    clock = FakeClock()
    return VerifiedCredentialCache(CacheConfig(**kw), clock=clock), clock


# -- keys ---------------------------------------------------------------------------------------


def test_key_is_a_sha256_digest_never_the_raw_value() -> None:
    cache, clock = make()
    secret = "eyJ.very-secret-token-value"
    cache.put(cred(secret), res(clock.time() + 60))
    (key,) = cache._entries
    assert len(key) == 32
    assert secret.encode() not in key
    assert secret not in repr(cache._entries)


def test_key_covers_resolver_kind_device_and_value() -> None:
    base = cred("v")
    variants = [
        cred("v2"),
        cred("v", resolver="other"),
        cred("v", device="d1"),
        msgspec.structs.replace(base, kind=CredentialKind.OPAQUE),
    ]
    digests = {credential_digest(c) for c in [base, *variants]}
    assert len(digests) == 5


def test_digest_of_a_value_that_is_not_valid_unicode() -> None:
    assert len(credential_digest(cred("bad\udcff"))) == 32


# -- hits, misses, expiry -----------------------------------------------------------------------


def test_hit_and_miss_counters() -> None:
    cache, clock = make()
    assert cache.get(cred()) is None
    r = res(clock.time() + 60)
    cache.put(cred(), r)
    assert cache.get(cred()) is r
    assert cache.get(cred("other")) is None
    s = cache.stats
    assert (s.hits, s.misses, s.size) == (1, 2, 1)


def test_entry_never_outlives_the_credential() -> None:
    cache, clock = make(max_ttl=300)
    cache.put(cred(), res(clock.time() + 10))
    clock.advance(9.9)
    assert cache.get(cred()) is not None
    clock.advance(0.1)
    assert cache.get(cred()) is None


def test_entry_never_outlives_max_ttl() -> None:
    cache, clock = make(max_ttl=30)
    cache.put(cred(), res(clock.time() + 3600))
    clock.advance(29.9)
    assert cache.get(cred()) is not None
    clock.advance(0.1)
    assert cache.get(cred()) is None


def test_per_entry_ttl_shortens_but_never_lengthens() -> None:
    cache, clock = make(max_ttl=30)
    cache.put(cred("a"), res(clock.time() + 3600), ttl=5)
    cache.put(cred("b"), res(clock.time() + 3600), ttl=500)
    clock.advance(5)
    assert cache.get(cred("a")) is None
    assert cache.get(cred("b")) is not None
    clock.advance(25)
    assert cache.get(cred("b")) is None


def test_already_expired_is_not_stored() -> None:
    cache, clock = make()
    cache.put(cred(), res(clock.time() - 1))
    assert len(cache) == 0


def test_degraded_or_action_resolutions_are_not_cached() -> None:
    cache, clock = make()
    cache.put(cred("a"), res(clock.time() + 60, degraded=True))
    action = IdentityAction(kind="set_cookie", name="s", value="v")
    cache.put(cred("b"), res(clock.time() + 60, actions=(action,)))
    assert len(cache) == 0


# -- bounds -------------------------------------------------------------------------------------


def test_lru_eviction_keeps_the_recently_used() -> None:
    cache, clock = make(max_entries=2)
    exp = clock.time() + 60
    cache.put(cred("a"), res(exp))
    cache.put(cred("b"), res(exp))
    assert cache.get(cred("a")) is not None  # a is now the most recent
    cache.put(cred("c"), res(exp))
    assert cache.get(cred("b")) is None
    assert cache.get(cred("a")) is not None
    assert cache.get(cred("c")) is not None
    assert cache.stats.evictions == 1
    assert len(cache) == 2


def test_eviction_cleans_the_subject_index() -> None:
    cache, clock = make(max_entries=1)
    cache.put(cred("a"), res(clock.time() + 60, subject="s1"))
    cache.put(cred("b"), res(clock.time() + 60, subject="s2"))
    assert set(cache._by_owner) == {"u\0s2"}


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(0, 6), st.floats(0.5, 100)),
            st.tuples(st.just("get"), st.integers(0, 6), st.just(0.0)),
            st.tuples(st.just("advance"), st.just(0), st.floats(0, 50)),
            st.tuples(st.just("subject"), st.integers(0, 2), st.just(0.0)),
        ),
        max_size=60,
    )
)
def test_never_serves_an_expired_entry_and_stays_bounded(
    ops: list[tuple[str, int, float]],
) -> None:
    cache, clock = make(max_entries=3, max_ttl=40)
    deadline: dict[int, float] = {}
    for op, n, x in ops:
        c = cred(f"t{n}")
        if op == "put":
            cache.put(c, res(clock.time() + x, subject=f"s{n % 3}"))
            deadline[n] = min(clock.time() + x, clock.time() + 40)
        elif op == "get":
            hit = cache.get(c)
            if hit is not None:
                assert clock.time() < deadline[n]
        elif op == "advance":
            clock.advance(x)
        else:
            cache.invalidate_subject(f"s{n}")
            for k in [k for k in deadline if k % 3 == n]:
                deadline[k] = -1.0  # invalidated: must never be served again
        assert len(cache) <= 3
        assert sum(len(v) for v in cache._by_owner.values()) == len(cache)


# -- rotation and invalidation ------------------------------------------------------------------


def test_generation_change_drops_the_entry() -> None:
    cache, clock = make()
    cache.put(cred(), res(clock.time() + 60), generation="k1")
    assert cache.get(cred(), generation="k1") is not None
    assert cache.get(cred(), generation="k2") is None
    assert len(cache) == 0  # dropped, not merely skipped
    assert cache.get(cred(), generation="k1") is None
    assert cache.stats.invalidations == 1


def test_invalidate_by_credential_subject_and_device() -> None:
    cache, clock = make()
    exp = clock.time() + 60
    cache.put(cred("a"), res(exp, subject="alice"))
    cache.put(cred("b"), res(exp, subject="alice"))
    cache.put(cred("c"), res(exp, subject="bob", device="d1"))
    cache.put(cred("d"), res(exp, subject=None, device="d1"))
    assert cache.invalidate(cred("a")) is True
    assert cache.invalidate(cred("a")) is False
    assert cache.invalidate_subject("alice") == 1
    assert cache.get(cred("b")) is None
    assert cache.invalidate_device("d1") == 2
    assert len(cache) == 0
    assert cache._by_owner == {}


def test_clear() -> None:
    cache, clock = make()
    cache.put(cred("a"), res(clock.time() + 60))
    cache.put_rejection(cred("b"), Unauthenticated("no", reason="bad"))
    cache.clear()
    assert cache.lookup(cred("a")) is None
    assert cache.lookup(cred("b")) is None


# -- negative entries and stale serving ---------------------------------------------------------


def test_rejections_are_remembered_briefly() -> None:
    cache, clock = make(negative_ttl=5)
    cache.put_rejection(cred(), Unauthenticated("token revoked", reason="token_inactive"))
    hit = cache.lookup(cred())
    assert isinstance(hit, CachedRejection)
    err = hit.error()
    assert err.reason == "token_inactive"
    assert "token revoked" in str(err)
    assert cache.get(cred()) is None  # get() only serves positives
    clock.advance(5)
    assert cache.lookup(cred()) is None
    assert cache.stats.negative_hits == 1


def test_rejection_flood_is_bounded_and_spares_good_entries() -> None:
    cache, clock = make(max_entries=10, max_negative_entries=3)
    cache.put(cred("good"), res(clock.time() + 60))
    for i in range(100):
        cache.put_rejection(cred(f"junk{i}"), Unauthenticated("x", reason="bad"))
    assert cache.stats.negative_size == 3
    assert cache.get(cred("good")) is not None


def test_success_replaces_a_rejection() -> None:
    cache, clock = make()
    cache.put_rejection(cred(), Unauthenticated("x", reason="bad"))
    cache.put(cred(), res(clock.time() + 60))
    assert isinstance(cache.lookup(cred()), Resolution)


def test_stale_entries_only_through_get_stale_and_marked_degraded() -> None:
    cache, clock = make(max_ttl=10, stale_ttl=20)
    cache.put(cred(), res(clock.time() + 25))
    assert cache.get_stale(cred()) is not None  # fresh entries may also be served stale
    clock.advance(10)
    assert cache.get(cred()) is None
    stale = cache.get_stale(cred())
    assert stale is not None
    assert stale.degraded
    clock.advance(15)  # past the credential's own expiry (25) though within stale_ttl
    assert cache.get_stale(cred()) is None


def test_stale_disabled_by_default() -> None:
    cache, clock = make(max_ttl=10)
    cache.put(cred(), res(clock.time() + 100))
    clock.advance(10)
    assert cache.get_stale(cred()) is None


# -- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"max_entries": 0}, "identity.cache.max_entries"),
        ({"max_ttl": 0}, "identity.cache.max_ttl"),
        ({"negative_ttl": 120}, "identity.cache.negative_ttl"),
        ({"stale_ttl": -1}, "identity.cache.stale_ttl"),
        ({"max_negative_entries": -1}, "identity.cache.max_negative_entries"),
        ({"max_size": 1}, "identity.cache.max_size"),
    ],
)
def test_config_errors_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert_section(raw, CacheConfig, key="identity.cache")
    assert info.value.key == key


# -- CachedResolver -----------------------------------------------------------------------------


class CountingResolver:
    name = "counting"

    def __init__(self, clock: FakeClock) -> None:
        self.calls = 0
        self.clock = clock
        self.bad: set[str] = set()

    def find(self, request: RequestCredentials) -> Credential | None:
        value = request.headers.get("x-token")
        return None if value is None else cred(value, resolver=self.name)

    async def resolve(self, credential: Credential) -> Resolution:
        self.calls += 1
        if credential.value in self.bad:
            raise Unauthenticated("bad token", reason="bad_signature")
        return res(self.clock.time() + 60)


async def test_cached_resolver_skips_the_inner_resolver_on_a_hit() -> None:
    cache, clock = make()
    inner = CountingResolver(clock)
    gen = ["k1"]
    resolver = CachedResolver(inner, cache, generation=lambda: gen[0])
    c = resolver.find(RequestCredentials(headers={"x-token": "t"}))
    assert c is not None
    assert resolver.find(RequestCredentials(headers={})) is None
    first = await resolver.resolve(c)
    assert await resolver.resolve(c) == first
    assert inner.calls == 1
    gen[0] = "k2"  # key rotation: verified again under the new keys
    await resolver.resolve(c)
    assert inner.calls == 2


async def test_cached_resolver_remembers_rejections_briefly() -> None:
    cache, clock = make(negative_ttl=2)
    inner = CountingResolver(clock)
    inner.bad.add("t")
    resolver = CachedResolver(inner, cache)
    for _ in range(3):
        with pytest.raises(Unauthenticated) as info:
            await resolver.resolve(cred("t", resolver="counting"))
        assert info.value.reason == "bad_signature"
    assert inner.calls == 1
    clock.advance(2)
    with pytest.raises(Unauthenticated):
        await resolver.resolve(cred("t", resolver="counting"))
    assert inner.calls == 2


async def test_cached_resolver_hashes_a_credential_once_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache, clock = make(negative_ttl=2)
    inner = CountingResolver(clock)
    inner.bad.add("bad")
    resolver = CachedResolver(inner, cache)
    hashed: list[Credential] = []
    real = _cache.credential_digest

    def counting(credential: Credential) -> bytes:
        hashed.append(credential)
        return real(credential)

    monkeypatch.setattr(_cache, "credential_digest", counting)
    good, bad = cred("good", resolver="counting"), cred("bad", resolver="counting")
    await resolver.resolve(good)  # miss: lookup, resolve, put
    assert len(hashed) == 1
    await resolver.resolve(good)  # hit
    assert len(hashed) == 2
    with pytest.raises(Unauthenticated):
        await resolver.resolve(bad)  # miss: lookup, resolve, put_rejection
    assert len(hashed) == 3
    assert isinstance(cache.lookup(good), Resolution)
    assert isinstance(cache.lookup(bad), CachedRejection)


def test_a_digest_given_is_the_key_used() -> None:
    cache, clock = make(stale_ttl=10)
    c = cred("t")
    d = credential_digest(c)
    cache.put(c, res(clock.time() + 60), ttl=1, digest=d)
    assert cache.get(cred("t")) is not None
    assert cache.lookup(c, digest=d) == cache.get(c, digest=d)
    clock.advance(2)
    assert cache.get_stale(c, digest=d) is not None
    assert cache.invalidate(c, digest=d)
    assert cache.lookup(c) is None
    cache.put_rejection(c, Unauthenticated("no", reason="bad"), digest=d)
    assert isinstance(cache.lookup(cred("t")), CachedRejection)


# -- SingleFlight -------------------------------------------------------------------------------


async def test_single_flight_collapses_concurrent_calls() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()
    calls = 0

    async def work() -> int:
        nonlocal calls
        calls += 1
        await gate.wait()
        return 42

    tasks = [asyncio.create_task(flight.do("k", work)) for _ in range(10)]
    await asyncio.sleep(0)
    assert len(flight) == 1
    gate.set()
    assert await asyncio.gather(*tasks) == [42] * 10
    assert calls == 1
    assert len(flight) == 0


async def test_single_flight_shares_errors_and_survives_a_cancelled_waiter() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        raise Unauthenticated("nope", reason="bad")

    first = asyncio.create_task(flight.do("k", work))
    second = asyncio.create_task(flight.do("k", work))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    gate.set()
    with pytest.raises(Unauthenticated):
        await second
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_single_flight_aclose_cancels_running_work() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def forever() -> int:
        await asyncio.Event().wait()
        return 0

    waiter = asyncio.create_task(flight.do("k", forever))
    await asyncio.sleep(0)
    await flight.aclose()
    with pytest.raises(asyncio.CancelledError):
        await waiter
