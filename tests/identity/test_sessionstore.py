"""Session stores: the same contract on memory, SQLite (tmp_path) and the real local Redis."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from garrison.core import ConfigError, FakeClock, ServiceUnavailable, convert_section
from garrison.identity._model import Assurance
from garrison.identity._sessionstore import (
    MemorySessionStore,
    RedisSessionStore,
    Session,
    SessionStore,
    SessionStoreConfig,
    SqliteSessionStore,
    StoreUnavailable,
    new_session_id,
    open_session_store,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


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


def make_session(clock: FakeClock, subject: str = "u1", **kw: Any) -> Session:
    now = clock.time()
    base: dict[str, Any] = {
        "id": new_session_id(),
        "subject": subject,
        "tenant": "t1",
        "roles": ("admin",),
        "scopes": ("read", "write"),
        "device_id": "dev-1",
        "method": "mfa",
        "assurance": Assurance.AAL2,
        "auth_time": now - 5,
        "created": now,
        "expires": now + 3600,
        "idle_timeout": 600.0,
        "last_seen": now,
    }
    base.update(kw)
    return Session(**base)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[SessionStore]:
    s: SessionStore
    if request.param == "memory":
        s = MemorySessionStore()
    elif request.param == "sqlite":
        s = SqliteSessionStore(tmp_path / "data" / "sessions.db", clock=clock)
    else:
        await redis_or_skip()
        prefix = f"garrison-test:{uuid.uuid4().hex}:"
        s = RedisSessionStore.from_url(REDIS_URL, prefix=prefix, clock=clock)
    try:
        yield s
    finally:
        if isinstance(s, RedisSessionStore):
            keys = [k async for k in s._r.scan_iter(match=f"{s._prefix}*")]
            if keys:
                await s._r.delete(*keys)
        await s.aclose()


# -- the contract -------------------------------------------------------------------------------


def test_session_ids_are_256_random_bits() -> None:
    ids = {new_session_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 43 for i in ids)


async def test_create_then_get_round_trips(store: SessionStore, clock: FakeClock) -> None:
    s = make_session(clock)
    await store.create(s)
    assert await store.get(s.id) == s


async def test_unknown_session_is_none(store: SessionStore) -> None:
    assert await store.get(new_session_id()) is None


async def test_touch_moves_last_seen(store: SessionStore, clock: FakeClock) -> None:
    s = make_session(clock)
    await store.create(s)
    assert await store.touch(s, s.last_seen + 100) is True
    got = await store.get(s.id)
    assert got is not None
    assert got.last_seen == s.last_seen + 100
    assert got.idle_deadline == s.last_seen + 100 + s.idle_timeout


async def test_touch_unknown_or_revoked_is_false(store: SessionStore, clock: FakeClock) -> None:
    s = make_session(clock)
    assert await store.touch(s, clock.time()) is False
    await store.create(s)
    assert await store.revoke(s.id) is True
    assert await store.touch(s, clock.time() + 1) is False
    got = await store.get(s.id)
    assert got is not None
    assert got.revoked  # a renewal never un-revokes
    assert got.last_seen == s.last_seen


async def test_revoke(store: SessionStore, clock: FakeClock) -> None:
    s = make_session(clock)
    await store.create(s)
    assert await store.revoke(s.id) is True
    got = await store.get(s.id)
    assert got is not None
    assert got.revoked
    assert await store.revoke(new_session_id()) is False


async def test_revoke_all_for_subject(store: SessionStore, clock: FakeClock) -> None:
    mine = [make_session(clock, "alice") for _ in range(3)]
    other = make_session(clock, "bob")
    for s in [*mine, other]:
        await store.create(s)
    await store.revoke(mine[0].id)
    assert await store.revoke_all_for_subject("alice") == 2  # the already revoked one not counted
    for s in mine:
        got = await store.get(s.id)
        assert got is not None
        assert got.revoked
    bob = await store.get(other.id)
    assert bob is not None
    assert not bob.revoked
    assert await store.revoke_all_for_subject("nobody") == 0


async def test_renewal_racing_revocation_never_unrevokes(
    store: SessionStore, clock: FakeClock
) -> None:
    s = make_session(clock)
    await store.create(s)
    await asyncio.gather(*(store.touch(s, clock.time() + i) for i in range(20)), store.revoke(s.id))
    got = await store.get(s.id)
    assert got is not None
    assert got.revoked


async def test_unbound_session_round_trips(store: SessionStore, clock: FakeClock) -> None:
    s = make_session(clock, device_id=None, tenant=None, roles=(), scopes=())
    await store.create(s)
    assert await store.get(s.id) == s


# -- backend specifics --------------------------------------------------------------------------


async def test_sqlite_is_wal_and_never_holds_the_session_id(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "sessions.db"
    store = SqliteSessionStore(path, clock=clock)
    s = make_session(clock)
    await store.create(s)
    await store.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        dump = "\n".join(conn.iterdump())
    conn.close()
    assert s.id not in dump
    assert s.id.encode() not in path.read_bytes()
    # and a new store on the same file sees the session
    again = SqliteSessionStore(path, clock=clock)
    try:
        assert await again.get(s.id) == s
    finally:
        await again.aclose()


async def test_sqlite_purges_dead_records_after_the_grace(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteSessionStore(tmp_path / "s.db", clock=clock, grace=60)
    try:
        s = make_session(clock, idle_timeout=100.0)
        live = make_session(clock, idle_timeout=1000.0)
        await store.create(s)
        await store.create(live)
        clock.advance(150)  # idle deadline 100 + grace 60 not yet passed
        assert await store.purge_expired() == 0
        clock.advance(20)
        assert await store.purge_expired() == 1
        assert await store.get(s.id) is None
        assert await store.get(live.id) is not None
    finally:
        await store.aclose()


async def test_sqlite_purges_every_so_many_creates(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteSessionStore(tmp_path / "s.db", clock=clock, grace=0, purge_every=3)
    try:
        old = make_session(clock, idle_timeout=10.0)
        await store.create(old)
        clock.advance(11)
        await store.create(make_session(clock))
        await store.create(make_session(clock))  # third create: purge runs
        assert await store.get(old.id) is None
    finally:
        await store.aclose()


async def test_sqlite_closed_store_is_unavailable(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteSessionStore(tmp_path / "s.db", clock=clock)
    await store.aclose()
    await store.aclose()  # idempotent
    with pytest.raises(StoreUnavailable):
        await store.get(new_session_id())


async def test_sqlite_unwritable_path_is_unavailable(tmp_path: Path, clock: FakeClock) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = SqliteSessionStore(blocker / "s.db", clock=clock)
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.create(make_session(clock))
        assert isinstance(info.value, ServiceUnavailable)  # a 503, not a 401
    finally:
        await store.aclose()


async def test_redis_ttl_follows_the_session(clock: FakeClock) -> None:
    await redis_or_skip()
    prefix = f"garrison-test:{uuid.uuid4().hex}:"
    store = RedisSessionStore.from_url(REDIS_URL, prefix=prefix, clock=clock)
    try:
        s = make_session(clock, idle_timeout=600.0)
        await store.create(s)
        key = store._key(s.id)
        ttl = await store._r.pttl(key)
        assert 899_000 <= ttl <= 900_000  # idle 600 s + grace 300 s
        clock.advance(200)
        assert await store.touch(s, clock.time())
        ttl = await store._r.pttl(key)
        assert 899_000 <= ttl <= 900_000  # pushed out from the renewal
        keys = [k async for k in store._r.scan_iter(match=f"{prefix}*")]
        assert all(s.id.encode() not in k for k in keys)  # keyed by a hash of the id
        subject_ttl = await store._r.pttl(f"{prefix}u:{s.subject}")
        assert subject_ttl >= 3_800_000  # kept as long as the longest session
        await store._r.delete(*keys)
    finally:
        await store.aclose()


async def test_redis_forgets_sessions_after_their_ttl(clock: FakeClock) -> None:
    await redis_or_skip()
    prefix = f"garrison-test:{uuid.uuid4().hex}:"
    store = RedisSessionStore.from_url(REDIS_URL, prefix=prefix, clock=clock)
    store._grace = 0.0
    try:
        s = make_session(clock, idle_timeout=0.05, expires=clock.time() + 0.05)
        await store.create(s)
        await asyncio.sleep(0.2)
        assert await store.get(s.id) is None
        assert await store.revoke_all_for_subject(s.subject) == 0
    finally:
        await store.aclose()


async def test_redis_unreachable_is_unavailable(clock: FakeClock) -> None:
    store = RedisSessionStore.from_url("redis://127.0.0.1:1/0", clock=clock, timeout=0.5)
    try:
        for call in (
            store.get(new_session_id()),
            store.create(make_session(clock)),
            store.revoke(new_session_id()),
        ):
            with pytest.raises(StoreUnavailable) as info:
                await call
            assert "redis session store" in str(info.value)
    finally:
        await store.aclose()


# -- configuration ------------------------------------------------------------------------------


async def test_open_session_store_picks_the_backend(tmp_path: Path, clock: FakeClock) -> None:
    mem = open_session_store(SessionStoreConfig(backend="memory"))
    assert isinstance(mem, MemorySessionStore)
    sq = open_session_store(SessionStoreConfig(), data_dir=tmp_path / "data", clock=clock)
    assert isinstance(sq, SqliteSessionStore)
    await sq.create(make_session(clock))
    assert (tmp_path / "data" / "sessions.db").exists()
    await sq.aclose()
    rd = open_session_store(SessionStoreConfig(backend="redis"), clock=clock)
    assert isinstance(rd, RedisSessionStore)
    await rd.aclose()


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"backend": "mongo"}, "identity.session.store.backend"),
        ({"path": ""}, "identity.session.store.path"),
        ({"redis_url": "http://x"}, "identity.session.store.redis_url"),
        ({"timeout": 0}, "identity.session.store.timeout"),
        ({"ttl": 5}, "identity.session.store.ttl"),
    ],
)
def test_store_config_errors_name_the_key(raw: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        convert_section(raw, SessionStoreConfig, key="identity.session.store")
    assert info.value.key == key
