"""The proxy against real upstreams on 127.0.0.1: methods, status, headers, streaming, failures."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from garrison.gateway import AiohttpUpstream, Gateway

from .conftest import TestUpstream, make_gateway, passport_of, serve, user

TOKEN = {"authorization": "Stub alice"}


@dataclass
class Rig:
    gateway: Gateway
    url: str
    up: TestUpstream
    up2: TestUpstream
    client: httpx.AsyncClient


def routes() -> list[dict[str, Any]]:
    return [
        {"prefix": "/api", "service": "api", "strip_prefix": True, "auth": "user"},
        {"prefix": "/raw", "service": "api", "auth": "user"},
        {"prefix": "/slow", "service": "api", "auth": "user", "timeout": 0.5},
        {"prefix": "/pair", "service": "pair", "auth": "user"},
        {"prefix": "/down", "service": "down", "auth": "user"},
        {"prefix": "/get-only", "service": "api", "auth": "user", "methods": ["GET", "HEAD"]},
    ]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    from .conftest import stub_edge

    up, up2 = TestUpstream(name="one"), TestUpstream(name="two")
    async with serve(up) as u1, serve(up2) as u2:
        gateway = make_gateway(
            routes(),
            edge=stub_edge(alice=user("alice", scopes=["read"])),
            upstream=AiohttpUpstream(),
            urls={"api": [u1], "pair": [u1, u2], "down": [f"http://127.0.0.1:{closed_port()}"]},
            limits={"max_body_bytes": 4 * 1024 * 1024, "max_header_bytes": 8192},
        )
        async with (
            serve(gateway, lifespan="on") as gw,
            httpx.AsyncClient(base_url=gw, headers=TOKEN, timeout=30) as client,
        ):
            yield Rig(gateway, gw, up, up2, client)


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"])
async def test_methods_are_preserved(rig: Rig, method: str) -> None:
    r = await rig.client.request(method, "/api/echo", content=b"x" if method != "GET" else None)
    assert r.status_code == 200, r.text
    assert r.json()["method"] == method


async def test_head(rig: Rig) -> None:
    r = await rig.client.head("/api/echo")
    assert r.status_code == 200
    assert r.content == b""
    assert rig.up.seen[-1].method == "HEAD"


@pytest.mark.parametrize("status", [201, 204, 301, 404, 409, 500, 503])
async def test_status_and_end_to_end_headers_are_relayed(rig: Rig, status: int) -> None:
    r = await rig.client.get(f"/api/status/{status}", follow_redirects=False)
    assert r.status_code == status
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert r.headers["x-custom"] == "kept"
    for hop in ("x-hop", "keep-alive", "garrison-passport"):
        assert hop not in r.headers


async def test_path_query_and_prefix(rig: Rig) -> None:
    r = await rig.client.get("/api/sites/a%2Fb/x%20y?q=1&r=%20s&q=2")
    body = r.json()
    assert body["raw_path"] == "/sites/a%2Fb/x%20y"
    assert body["query"] == "q=1&r=%20s&q=2"
    r = await rig.client.get("/raw/kept")
    assert r.json()["path"] == "/raw/kept"


async def test_what_the_upstream_sees(rig: Rig) -> None:
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = await rig.client.get(
        "/api/echo",
        headers={
            "traceparent": trace,
            "x-forwarded-for": "6.6.6.6",
            "garrison-passport": "forged",
            "x-app": "kept",
            "x-utf8": "café ✓".encode(),
        },
    )
    seen = rig.up.seen[-1]
    h = dict(seen.headers)
    passport = passport_of(seen.headers)
    assert passport.user is not None
    assert passport.user.subject == "alice"
    assert b"authorization" not in h  # the credential stays at the edge
    assert h[b"x-app"] == b"kept"
    assert h[b"x-utf8"] == "café ✓".encode()  # byte for byte
    assert h[b"x-forwarded-for"] == b"127.0.0.1"  # not trusted: replaced
    assert h[b"x-forwarded-proto"] == b"http"
    assert h[b"x-forwarded-prefix"] == b"/api"
    assert h[b"x-forwarded-host"] == rig.url.removeprefix("http://").encode()
    assert h[b"garrison-caller"] == b"gateway"
    assert 0 < int(h[b"garrison-timeout-ms"]) <= 30_000
    parent = h[b"traceparent"].decode().split("-")
    assert parent[1] == "0af7651916cd43dd8448eb211c80319c"  # the trace goes on
    assert parent[2] != "b7ad6b7169203331"  # with a span of the gateway's
    assert r.status_code == 200


async def test_request_bodies_stream_through(rig: Rig) -> None:
    size = 3 * 1024 * 1024 + 17
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]
            await asyncio.sleep(0)

    sha = hashlib.sha256(data).hexdigest()
    r = await rig.client.post("/api/upload", content=chunks())  # chunked
    assert (r.status_code, r.json()["body_len"], r.json()["sha256"]) == (200, size, sha)
    r = await rig.client.put("/api/upload", content=data)  # with a Content-Length
    assert (r.status_code, r.json()["body_len"], r.json()["sha256"]) == (200, size, sha)


async def test_response_bodies_stream_through(rig: Rig) -> None:
    n, size = 200, 65536
    digest = hashlib.sha256()
    got = 0
    async with rig.client.stream("GET", f"/api/stream?n={n}&size={size}") as r:
        assert r.status_code == 200
        async for chunk in r.aiter_raw():
            digest.update(chunk)
            got += len(chunk)
    want = hashlib.sha256(b"".join(bytes([65 + i % 26]) * size for i in range(n)))
    assert (got, digest.hexdigest()) == (n * size, want.hexdigest())


async def test_bodies_over_the_limit(rig: Rig) -> None:
    before = len(rig.up.seen)
    r = await rig.client.post("/api/upload", content=b"x" * (4 * 1024 * 1024 + 1))
    assert r.status_code == 413
    assert r.json()["error"] == "too_large"
    assert len(rig.up.seen) == before  # refused from its Content-Length, before any upstream

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"y" * 65536

    r = await rig.client.post("/api/upload", content=endless())
    assert r.status_code == 413
    assert r.json()["detail"] == [{"reason": "too_large"}]


async def test_upstream_down_is_a_502(rig: Rig) -> None:
    r = await rig.client.get("/down/x")
    assert r.status_code == 502
    assert r.json() == {
        "error": "bad_gateway",
        "message": "service down could not be reached",
        "detail": [{"reason": "bad_gateway"}],
    }


async def test_slow_upstream_is_a_504(rig: Rig) -> None:
    r = await rig.client.get("/slow?delay=1.5")
    assert r.status_code == 504
    assert r.json()["error"] == "deadline_exceeded"
    assert r.headers["garrison-no-retry"] == "1"
    # the client's own, smaller deadline wins, and is passed on
    r = await rig.client.get("/api/slow?delay=1.5", headers={"garrison-timeout-ms": "200"})
    assert r.status_code == 504
    assert int(dict(rig.up.seen[-1].headers)[b"garrison-timeout-ms"]) <= 200


@pytest.mark.parametrize("value", ["soon", "-1", "99999999999", "1.5"])
async def test_bad_client_deadline(rig: Rig, value: str) -> None:
    r = await rig.client.get("/api/echo", headers={"garrison-timeout-ms": value})
    assert r.status_code == 400
    assert r.json()["detail"] == [{"reason": "bad_deadline"}]


async def test_spent_client_deadline(rig: Rig) -> None:
    r = await rig.client.get("/api/echo", headers={"garrison-timeout-ms": "0"})
    assert r.status_code == 504


async def test_load_is_balanced_across_instances(rig: Rig) -> None:
    await asyncio.gather(*(rig.client.get("/pair/echo") for _ in range(40)))
    assert len(rig.up.seen) > 0
    assert len(rig.up2.seen) > 0
    assert len(rig.up.seen) + len(rig.up2.seen) == 40


async def test_header_limits(rig: Rig) -> None:
    r = await rig.client.get("/api/echo", headers={"x-big": "a" * 9000})
    assert r.status_code == 431
    assert r.json()["error"] == "headers_too_large"
    many = {f"x-h{i}": "1" for i in range(120)}
    r = await rig.client.get("/api/echo", headers=many)
    assert r.status_code == 431


@pytest.mark.parametrize(
    ("path", "status", "reason"),
    [
        ("/api/../admin", 400, "bad_path"),
        ("/api/%2e%2e/admin", 400, "bad_path"),
        ("/api//x", 400, "bad_path"),
        ("/nowhere", 404, "not_found"),
    ],
)
async def test_paths_refused(rig: Rig, path: str, status: int, reason: str) -> None:
    # httpx normalises dot segments; a raw request keeps them as sent
    host = rig.url.removeprefix("http://")
    reader, writer = await asyncio.open_connection(*host.split(":"))
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Stub alice\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    raw = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == str(status).encode()
    assert json.loads(body)["detail"] == [{"reason": reason}]


async def test_method_not_allowed(rig: Rig) -> None:
    r = await rig.client.post("/get-only/x")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"


async def test_client_leaving_cancels_the_upstream_request(rig: Rig) -> None:
    async with rig.client.stream("GET", "/api/hang") as r:
        assert r.status_code == 200
        async for chunk in r.aiter_raw():
            assert chunk == b"partial"
            break
    for _ in range(200):
        if rig.up.cancelled:
            break
        await asyncio.sleep(0.01)
    assert rig.up.cancelled == 1


async def test_an_upstream_dying_mid_response_is_not_passed_off_as_complete(rig: Rig) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        await rig.client.get("/api/die")
    r = await rig.client.get("/api/echo")  # and the gateway carries on
    assert r.status_code == 200


async def test_health_and_metrics(rig: Rig) -> None:
    r = await rig.client.get("/_garrison/healthz")
    assert r.json() == {"status": "ok"}
    await rig.client.get("/api/echo")
    metrics = (await rig.client.get("/_garrison/metrics")).text
    assert 'route="/api"' in metrics
    r = await rig.client.get("/_garrison/nothing")
    assert r.status_code == 404
