"""Token buckets: the local one with a fake clock, the Redis one against the real local Redis."""

from __future__ import annotations

import asyncio
import math
import os
import random
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
import redis.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from garrison.core import ConfigError, FakeClock
from garrison.resilience._ratelimit import RateLimitConfig, RedisTokenBucket, TokenBucket


def bucket(rate: float, burst: float, clock: FakeClock) -> TokenBucket:
    return TokenBucket(RateLimitConfig(rate=rate, burst=burst), clock=clock)


# -- local --------------------------------------------------------------------------------------


def test_starts_full_then_refuses() -> None:
    tb = bucket(10, 5, FakeClock())
    assert [tb.try_acquire() for _ in range(7)] == [True] * 5 + [False] * 2


def test_lazy_refill_capped_at_burst() -> None:
    clock = FakeClock()
    tb = bucket(10, 5, clock)
    for _ in range(5):
        assert tb.try_acquire()
    clock.advance(0.25)
    assert tb.tokens == pytest.approx(2.5)
    assert tb.try_acquire(2)
    assert not tb.try_acquire()
    clock.advance(100)
    assert tb.tokens == 5
    assert tb.try_acquire(5)
    assert not tb.try_acquire(0.5)


def test_refused_takes_nothing() -> None:
    clock = FakeClock()
    tb = bucket(1, 3, clock)
    assert tb.try_acquire(2)
    assert not tb.try_acquire(2)
    assert tb.try_acquire(1)


def test_wait_time() -> None:
    clock = FakeClock()
    tb = bucket(4, 2, clock)
    assert tb.wait_time(2) == 0
    assert tb.try_acquire(2)
    assert tb.wait_time(1) == pytest.approx(0.25)
    assert tb.wait_time(2) == pytest.approx(0.5)
    assert tb.wait_time(3) == math.inf
    assert tb.tokens == 0  # looking took nothing
    clock.advance(0.25)
    assert tb.try_acquire(1)


def test_clock_going_backwards_grants_nothing_extra() -> None:
    clock = FakeClock()
    tb = bucket(1, 1, clock)
    assert tb.try_acquire()
    clock._mono -= 10  # a misbehaving clock
    assert not tb.try_acquire()
    clock._mono += 10.5
    assert not tb.try_acquire()
    clock.advance(0.5)
    assert tb.try_acquire()


@pytest.mark.parametrize(("field", "value"), [("rate", 0), ("rate", math.inf), ("burst", 0.5)])
def test_bad_config_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimitConfig(**{field: value})
    assert info.value.key == field


@settings(max_examples=150, deadline=None)
@given(
    rate=st.floats(0.1, 1_000, allow_nan=False),
    burst=st.floats(1, 100, allow_nan=False),
    steps=st.lists(
        st.tuples(st.floats(0, 2, allow_nan=False), st.floats(0, 20, allow_nan=False)),
        max_size=150,
    ),
)
def test_never_grants_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: float, steps: list[tuple[float, float]]
) -> None:
    clock = FakeClock(start=0.0)
    tb = bucket(rate, burst, clock)
    granted = 0.0
    for dt, n in steps:
        clock.advance(dt)
        if tb.try_acquire(n):
            granted += n
        limit = burst + rate * clock.monotonic()
        assert granted <= limit * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(
    rate=st.floats(0.1, 1_000, allow_nan=False),
    burst=st.integers(1, 50),
    takes=st.lists(st.floats(0.01, 50, allow_nan=False), max_size=50),
)
def test_waiting_the_wait_time_is_enough(rate: float, burst: int, takes: list[float]) -> None:
    clock = FakeClock(start=0.0)
    tb = bucket(rate, burst, clock)
    for n in takes:
        wait = tb.wait_time(n)
        if n > burst:
            assert wait == math.inf
            assert not tb.try_acquire(n)
            continue
        clock.advance(wait * (1 + 1e-9) + 1e-12)
        assert tb.try_acquire(n)


# -- Redis --------------------------------------------------------------------------------------

REDIS_URL = os.environ.get("GARRISON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def redis_env() -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A client of the local Redis and a key prefix of this test's own, deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, redis.exceptions.ConnectionError) as exc:
        await client.aclose()
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {REDIS_URL} is unreachable, and CI needs it: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable ({exc}); start it to run this test")
    prefix = f"garrison-test:{uuid.uuid4().hex}:"
    try:
        yield client, prefix
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


SLOW = 1e-6  # tokens per second: nothing refills while a test runs


async def test_redis_burst_then_refuse(redis_env: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_env
    tb = RedisTokenBucket(client, prefix + "b", RateLimitConfig(rate=SLOW, burst=5))
    assert [await tb.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    wait = await tb.wait_time()
    assert 0 < wait <= 1 / SLOW
    assert await tb.wait_time(6) == math.inf
    assert await tb.acquire_or_wait_time() > 0
    await tb.reset()
    assert await tb.try_acquire(5)


async def test_redis_replicas_share_one_limit(redis_env: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_env
    other = aioredis.Redis.from_url(REDIS_URL)  # a second replica, its own connection
    try:
        policy = RateLimitConfig(rate=SLOW, burst=10)
        a = RedisTokenBucket(client, prefix + "shared", policy)
        b = RedisTokenBucket(other, prefix + "shared", policy)
        results = await asyncio.gather(*(t.try_acquire() for t in [a, b] * 25))
        assert sum(results) == 10  # atomic: never more than the burst, whoever asks
        assert not await a.try_acquire()
        assert not await b.try_acquire()
    finally:
        await other.aclose()


async def test_redis_matches_the_local_bucket(redis_env: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_env
    policy = RateLimitConfig(rate=SLOW, burst=20)
    remote = RedisTokenBucket(client, prefix + "same", policy)
    local = TokenBucket(policy, clock=FakeClock())
    rng = random.Random(3)
    for _ in range(40):
        n = rng.choice([0.5, 1, 2, 3, 7])
        assert await remote.try_acquire(n) == local.try_acquire(n)


async def test_redis_refills_on_redis_time(redis_env: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_env
    tb = RedisTokenBucket(client, prefix + "refill", RateLimitConfig(rate=50, burst=1))
    assert await tb.try_acquire()
    wait = await tb.acquire_or_wait_time()
    if wait == 0:  # this machine was slow enough for a token to come back: fine
        return
    assert 0 < wait <= 1 / 50
    for _ in range(50):  # behaviour, not timing: waiting what it says eventually succeeds
        await asyncio.sleep(wait)
        if await tb.try_acquire():
            return
        wait = await tb.wait_time()
    pytest.fail("the bucket never refilled")


async def test_redis_idle_key_expires_when_full(redis_env: tuple[aioredis.Redis, str]) -> None:
    client, prefix = redis_env
    key = prefix + "ttl"
    tb = RedisTokenBucket(client, key, RateLimitConfig(rate=10, burst=5))
    assert await tb.try_acquire(2)
    ttl = await client.pttl(key)
    assert 0 < ttl <= 2 / 10 * 1000 + 1
    assert not await tb.wait_time(1)  # looking writes nothing
    assert await client.pttl(key) <= ttl
