"""``@svc.processor`` in a service: the lifespan runs it; ``[streams]`` configures it; bad config
names its key."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from garrison import Service
from garrison.core import ConfigError, UsageError, parse_config
from garrison.streams import ProcessorContext, StoredRecord, StreamsSettings
from tests._asgi import lifespan


def _config(root: Path, streams: dict[str, Any]) -> Any:
    return parse_config({"streams": streams}, root=str(root))


async def test_service_runs_its_processor(tmp_path: Path) -> None:
    svc = Service("sites")

    @svc.processor("telemetry", stores={"n": int}, outputs=["counts"])
    def count(ctx: ProcessorContext, rec: StoredRecord) -> None:
        n = ctx.state("n").get(rec.key, 0) + 1
        ctx.state("n").set(rec.key, n)
        ctx.emit("counts", str(n).encode())

    svc.configure(
        _config(
            tmp_path,
            {
                "url": "sqlite:///data/streams.db",
                "lease_seconds": 5,
                "topics": {"telemetry": {"partitions": 2}, "counts": {}},
            },
        )
    )
    with pytest.raises(UsageError, match="runs no streams"):
        _ = svc.streams
    async with lifespan(svc.asgi()):
        assert svc.ready
        app = svc.streams
        for _ in range(3):
            await app.producer.send("telemetry", b"r", key=b"battery-7")
        await app.producer.flush()
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        got: list[StoredRecord] = []
        while len(got) < 3 and loop.time() < end:
            got = await app.log.read("counts", 0, 0)
            await asyncio.sleep(0.02)
        assert [r.value for r in got] == [b"1", b"2", b"3"]
        (info,) = list(app.processors)
        assert info.group == "sites-count"
        assert info.consumer.member.startswith("sites-0-count.")
    assert (tmp_path / "data" / "streams.db").exists()  # relative to the app root
    with pytest.raises(UsageError):
        _ = svc.streams


async def test_service_without_processors_or_config_opens_nothing(tmp_path: Path) -> None:
    svc = Service("plain")
    svc.configure(_config(tmp_path, {}))
    async with lifespan(svc.asgi()):
        with pytest.raises(UsageError):
            _ = svc.streams


def test_processor_decorator_bad_input() -> None:
    svc = Service("x")
    with pytest.raises(UsageError, match="topic name"):
        svc.processor("")
    with pytest.raises(UsageError, match="expects a function"):
        svc.processor("t")(42)  # type: ignore[type-var]

    @svc.processor("t", group="g")
    def a(ctx: ProcessorContext, rec: StoredRecord) -> None: ...

    def b(ctx: ProcessorContext, rec: StoredRecord) -> None: ...

    with pytest.raises(UsageError, match="already has a processor in group 'g'"):
        svc.processor("t", group="g")(b)


@pytest.mark.parametrize(
    ("streams", "key", "match"),
    [
        ({"url": "kafka://x"}, "streams.url", "expected a log URL"),
        ({"url": "sqlite:///{service}.db"}, "streams.url", "unknown placeholder"),
        ({"lease_seconds": 0}, "streams.lease_seconds", "seconds"),
        ({"max_records": 0}, "streams.max_records", ">= 1"),
        ({"topics": {"bad name": {}}}, "streams.topics.bad name", "invalid topic name"),
        ({"topics": {"t": {"partitions": 0}}}, "streams.topics.t.partitions", ">= 1"),
        ({"topics": {"t": {"shards": 2}}}, "streams.topics.t", "unknown"),
        ({"nope": 1}, "streams", "unknown key"),
    ],
)
def test_bad_streams_config(streams: dict[str, Any], key: str, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        StreamsSettings.from_config(_config(tmp_path, streams))
    assert info.value.key.startswith(key)


async def test_bad_streams_config_fails_the_service_start(tmp_path: Path) -> None:
    svc = Service("sites")

    @svc.processor("telemetry")
    def h(ctx: ProcessorContext, rec: StoredRecord) -> None: ...

    svc.configure(_config(tmp_path, {"url": "kafka://x"}))
    with pytest.raises(RuntimeError, match="expected a log URL"):
        async with lifespan(svc.asgi()):
            pass


def test_settings_resolve_relative_sqlite_against_root(tmp_path: Path) -> None:
    cfg = _config(tmp_path, {})
    url = StreamsSettings.from_config(cfg).resolved_url(cfg)
    assert url == f"sqlite:///{tmp_path.resolve()}/.garrison/streams.db"
