"""``garrison streams topics|tail|lag|reset-offsets`` on both backends, and its bad input."""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from garrison.cli import main
from garrison.streams._backends import open_log
from garrison.streams._backends.base import Record, TopicPartition, TopicSpec

runner = CliRunner()
TOPIC, GROUP = "orders", "billing"


def _seed(url: str) -> None:
    """orders: 2 partitions, 5 records each; group billing committed 2 and 4; a live member."""

    async def go() -> None:
        log = open_log(url)
        await log.open()
        try:
            await log.create_topic(TopicSpec(name=TOPIC, partitions=2, retention_ms=86_400_000))
            for p in range(2):
                recs = [
                    Record(value=f"order {p}-{i}".encode(), key=b"k%d" % p, headers={"n": str(i)})
                    for i in range(5)
                ]
                await log.append(TOPIC, p, recs)
            a = await log.join(GROUP, "worker-1", [TOPIC], lease=3600)
            await log.commit(
                GROUP,
                "worker-1",
                a.generation,
                {TopicPartition(TOPIC, 0): 2, TopicPartition(TOPIC, 1): 4},
            )
        finally:
            await log.close()

    asyncio.run(go())


def _drop(url: str) -> None:
    if url.startswith("nats"):

        async def go() -> None:
            log = open_log(url)
            await log.open()
            await log.destroy()  # type: ignore[attr-defined]
            await log.close()

        asyncio.run(go())


def _nats_url() -> str:
    from tests.streams.test_jetstream_support import NATS_URL, require_nats

    asyncio.run(require_nats())
    return f"{NATS_URL}?prefix=gc{uuid.uuid4().hex[:10]}&storage=memory"


def url_is_reachable() -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", 4222)) == 0


@pytest.fixture(params=["sqlite", "jetstream"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A seeded log on each backend."""
    u = f"sqlite:///{tmp_path}/log.db" if request.param == "sqlite" else _nats_url()
    _seed(u)
    yield u
    _drop(u)


def run(*args: str) -> Result:
    return runner.invoke(main, ["streams", *args])


def one_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("garrison streams: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert "Traceback" not in result.output


# -- topics ---------------------------------------------------------------------------------------


def test_topics_lists_and_describes(url: str) -> None:
    result = run("topics", "--url", url, "--json")
    assert result.exit_code == 0, result.output
    (t,) = json.loads(result.stdout)
    assert (t["name"], t["partitions"], t["records"], t["retention_ms"]) == (
        TOPIC,
        2,
        10,
        86_400_000,
    )
    one = run("topics", TOPIC, "--url", url, "--json")
    assert json.loads(one.stdout)["offsets"] == [
        {"partition": 0, "begin": 0, "end": 5},
        {"partition": 1, "begin": 0, "end": 5},
    ]
    table = run("topics", "--url", url)
    assert table.exit_code == 0
    assert TOPIC in table.stdout


# -- tail -----------------------------------------------------------------------------------------


def test_tail_prints_the_last_records(url: str) -> None:
    result = run("tail", TOPIC, "--url", url, "-n", "2", "-p", "1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{TOPIC}[1]@3 ")
    assert "key=k1 n=3 order 1-3" in lines[0]
    everything = run("tail", TOPIC, "--url", url, "--from-beginning", "--json")
    recs = [json.loads(line) for line in everything.stdout.splitlines()]
    assert sorted((r["partition"], r["offset"]) for r in recs) == [
        (p, o) for p in range(2) for o in range(5)
    ]
    counted = run("tail", TOPIC, "--url", url, "--offset", "1", "--count", "3", "-p", "0", "--json")
    assert [json.loads(x)["offset"] for x in counted.stdout.splitlines()] == [1, 2, 3]


def test_tail_follow_prints_records_as_they_come(url: str) -> None:
    got: dict[str, Result] = {}
    follow = threading.Thread(
        target=lambda: got.update(
            r=run("tail", TOPIC, "--url", url, "-p", "0", "--offset", "4", "-f", "--count", "3")
        )
    )
    follow.start()
    time.sleep(0.3)  # usually lets it reach the wait for new records (either way is correct)

    async def append() -> None:
        log = open_log(url)
        await log.open()
        await log.append(TOPIC, 0, [Record(value=b"new 1"), Record(value=b"new 2")])
        await log.close()

    asyncio.run(append())
    follow.join(60)
    assert not follow.is_alive()
    lines = got["r"].stdout.splitlines()
    assert [line.split(" ")[0] for line in lines] == [f"{TOPIC}[0]@{o}" for o in (4, 5, 6)]
    assert lines[-1].endswith("new 2")


# -- lag ------------------------------------------------------------------------------------------


def test_lag_per_partition_and_total(url: str) -> None:
    result = run("lag", GROUP, "--url", url, "--json")
    assert result.exit_code == 0, result.output
    (rep,) = json.loads(result.stdout)
    assert rep["lag"] == 3 + 1
    assert [
        (r["partition"], r["committed"], r["end"], r["lag"], r["member"]) for r in rep["partitions"]
    ] == [
        (0, 2, 5, 3, "worker-1"),
        (1, 4, 5, 1, "worker-1"),
    ]
    every = run("lag", "--url", url)
    assert every.exit_code == 0
    assert f"group {GROUP}" in every.stdout
    assert "lag 4" in every.stdout


# -- reset-offsets --------------------------------------------------------------------------------


def test_reset_offsets_dry_run_then_execute(url: str) -> None:
    dry = run("reset-offsets", GROUP, "--topic", TOPIC, "--to-earliest", "--url", url, "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["executed"] is False
    assert [(r["current"], r["new"]) for r in plan["partitions"]] == [(2, 0), (4, 0)]
    lag = json.loads(run("lag", GROUP, "--url", url, "--json").stdout)[0]
    assert lag["lag"] == 4  # nothing changed

    done = run(
        "reset-offsets", GROUP, "--topic", TOPIC, "--shift-by", "-1", "-p", "1", "--url", url,
        "--execute",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "fenced" in done.stdout
    lag = json.loads(run("lag", GROUP, "--url", url, "--json").stdout)[0]
    assert [r["committed"] for r in lag["partitions"]] == [2, 3]
    assert lag["generation"] == 2  # the live member is fenced: it must learn the new generation

    run("reset-offsets", GROUP, "--topic", TOPIC, "--to-latest", "--url", url, "--execute")
    assert json.loads(run("lag", GROUP, "--url", url, "--json").stdout)[0]["lag"] == 0


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_one_line_and_exit_2(url: str) -> None:
    one_error(run("topics", "nope", "--url", url), 2, "no topic named 'nope'")
    one_error(run("topics", "bad name!", "--url", url), 2, "invalid topic name")
    one_error(run("tail", "nope", "--url", url), 2, "no topic named 'nope'")
    one_error(run("tail", TOPIC, "-p", "7", "--url", url), 2, "--partition 7", "0..1")
    one_error(run("tail", TOPIC, "--offset", "1", "--from-beginning", "--url", url), 2, "exclude")
    one_error(run("lag", "nobody", "--url", url), 2, "no consumer group named 'nobody'")
    one_error(run("lag", "bad group!", "--url", url), 2, "invalid group name")
    one_error(run("lag", GROUP, "--topic", "nope", "--url", url), 2, "no topic named 'nope'")
    one_error(run("reset-offsets", GROUP, "--topic", TOPIC, "--url", url), 2, "exactly one of")
    one_error(
        run("reset-offsets", GROUP, "--topic", TOPIC, "--to-earliest", "--to-latest", "--url", url),
        2,
        "exactly one of",
    )
    one_error(
        run("reset-offsets", GROUP, "--topic", TOPIC, "--to-offset", "9", "--url", url),
        2,
        "--to-offset 9",
        "0..5",
    )
    one_error(
        run("reset-offsets", GROUP, "--topic", "nope", "--to-latest", "--url", url),
        2,
        "no topic named 'nope'",
    )
    one_error(
        run("reset-offsets", "bad group!", "--topic", TOPIC, "--to-latest", "--url", url),
        2,
        "invalid group name",
    )


def test_bad_urls_and_missing_logs(tmp_path: Path) -> None:
    one_error(run("topics", "--url", "kafka://x"), 2, "unknown log URL scheme 'kafka'")
    one_error(run("topics", "--url", "nats://h:4222?colour=red"), 2, "unknown option 'colour'")
    one_error(run("topics", "--url", f"sqlite:///{tmp_path}/none.db"), 2, "no SQLite log at")
    one_error(run("topics", "--app-dir", str(tmp_path)), 2, "no --url and no garrison.toml")
    (tmp_path / "garrison.toml").write_text(
        textwrap.dedent(
            """
            [app]
            name = "shop"
            [streams]
            url = "redis://x"
            """
        )
    )
    one_error(run("topics", "--app-dir", str(tmp_path)), 2, "[streams.url]")
    if url_is_reachable():
        absent = run("topics", "--url", "nats://127.0.0.1:4222?prefix=never-created")
        one_error(absent, 2, "no JetStream log with prefix 'never-created'")
    unreachable = run("topics", "--url", "nats://127.0.0.1:1?connect_timeout=0.5&max_reconnect=0")
    one_error(unreachable, 1, "cannot connect to NATS")


def test_the_app_log_is_found_through_garrison_toml(tmp_path: Path) -> None:
    (tmp_path / "garrison.toml").write_text('[app]\nname = "shop"\n')
    url = f"sqlite:///{tmp_path}/.garrison/streams.db"
    (tmp_path / ".garrison").mkdir()
    _seed(url)
    result = run("topics", "--app-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    assert [t["name"] for t in json.loads(result.stdout)] == [TOPIC]


# -- the HTTP twin: /_garrison/streams/lag and /throughput on a service --------------------------


async def test_http_lag_and_throughput_of_a_service(url: str, tmp_path: Path) -> None:
    import httpx

    from garrison import Service
    from garrison.core import parse_config
    from garrison.streams import ProcessorContext, StoredRecord
    from tests.streams.test_service_processor import lifespan

    svc = Service("shop")

    @svc.processor(TOPIC, group="shipping", outputs=[])
    def ship(ctx: ProcessorContext, rec: StoredRecord) -> None:
        pass

    svc.configure(parse_config({"streams": {"url": url, "lease_seconds": 30}}, root=str(tmp_path)))
    async with lifespan(svc.asgi()):
        transport = httpx.ASGITransport(app=svc.asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
            first = await http.get("/_garrison/streams/throughput")
            assert first.status_code == 200
            assert first.json()["processors"][0]["processed_per_s"] is None  # no interval yet
            loop = asyncio.get_running_loop()
            end = loop.time() + 60
            while loop.time() < end:
                body = (await http.get("/_garrison/streams/lag")).json()
                (rep,) = body["groups"]
                if rep["lag"] == 0 and len(rep["partitions"]) == 2:
                    break
                await asyncio.sleep(0.05)
            assert rep["group"] == "shipping"
            assert [(r["committed"], r["end"]) for r in rep["partitions"]] == [(5, 5), (5, 5)]
            other = await http.get("/_garrison/streams/lag", params={"group": GROUP})
            assert other.json()["groups"][0]["lag"] == 4
            tp = (await http.get("/_garrison/streams/throughput")).json()
            (proc,) = tp["processors"]
            assert (proc["group"], proc["processed"], proc["topics"]) == ("shipping", 10, [TOPIC])
            assert proc["processed_per_s"] is not None
            assert tp["topics"] == [{"topic": TOPIC, "end": 10, "appended_per_s": 0.0}]

            missing = await http.get("/_garrison/streams/lag", params={"group": "nobody"})
            assert missing.status_code == 404
            assert "no consumer group named 'nobody'" in missing.json()["message"]
            bad = await http.get("/_garrison/streams/lag", params={"group": "bad group!"})
            assert bad.status_code == 422
            assert "invalid group name" in bad.json()["message"]
            unknown = await http.get("/_garrison/streams/lag", params={"colour": "red"})
            assert unknown.status_code == 422
            assert "colour" in unknown.json()["message"]
            no_topic = await http.get(
                "/_garrison/streams/lag", params={"group": GROUP, "topic": "nope"}
            )
            assert no_topic.status_code == 404


async def test_http_streams_api_of_a_service_without_streams() -> None:
    import httpx

    from garrison import Service
    from garrison.core import parse_config
    from tests.streams.test_service_processor import lifespan

    svc = Service("plain")
    svc.configure(parse_config({}, root="."))
    async with lifespan(svc.asgi()):
        transport = httpx.ASGITransport(app=svc.asgi())
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
            for path in ("lag", "throughput"):
                r = await http.get(f"/_garrison/streams/{path}")
                assert r.status_code == 404
                assert "runs no streams" in r.json()["message"]
