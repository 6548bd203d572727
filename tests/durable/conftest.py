"""Fixtures of the durable tests: every engine test runs on each store through one fixture."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from garrison.core import FakeClock
from garrison.durable import Engine, EngineConfig, MemoryStore, Store
from garrison.durable._stores.sqlite import SqliteStore

PG_URL = os.environ.get("GARRISON_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
"""The PostgreSQL database of the tests; each test gets its own fresh schema in it."""


async def pg_reachable() -> None:
    """Skip the test when PostgreSQL is unreachable (fail instead when CI=true)."""
    import asyncpg  # type: ignore[import-untyped]

    try:
        conn = await asyncpg.connect(PG_URL, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {PG_URL} is unreachable in CI: {exc!r}")
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable: {exc!r}")
    await conn.close()


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh, unique PostgreSQL schema name, dropped after the test."""
    await pg_reachable()
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield schema
    await drop_schema(schema)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "postgres":
        from garrison.durable._stores.postgres import PostgresStore

        await pg_reachable()
        schema = f"t_{uuid.uuid4().hex[:16]}"
        s: Store = PostgresStore(PG_URL, schema=schema)
        try:
            await s.open()
            yield s
            await s.close()
        finally:
            await drop_schema(schema)
        return
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "wf.db")
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def drain(rounds: int = 30) -> None:
    """Let every ready task run (the memory store never blocks; SQLite and PostgreSQL need real
    waits)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


WAIT = 30.0
"""Real-time bound of every wait in these tests. It only bounds a failure: a passing test never
waits for it to run out, because it waits for the state it depends on (time itself is a
FakeClock), so a loaded machine makes tests slower, never red."""


async def until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = WAIT
) -> None:
    """Wait (in real time, at most ``timeout``) until ``check()`` is true."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        ok = check()
        if not isinstance(ok, bool):
            ok = await ok
        if ok:
            return
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def make_engine(store: Store, clock: FakeClock) -> AsyncIterator[EngineFactory]:
    engines: list[Engine] = []

    async def make(*workflows: Any, **config: Any) -> Engine:
        cfg = EngineConfig(**{"poll_interval": 0.5, **config})
        e = Engine(store, workflows=list(workflows), config=cfg, clock=clock)
        await e.open()
        engines.append(e)
        return e

    yield make
    for e in engines:
        await e.close()


async def advance(clock: FakeClock, seconds: float) -> None:
    """Move the fake clock and let what woke up run (store I/O included)."""
    clock.advance(seconds)
    for _ in range(5):
        await drain()
        await asyncio.sleep(0.001)
