"""Helpers for the gateway's tests: real servers on loopback, stub resolvers, direct ASGI calls."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import uvicorn

from garrison.core import Unauthenticated
from garrison.gateway import Gateway, GatewayConfig, RecordingUpstream, RouteConfig, Upstream
from garrison.identity import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    DeviceIdentity,
    IdentityAction,
    Passport,
    RequestCredentials,
    Resolution,
    TrustLevel,
    UserIdentity,
)
from garrison.identity._edge import IdentityEdge
from garrison.identity._keys import Keyring
from garrison.identity._passport import PassportCodec
from garrison.service import Balancer

Headers = list[tuple[bytes, bytes]]

KEYRING = Keyring.hmac({"test": b"k" * 32}, active="test")


def codec() -> PassportCodec:
    """The passport codec every gateway test mints and verifies with."""
    return PassportCodec(KEYRING)


def user(
    subject: str = "u1",
    *,
    scopes: Iterable[str] = (),
    roles: Iterable[str] = (),
    assurance: Assurance = Assurance.AAL1,
    degraded: bool = False,
    actions: tuple[IdentityAction, ...] = (),
    device: DeviceIdentity | None = None,
) -> Resolution:
    """A user resolution, valid for an hour."""
    import time

    return Resolution(
        auth=Authentication(credential=CredentialKind.JWT, issuer="stub", assurance=assurance),
        expires_at=time.time() + 3600,
        user=UserIdentity(subject=subject, scopes=tuple(scopes), roles=tuple(roles)),
        device=device,
        degraded=degraded,
        actions=actions,
    )


def device(device_id: str = "d1", trust: TrustLevel = TrustLevel.REGISTERED) -> Resolution:
    """A device resolution, valid for an hour."""
    import time

    return Resolution(
        auth=Authentication(
            credential=CredentialKind.DEVICE_TOKEN, issuer="stub", assurance=Assurance.AAL1
        ),
        expires_at=time.time() + 3600,
        device=DeviceIdentity(id=device_id, type="battery", trust=trust),
    )


class StubResolver:
    """Finds ``<header>: <prefix><token>``; resolves ``token`` from a table (or rejects it)."""

    def __init__(
        self,
        name: str,
        table: Mapping[str, Resolution | Exception],
        *,
        header: str = "authorization",
        prefix: str = "Stub ",
        kind: CredentialKind = CredentialKind.JWT,
    ) -> None:
        self.name = name
        self.table = dict(table)
        self.header = header
        self.prefix = prefix
        self.kind = kind
        self.calls = 0

    def find(self, request: RequestCredentials) -> Credential | None:
        value = request.headers.get(self.header)
        if value is None or not value.startswith(self.prefix):
            return None
        return Credential(kind=self.kind, value=value[len(self.prefix) :], resolver=self.name)

    async def resolve(self, credential: Credential) -> Resolution:
        self.calls += 1
        got = self.table.get(credential.value)
        if got is None:
            raise Unauthenticated("unknown stub token", reason="stub_unknown")
        if isinstance(got, Exception):
            raise got
        return got


def stub_edge(**tokens: Resolution | Exception) -> IdentityEdge:
    """An edge with a user resolver (``Authorization: Stub <t>``) and a device resolver
    (``x-device: <t>``) over the same table."""
    table = dict(tokens)
    return IdentityEdge(
        [
            StubResolver(
                "devices", table, header="x-device", prefix="", kind=CredentialKind.DEVICE_TOKEN
            ),
            StubResolver("stub", table),
        ],
        codec(),
    )


def make_gateway(
    routes: list[dict[str, Any]],
    *,
    edge: IdentityEdge | None = None,
    upstream: Upstream | None = None,
    urls: Mapping[str, list[str]] | None = None,
    **gw: Any,
) -> Gateway:
    """A gateway over ``routes`` (dicts of RouteConfig fields)."""
    configs = [RouteConfig(**r) for r in routes]
    services = {r.service for r in configs if r.service is not None}
    urls = urls or {s: [f"http://{s}.invalid:80"] for s in services}
    balancers = {s: Balancer(s, urls[s]) for s in services}
    return Gateway(
        msgspec.convert(gw, GatewayConfig),
        configs,
        edge or stub_edge(),
        balancers,
        upstream=upstream or RecordingUpstream(),
    )


@dataclass
class Answer:
    """A response as the ASGI app sent it."""

    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        n = name.encode()
        return next((v.decode("latin-1") for k, v in self.headers if k == n), None)

    def headers_named(self, name: str) -> list[str]:
        n = name.encode()
        return [v.decode("latin-1") for k, v in self.headers if k == n]

    def json(self) -> Any:
        return json.loads(self.body)


async def call(
    app: Any,
    method: str = "GET",
    path: str = "/",
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes = b"",
    *,
    query: bytes = b"",
    client: tuple[str, int] | None = ("127.0.0.1", 50000),
) -> Answer:
    """Call an ASGI app directly, with any header names at all."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": query,
        "headers": list(headers),
        "client": client,
        "server": ("127.0.0.1", 8080),
    }
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await never.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    assert start["type"] == "http.response.start"
    return Answer(
        start["status"], list(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])
    )


def passport_of(headers: Iterable[tuple[bytes, bytes]]) -> Passport:
    """The one passport among ``headers``, verified."""
    tokens = [
        v for k, v in headers if k.strip().lower().replace(b"_", b"-") == b"garrison-passport"
    ]
    assert len(tokens) == 1, tokens
    return codec().verify(tokens[0].decode())


# -- real servers ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(app: Any, *, lifespan: str = "off") -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="error",
        lifespan=lifespan,
        ws="none",
        access_log=False,
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Seen:
    """One request as the test upstream saw it."""

    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: Headers
    body_len: int = 0
    sha256: str = ""


@dataclass
class TestUpstream:
    """An ASGI upstream that records what reaches it and answers by path.

    ``/echo`` the request as JSON; ``/stream?n=&size=`` n chunks; ``/slow?delay=`` sleeps
    first; ``/status/NNN`` that status with duplicate Set-Cookie and hop-by-hop headers;
    ``/action/NAME`` asks the edge for identity action NAME; ``/hang`` sends part of a body
    and then waits for the gateway to hang up (counted in ``cancelled``); anything else is
    ``/echo``.
    """

    __test__ = False
    seen: list[Seen] = field(default_factory=list)
    cancelled: int = 0
    name: str = "up"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body"):
                break
        seen = Seen(
            scope["method"],
            scope["path"],
            scope["raw_path"],
            scope["query_string"],
            list(scope["headers"]),
            size,
            digest.hexdigest(),
        )
        self.seen.append(seen)
        path: str = scope["path"]
        query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
        if path.startswith("/stream"):
            n, chunk_size = int(query.get("n", "10")), int(query.get("size", "1000"))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(n):
                await send(
                    {
                        "type": "http.response.body",
                        "body": bytes([65 + i % 26]) * chunk_size,
                        "more_body": True,
                    }
                )
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b""})
            return
        if path.startswith("/slow"):
            await asyncio.sleep(float(query.get("delay", "1")))
        if path.startswith("/die"):  # promises 1000 bytes, sends 10, and drops the connection
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"1000")],
                }
            )
            await send({"type": "http.response.body", "body": b"x" * 10, "more_body": True})
            raise RuntimeError("the upstream died mid-response")
        if path.startswith("/hang"):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"partial", "more_body": True})
            # uvicorn does not cancel an app whose client left; it says so through receive()
            try:
                async with asyncio.timeout(20):
                    while (await receive())["type"] != "http.disconnect":
                        pass
                self.cancelled += 1
            except TimeoutError:
                pass
            return
        status = 200
        headers: Headers = [(b"content-type", b"application/json")]
        if path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            headers += [
                (b"set-cookie", b"a=1; Path=/"),
                (b"set-cookie", b"b=2; Path=/"),
                (b"x-custom", b"kept"),
                (b"connection", b"x-hop"),
                (b"x-hop", b"dropped"),
                (b"keep-alive", b"timeout=5"),
                (b"garrison-passport", b"leaked"),
            ]
        if path.startswith("/action/"):
            headers += [(b"garrison-identity-action", path.rsplit("/", 1)[1].encode())]
        body = json.dumps(
            {
                "upstream": self.name,
                "method": seen.method,
                "path": seen.path,
                "raw_path": seen.raw_path.decode("latin-1"),
                "query": seen.query.decode("latin-1"),
                "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in seen.headers],
                "body_len": size,
                "sha256": seen.sha256,
            }
        ).encode()
        if status in (204, 304) or scope["method"] == "HEAD":
            body = b""
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
