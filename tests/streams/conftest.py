"""Fixtures of the streams tests: every log contract test runs on each backend through one fixture.

To add a backend, append its name to ``BACKENDS`` and a branch to :func:`make_log_url` (the URL
it is opened with); tests get a fresh, opened backend from the ``log`` fixture and fresh topic
and group names from ``names`` (unique per test, so backends with shared servers need no reset).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from garrison.core import FakeClock
from garrison.streams._backends import open_log
from garrison.streams._backends.base import LogBackend

BACKENDS = ["sqlite", "jetstream"]
"""Backends every contract test runs on."""


async def make_log_url(backend: str, tmp_path: Path) -> str:
    """The URL of a fresh log of ``backend`` (skips when its server is unreachable)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/log.db"
    if backend == "jetstream":
        from .test_jetstream_support import jetstream_url  # skips when NATS is unreachable

        return await jetstream_url()
    raise AssertionError(f"unknown backend {backend}")


@pytest.fixture(params=BACKENDS)
async def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a fresh log, one per backend (a server-side log is dropped afterwards)."""
    url = await make_log_url(request.param, tmp_path)
    yield url
    if request.param == "jetstream":
        from .test_jetstream_support import drop_jetstream

        await drop_jetstream(url)


@pytest.fixture
def clock() -> FakeClock:
    """The clock the ``log`` fixture's backend uses for leases, retention and timestamps."""
    return FakeClock()


@pytest.fixture
async def log(log_url: str, clock: FakeClock) -> AsyncIterator[LogBackend]:
    """An opened backend on a fresh log, closed after the test."""
    backend = open_log(log_url, clock=clock)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
def names() -> Callable[[str], str]:
    """``names("t")`` -> a name unique to this test run (``t_<hex>``), valid everywhere."""
    run = uuid.uuid4().hex[:10]

    def make(prefix: str) -> str:
        return f"{prefix}_{run}_{uuid.uuid4().hex[:6]}"

    return make
