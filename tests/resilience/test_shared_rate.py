"""A rate limit shared by a fleet through Redis: configuration, the pipeline's async admission
step, one client per URL, and fail-open / fail-closed when Redis cannot answer.

The tests that need Redis use the real local one (``GARRISON_TEST_REDIS_URL``, default
``redis://127.0.0.1:6379/0``). They are skipped, saying why, when it is unreachable, except in
CI (``CI=true``), where they fail instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from garrison.core import ConfigError, DeadlineExceeded, deadline_scope
from garrison.resilience import (
    Pipeline,
    PolicyConfig,
    PolicyEvent,
    PolicyRegistry,
    RateLimitConfig,
    Rejected,
    ResilienceSettings,
    SharedRateLimit,
    _ratelimit,
    close_shared_redis_clients,
    resilient,
    shared_redis_client,
)

REDIS_URL = os.environ.get("GARRISON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def closed_port_url() -> str:
    """A Redis URL on a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def shared(url: str, **kw: Any) -> PolicyConfig:
    return PolicyConfig(rate_limit=RateLimitConfig(shared=url, **kw))


async def ok() -> str:
    return "ok"


async def outcome(p: Pipeline) -> str:
    """What one call got: ``ok``, or the refusal's reason."""
    try:
        return await p.call(ok)
    except Rejected as exc:
        return exc.reason


@pytest.fixture
async def clients() -> AsyncIterator[None]:
    """Close the shared clients this test's loop made."""
    yield
    await close_shared_redis_clients()


@pytest.fixture
async def redis_env(clients: None) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A client of the local Redis and a key prefix of this test's own, deleted afterwards."""
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
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


# -- configuration (no Redis needed) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"shared": "http://127.0.0.1:6379"}, "shared"),
        ({"shared": "redis://127.0.0.1:notaport/0"}, "shared"),
        ({"shared": REDIS_URL, "key": ""}, "key"),
        ({"key": "orders"}, "key"),  # a key without shared: the limit would not be shared
        ({"on_redis_error": "deny"}, "on_redis_error"),  # ditto
        ({"redis_timeout": 0.5}, "redis_timeout"),
        ({"redis_backoff": 2.0}, "redis_backoff"),
        ({"shared": REDIS_URL, "on_redis_error": "maybe"}, "on_redis_error"),
        ({"shared": REDIS_URL, "redis_timeout": 0}, "redis_timeout"),
        ({"shared": REDIS_URL, "redis_timeout": math.inf}, "redis_timeout"),
        ({"shared": REDIS_URL, "redis_backoff": -1}, "redis_backoff"),
    ],
)
def test_bad_fields_are_named(fields: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimitConfig(**fields)
    assert info.value.key == key


def test_a_password_in_a_bad_url_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        RateLimitConfig(shared="redis://:hunter2@127.0.0.1:notaport/0")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"rate": 10, "shared": "ftp://x"}, "resilience.edges.a->b.rate_limit.shared"),
        (
            {"rate": 10, "shared": REDIS_URL, "on_redis_error": "maybe"},
            "resilience.edges.a->b.rate_limit.on_redis_error",
        ),
        ({"rate": 10, "key": "k"}, "resilience.edges.a->b.rate_limit.key"),
        (
            {"rate": 10, "shared": REDIS_URL, "redis_timeout": "fast"},
            "resilience.edges.a->b.rate_limit.redis_timeout",
        ),
    ],
)
def test_garrison_toml_errors_name_edge_policy_and_field(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        ResilienceSettings.from_raw({"edges": {"a->b": {"rate_limit": table}}})
    assert info.value.key == key


def test_a_shared_limit_is_refused_at_a_services_door() -> None:
    with pytest.raises(ConfigError) as info:
        ResilienceSettings.from_raw(
            {"inbound": {"devices": {"rate_limit": {"rate": 10, "shared": REDIS_URL}}}}
        )
    assert info.value.key == "resilience.inbound.devices.rate_limit.shared"
    assert "edges" in str(info.value)


def test_the_decorator_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        resilient(rate_limit={"shared": "nope"})
    assert info.value.key == "resilient.rate_limit.shared"


def test_the_key_defaults_to_one_derived_from_the_edge() -> None:
    settings = ResilienceSettings.from_raw(
        {
            "edges": {
                "a->b": {"rate_limit": {"rate": 10, "shared": REDIS_URL}},
                "a->c": {"rate_limit": {"rate": 10, "shared": REDIS_URL, "key": "c-quota"}},
            }
        }
    )
    registry = PolicyRegistry(settings)
    b = registry.pipeline("a", "b")
    assert b.rate is None  # no local bucket besides the shared one
    assert b.shared_rate is not None
    assert b.shared_rate.key == "garrison:ratelimit:a->b"
    c = registry.pipeline("a", "c")
    assert c.shared_rate is not None
    assert c.shared_rate.key == "c-quota"


def test_a_shared_rate_limit_needs_a_url() -> None:
    with pytest.raises(ValueError, match="shared"):
        SharedRateLimit(RateLimitConfig(), key="k")
    assert SharedRateLimit.default_key("a->b /route") == "garrison:ratelimit:a->b /route"


async def test_without_shared_there_is_no_redis_step_at_all() -> None:
    p = Pipeline(PolicyConfig(rate_limit=RateLimitConfig(rate=1e-6, burst=2)))
    assert p.shared_rate is None
    assert p.rate is not None
    assert [await outcome(p) for _ in range(3)] == ["ok", "ok", "rate exceeded"]
    assert _ratelimit._CLIENTS.get(asyncio.get_running_loop()) is None  # no client was made
    assert "rate_limit" not in p.snapshot()


# -- Redis unreachable: allow or deny -----------------------------------------------------------


async def test_redis_down_with_allow_lets_calls_through_counts_and_tells(clients: None) -> None:
    events: list[PolicyEvent] = []
    p = Pipeline(shared(closed_port_url(), rate=1e-6, burst=1), name="a->b")
    p.add_listener(events.append)
    assert [await outcome(p) for _ in range(5)] == ["ok"] * 5  # fail open: no limit at all
    s = p.shared_rate
    assert s is not None
    # One failed trip; the other calls were decided during the backoff, without a trip.
    assert (s.redis_errors, s.allowed_on_error, s.denied_on_error) == (1, 5, 0)
    assert not s.redis_up
    [event] = events
    assert (event.policy, event.name, event.kind) == ("rate_limit", "a->b", "redis_error")
    assert event.data["key"] == "garrison:ratelimit:a->b"
    assert event.data["on_redis_error"] == "allow"
    assert "ConnectionError" in event.data["error"]
    snap = p.snapshot()["rate_limit"]
    assert snap == {
        "shared": "garrison:ratelimit:a->b",
        "redis_up": False,
        "redis_errors": 1,
        "allowed_on_error": 5,
        "denied_on_error": 0,
    }


async def test_redis_down_with_deny_refuses_every_call(clients: None) -> None:
    p = Pipeline(shared(closed_port_url(), on_redis_error="deny", redis_backoff=5.0))
    ran = 0

    async def work() -> str:
        nonlocal ran
        ran += 1
        return "ran"

    for _ in range(3):
        with pytest.raises(Rejected) as info:
            await p.call(work)
        assert (info.value.policy, info.value.reason) == ("rate_limit", "redis unreachable")
        assert info.value.retry_after is not None
        assert 0 < info.value.retry_after <= 5.0
        assert not info.value.retryable
    assert ran == 0
    assert p.rejections == {"rate_limit": 3}
    assert p.shared_rate is not None
    assert (p.shared_rate.redis_errors, p.shared_rate.denied_on_error) == (1, 3)


async def test_without_backoff_every_call_asks_redis(clients: None) -> None:
    p = Pipeline(shared(closed_port_url(), redis_backoff=0.0))
    for _ in range(3):
        assert await outcome(p) == "ok"
    assert p.shared_rate is not None
    assert p.shared_rate.redis_errors == 3


async def test_a_shadowed_shared_limit_only_counts_what_deny_would_refuse(clients: None) -> None:
    p = Pipeline(
        PolicyConfig(
            rate_limit=RateLimitConfig(shared=closed_port_url(), on_redis_error="deny"),
            shadow=("rate_limit",),
        )
    )
    assert [await outcome(p) for _ in range(2)] == ["ok", "ok"]
    assert p.shadow_rejections == {"rate_limit": 2}
    assert p.rejections == {}


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: a Redis that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = server.accept()
                held.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        stop.set()
        t.join(5)
        for conn in held:
            conn.close()
        server.close()


async def test_a_hanging_redis_costs_a_call_at_most_redis_timeout(clients: None) -> None:
    with silent_server() as url:
        p = Pipeline(shared(url, on_redis_error="deny", redis_timeout=0.05, redis_backoff=0.0))
        t0 = time.monotonic()
        with pytest.raises(Rejected, match="redis unreachable"):
            await p.call(ok)
        took = time.monotonic() - t0
        assert 0.04 <= took < 1.0
        assert p.shared_rate is not None
        assert p.shared_rate.redis_errors == 1
        await close_shared_redis_clients()  # while the server still holds the connection


async def test_the_redis_trip_never_outlasts_the_callers_deadline(clients: None) -> None:
    with silent_server() as url:
        p = Pipeline(shared(url, redis_timeout=5.0))
        t0 = time.monotonic()
        with deadline_scope(0.05), pytest.raises(DeadlineExceeded):
            await p.call(ok)  # Redis undecided (allowed), then the spent deadline drops it
        assert time.monotonic() - t0 < 1.0
        await close_shared_redis_clients()


async def test_expired_work_never_makes_the_trip(clients: None) -> None:
    p = Pipeline(shared(closed_port_url()))
    with deadline_scope(0.0), pytest.raises(DeadlineExceeded):
        await p.call(ok)
    assert p.shared_rate is not None
    assert p.shared_rate.redis_errors == 0
    assert _ratelimit._CLIENTS.get(asyncio.get_running_loop()) is None


# -- against the real Redis ---------------------------------------------------------------------


async def test_one_client_per_url_and_loop(redis_env: tuple[aioredis.Redis, str]) -> None:
    client = shared_redis_client(REDIS_URL)
    assert shared_redis_client(REDIS_URL) is client
    assert shared_redis_client(closed_port_url()) is not client
    retry = client.get_retry()
    assert retry is not None
    assert retry.get_retries() == 0  # never retried behind the limiter's back
    assert await client.ping()
    await close_shared_redis_clients()
    assert shared_redis_client(REDIS_URL) is not client


async def test_pipelines_on_one_url_share_its_client(redis_env: tuple[aioredis.Redis, str]) -> None:
    _, prefix = redis_env
    a = Pipeline(shared(REDIS_URL, key=prefix + "a"))
    b = Pipeline(shared(REDIS_URL, key=prefix + "b"))
    assert await outcome(a) == await outcome(b) == "ok"
    assert a.shared_rate is not None
    assert b.shared_rate is not None
    assert a.shared_rate._bucket is not None
    assert b.shared_rate._bucket is not None
    assert a.shared_rate._bucket.client is b.shared_rate._bucket.client
    assert len(_ratelimit._CLIENTS[asyncio.get_running_loop()]) == 1


async def test_refusals_carry_the_wait(redis_env: tuple[aioredis.Redis, str]) -> None:
    _, prefix = redis_env
    p = Pipeline(shared(REDIS_URL, rate=2, burst=2, key=prefix + "w"))
    assert [await outcome(p) for _ in range(2)] == ["ok", "ok"]
    with pytest.raises(Rejected) as info:
        await p.call(ok)
    assert info.value.reason == "rate exceeded"
    assert info.value.retry_after is not None
    assert 0 < info.value.retry_after <= 0.5
    assert p.rejections == {"rate_limit": 1}


async def test_a_failing_redis_is_reported_then_its_recovery(
    redis_env: tuple[aioredis.Redis, str],
) -> None:
    client, prefix = redis_env
    key = prefix + "wrongtype"
    await client.set(key, "not a hash")  # every script run on this key now errors
    events: list[PolicyEvent] = []
    p = Pipeline(shared(REDIS_URL, key=key, on_redis_error="deny", redis_backoff=0.0))
    p.add_listener(events.append)
    assert await outcome(p) == "redis unreachable"
    assert "ResponseError" in events[0].data["error"]
    await client.delete(key)
    assert await outcome(p) == "ok"
    assert [e.kind for e in events] == ["redis_error", "redis_recovered"]
    assert p.shared_rate is not None
    assert p.shared_rate.redis_up


async def test_a_replica_that_starts_full_cannot_overspend_the_burst(
    redis_env: tuple[aioredis.Redis, str],
) -> None:
    """Two replicas at once on a bucket that does not refill in the test: exactly burst."""
    _, prefix = redis_env
    # deny and a generous time limit: a trip slowed down by a loaded machine shows up as a
    # refusal named "redis unreachable", never as a grant.
    cfg = shared(
        REDIS_URL, rate=1e-6, burst=10, key=prefix + "burst", on_redis_error="deny", redis_timeout=5
    )
    a, b = Pipeline(cfg, name="a->b"), Pipeline(cfg, name="a->b")
    results = await asyncio.gather(*(outcome(p) for p in [a, b] * 25))
    assert results.count("ok") == 10
    assert results.count("rate exceeded") == 40


def _replica(cfg: PolicyConfig, until: float, counts: dict[str, int], lock: threading.Lock) -> None:
    """One replica: its own event loop (hence its own Redis client) and pipeline, calling with
    a few concurrent callers until ``until``."""

    async def main() -> None:
        registry = PolicyRegistry(
            ResilienceSettings.from_raw({"edges": {"a->b": {"rate_limit": _ratelimit_table(cfg)}}})
        )
        p = registry.pipeline("a", "b")

        async def caller() -> None:
            while time.monotonic() < until:
                got = await outcome(p)
                with lock:
                    counts[got] = counts.get(got, 0) + 1
                await asyncio.sleep(0.001)

        try:
            await asyncio.gather(*(caller() for _ in range(4)))
        finally:
            await close_shared_redis_clients()

    asyncio.run(main())


def _ratelimit_table(cfg: PolicyConfig) -> dict[str, Any]:
    rl = cfg.rate_limit
    assert rl is not None
    return {
        "rate": rl.rate,
        "burst": rl.burst,
        "shared": rl.shared,
        "key": rl.key,
        "on_redis_error": rl.on_redis_error,
        "redis_timeout": rl.redis_timeout,
    }


@pytest.mark.parametrize(("rate", "burst"), [(40.0, 5.0), (150.0, 20.0), (10.0, 1.0)])
async def test_two_replicas_never_admit_more_than_burst_plus_rate_times_elapsed(
    redis_env: tuple[aioredis.Redis, str], rate: float, burst: float
) -> None:
    _, prefix = redis_env
    # Fail closed, with time to spare: a trip that failed would count as a refusal, not a grant.
    cfg = shared(
        REDIS_URL,
        rate=rate,
        burst=burst,
        key=f"{prefix}fleet",
        on_redis_error="deny",
        redis_timeout=5.0,
    )
    counts: dict[str, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    until = start + 0.4
    replicas = [
        threading.Thread(target=_replica, args=(cfg, until, counts, lock)) for _ in range(2)
    ]
    for t in replicas:
        t.start()
    for t in replicas:
        await asyncio.to_thread(t.join, 10)
        assert not t.is_alive()
    elapsed = time.monotonic() - start
    admitted = counts.get("ok", 0)
    assert set(counts) <= {"ok", "rate exceeded"}, counts  # Redis answered every time
    assert admitted <= burst + rate * elapsed, (admitted, elapsed, counts)
    assert counts.get("rate exceeded", 0) > 0  # the callers did push past the limit
    assert admitted >= burst  # and the limit let the burst through
