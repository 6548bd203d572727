"""Helpers for the tests that need the local NATS server with JetStream (no tests here).

Every test gets a log of its own: a fresh ``prefix`` (its streams, subjects and KV buckets),
dropped afterwards with :meth:`JetStreamLog.destroy`. When the server is unreachable the test
is skipped with the reason, except when ``CI=true``, where it fails.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from urllib.parse import urlsplit

import pytest

from garrison.streams._backends import open_log

NATS_URL = os.environ.get("GARRISON_TEST_NATS_URL", "nats://127.0.0.1:4222")


async def require_nats() -> None:
    """Skip (or fail when ``CI=true``) unless the NATS server answers on its port."""
    parts = urlsplit(NATS_URL)
    host, port = parts.hostname or "127.0.0.1", parts.port or 4222
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (OSError, TimeoutError) as exc:
        message = f"NATS with JetStream at {NATS_URL} is unreachable: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (required when CI=true)")
        pytest.skip(message)
    writer.close()
    await writer.wait_closed()


async def jetstream_url(storage: str = "memory", **options: object) -> str:
    """The URL of a fresh, empty JetStream log on the local server."""
    await require_nats()
    query = {"prefix": f"gt{uuid.uuid4().hex[:12]}", "storage": storage, **options}
    return f"{NATS_URL}?" + "&".join(f"{k}={v}" for k, v in query.items())


async def drop_jetstream(url: str) -> None:
    """Delete every stream and bucket of the log at ``url``."""
    log = open_log(url)
    await log.open()
    try:
        await log.destroy()  # type: ignore[attr-defined]
    finally:
        await log.close()
